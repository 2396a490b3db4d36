"""The daemon's HTTP front door: a gunicorn worker that no slow client, idle connection or long
stream can freeze (issue 12). See :mod:`orchestrator.httpserver.worker` for the design."""
