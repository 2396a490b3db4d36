"""``python -m orchestrator.modelcli``: the ``docker-model`` command."""

from orchestrator.modelcli.main import main

raise SystemExit(main())
