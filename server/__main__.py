"""``python -m server``: the same as the ``emotion-monitor`` command."""

from server.cli import main

raise SystemExit(main())
