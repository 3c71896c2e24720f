"""What the engine reports as it works, as hooks: the loop, the fleet and the webhook deliverer call an
`Observer` unconditionally and never ask whether metrics are on.

`collector.metrics.Metrics` is the observer that feeds Prometheus; `NoMetrics` is the one of a process
without metrics, whose every hook does nothing. Figures that cost work to gather only for an observer (the
fleet-wide backlog: a database aggregation) are gathered only when its `enabled` is true.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

__all__ = ["NoMetrics", "Observer"]


class Observer(Protocol):
    """The hooks; each is cheap and never raises. `enabled` False: nobody reads the figures."""

    enabled: bool

    def run_finished(self, service: str, outcome: str, new_items: int, duration: float,
                     saved: bool = True) -> None:
        """One run ended: `outcome` is a Kind value, `saved` False if the state save lost its lease."""

    def rate_limit_pause(self, service: str, scope: str) -> None:
        """A run was rate limited (scope "network") or paused the whole service (scope "service")."""

    def auth_incident(self, service: str) -> None:
        """A run declared a 401 storm on its service (collector/incidents.py)."""

    def webhook_delivery(self, result: str) -> None:
        """One webhook delivery attempt ended (collector/webhooks.py): ok, failed or dead."""

    def database_up(self, ok: bool) -> None:
        """Whether the last database call of the loop succeeded."""

    def set_in_flight(self, counts: Mapping[str, int]) -> None:
        """Runs in flight in this process, by service."""

    def set_backlog(self, rows: Iterable[tuple[str, str, int, float]]) -> None:
        """Rows of (mode, service, due_count, oldest_lag_seconds), fleet-wide."""

    def set_uncovered(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Rows of (mode, service, due networks no live process covers), fleet-wide."""

    def set_paused(self, paused: Mapping[str, datetime]) -> None:
        """Services paused by an app-wide rate limit, with when the pause ends."""


class NoMetrics(Observer):
    """The observer of a process without metrics: every hook does nothing."""

    enabled = False

    def run_finished(self, service: str, outcome: str, new_items: int, duration: float,
                     saved: bool = True) -> None:
        pass

    def rate_limit_pause(self, service: str, scope: str) -> None:
        pass

    def auth_incident(self, service: str) -> None:
        pass

    def webhook_delivery(self, result: str) -> None:
        pass

    def database_up(self, ok: bool) -> None:
        pass

    def set_in_flight(self, counts: Mapping[str, int]) -> None:
        pass

    def set_backlog(self, rows: Iterable[tuple[str, str, int, float]]) -> None:
        pass

    def set_uncovered(self, rows: Iterable[tuple[str, str, int]]) -> None:
        pass

    def set_paused(self, paused: Mapping[str, datetime]) -> None:
        pass
