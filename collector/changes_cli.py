"""`collector changes`: a user's change feed, one JSON object per line (collector/changes.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click


def _line(event: dict[str, Any]) -> str:
    def plain(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else str(value)

    return json.dumps(event, default=plain, sort_keys=True)


def command(load_settings: Callable[[click.Context], Any], run: Callable[..., Any]) -> click.Command:
    """The `changes` command, given the CLI's settings loader and database runner (collector/cli.py)."""

    @click.command("changes")
    @click.option("--user", required=True, help="Whose feed.")
    @click.option("--since", type=click.IntRange(0), default=0, show_default=True,
                  help="Print the events after this sequence number (the last one your application handled).")
    @click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True,
                  help="At most this many events (without --follow).")
    @click.option("--follow", is_flag=True, help="Keep printing new events as they are published (Ctrl-C stops).")
    @click.pass_context
    def changes_command(ctx: click.Context, user: str, since: int, limit: int, follow: bool) -> None:
        """A user's events in sequence: items added, removed or restored; the user's networks becoming
        unauthorized (the user must reconnect), parked, disabled, enabled or normal again."""
        from collector import changes

        async def show(store: Any) -> None:
            if follow:
                async for event in changes.follow(store.db, user, since):
                    click.echo(_line(event))
            for event in await changes.read(store.db, user, since, limit):
                click.echo(_line(event))

        try:
            run(ctx, show, load_settings(ctx))
        except KeyboardInterrupt:
            pass

    return changes_command
