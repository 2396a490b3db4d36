"""One module per command group; each has ``register(subparsers)`` and ``cmd_*(args, ctx)``."""
