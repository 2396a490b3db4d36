"""Fixtures that start a real OCI registry (Debian's docker-registry) on 127.0.0.1."""
