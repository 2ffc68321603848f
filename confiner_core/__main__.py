import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch and the experts' libraries import: nothing has started yet
    sys.stderr.write("interrupted; nothing written\n")
    raise SystemExit(130) from None

raise SystemExit(main())
