"""``docker model``: the command-line client of the daemon (standalone and as a Docker CLI plugin).

Entry point: :func:`orchestrator.modelcli.main.main` (console script ``docker-model``).
"""
