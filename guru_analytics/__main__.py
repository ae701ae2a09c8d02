"""``python -m guru_analytics`` runs the same CLI as ``guru-analytics``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
