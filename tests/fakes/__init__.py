"""Stand-ins for failure paths real things won't produce on demand (fake engine, store stub)."""
