"""`python -m collector` is the `collector` command."""

from collector.cli import main

main(prog_name="collector")
