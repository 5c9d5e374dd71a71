"""``python -m exdb``: the same as the ``exdb`` command."""

from exdb.cli import main

main()
