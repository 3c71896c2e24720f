"""`python -m collector` is the `collector` command."""

from collector.entry import main

main()
