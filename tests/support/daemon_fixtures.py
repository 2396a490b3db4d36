"""Fixtures that start the real daemon under gunicorn on loopback."""
