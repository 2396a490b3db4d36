"""``python -m orchestrator``: the daemon command (``model-runner``)."""

from orchestrator.cli import main

raise SystemExit(main())
