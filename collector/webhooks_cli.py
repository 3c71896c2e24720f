"""`collector webhooks retry [--user U]`: dead-lettered webhook deliveries (collector/webhooks.py) due again now."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collector.store import Store


def command(load_settings: Callable[[click.Context], Any], run: Callable[..., Any]) -> click.Group:
    """The `webhooks` group, given the CLI's settings loader and database runner (collector/cli.py)."""

    @click.group()
    def webhooks() -> None:
        """Webhook deliveries of the change feed (docs/webhooks.md); `collector status` shows their state."""

    @webhooks.command("retry")
    @click.option("--user", help="Only this user's feed (dead-lettered or failing): its next attempt now.")
    @click.pass_context
    def retry_command(ctx: click.Context, user: str | None) -> None:
        """Clear the dead letter (and the failure streak) of every dead-lettered user, or of --user: deliveries
        start again now, from the first event not yet delivered."""
        from collector.clock import ServerClock
        from collector.webhooks import retry

        settings = load_settings(ctx)

        async def go(store: Store) -> int:
            clock = ServerClock()  # due times are compared on the database server's clock (collector/clock.py)
            await clock.sync(store.db)
            return await retry(store.db, clock(), user)

        count = run(ctx, go, settings)
        if user is not None and not count:
            raise click.ClickException(f"no change feed for user {user!r}")
        click.echo(f"{count} feed(s) due for delivery again now" + ("" if settings.webhooks.url else
                   " (webhooks are off here: [webhooks] url is empty; the daemons deliver when theirs is set)"))

    return webhooks
