import sys

from .errors import interrupts_held

try:
    with interrupts_held():   # Ctrl-C while torch and the experts' libraries import arrives once they are in
        from .cli import main
        from . import generate  # noqa: F401  (the parser's choices come from it)
except KeyboardInterrupt:  # nothing has started yet
    sys.stderr.write("interrupted; nothing written\n")
    raise SystemExit(130) from None

raise SystemExit(main())
