"""``python -m copbridge``: the same command as ``copbridge``."""

from copbridge.cli import main

main()
