"""``python -m connector`` is the same as the ``storeloop`` command."""

from connector.cli import main

main()
