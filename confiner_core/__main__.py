import signal
import sys

from .errors import interrupts_held

try:
    with interrupts_held():   # Ctrl-C while torch and the experts' libraries import arrives once they are in
        from .cli import main
        from . import generate  # noqa: F401  (the parser's choices come from it)
except KeyboardInterrupt:  # nothing has started yet
    sys.stderr.write("interrupted; nothing written\n")
    raise SystemExit(130) from None

try:
    code = main()
finally:   # the run is over (its files written or left as they were): a Ctrl-C now could only break Python's exit,
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # as a traceback from an atexit callback or a silent kill,
    # and a SIGTERM, default-handled, made it 143 ("no output replaced") after the outputs were written (a trial's
    # `timeout` after "wrote ...", 3 times of 3: the interpreter's shutdown takes a while after torch). Ignored, not
    # handled: Python puts a handler of its own back to the default as it shuts down (measured: 143 again)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
raise SystemExit(code)
