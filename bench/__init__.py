"""Side-by-side benchmark: llama-server direct (A), the daemon (B), llama-server's router (C).

Run it with ``make bench`` (or ``make bench-quick``); see ``bench/README.md``.
"""
