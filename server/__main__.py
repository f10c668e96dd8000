"""``python -m server``: the same as the ``emotion-monitor`` command."""

from .cli import main

raise SystemExit(main())
