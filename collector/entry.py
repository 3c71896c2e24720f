"""The `collector` command's entry point (`python -m collector` too): stop signals held (collector/early_stop.py),
then the command line (collector/cli.py) imported and run."""

from __future__ import annotations

from collector import early_stop


def main() -> None:
    early_stop.hold()
    from collector.cli import main as command  # the imports that take a while

    command(prog_name="collector")
