"""``python -m soundwatch`` runs the command line."""

from soundwatch.cli import main

main()
