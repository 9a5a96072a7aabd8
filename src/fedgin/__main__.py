"""Allow `python -m fedgin`."""

from fedgin.cli import main

main()
