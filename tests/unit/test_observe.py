"""Observation as hooks (collector/observe.py): the loop, the fleet and the webhook deliverer report to an
observer they never test for; without metrics it is `NoMetrics`, and nothing is gathered for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import httpx
import pytest
import respx

from collector.executor import Executor
from collector.fleet import Fleet
from collector.metrics import Metrics
from collector.observe import NoMetrics, Observer
from collector.scheduler import Scheduler
from collector.store import Store
from tests.conftest import make_settings
from tests.unit.test_executor import BASE
from tests.unit.test_scheduler import REGISTRY, seed


class Recorder(Observer):
    """Every hook call, in order: (hook, arguments)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def run_finished(self, service: str, outcome: str, new_items: int, duration: float, saved: bool = True) -> None:
        self.calls.append(("run_finished", (service, outcome, new_items, saved)))

    def rate_limit_pause(self, service: str, scope: str) -> None:
        self.calls.append(("rate_limit_pause", (service, scope)))

    def auth_incident(self, service: str) -> None:
        self.calls.append(("auth_incident", (service,)))

    def webhook_delivery(self, result: str) -> None:
        self.calls.append(("webhook_delivery", (result,)))

    def database_up(self, ok: bool) -> None:
        self.calls.append(("database_up", (ok,)))

    def set_in_flight(self, counts: Mapping[str, int]) -> None:
        self.calls.append(("set_in_flight", (dict(counts),)))

    def set_backlog(self, rows: Iterable[tuple[str, str, int, float]]) -> None:
        self.calls.append(("set_backlog", (list(rows),)))

    def set_uncovered(self, rows: Iterable[tuple[str, str, int]]) -> None:
        self.calls.append(("set_uncovered", (list(rows),)))

    def set_paused(self, paused: Mapping[str, datetime]) -> None:
        self.calls.append(("set_paused", (dict(paused),)))

    def hooks(self) -> list[str]:
        return [name for name, _ in self.calls]


def test_no_metrics_has_every_hook_of_the_protocol_and_does_nothing():
    hooks = [name for name in vars(Observer) if not name.startswith("_") and callable(getattr(Observer, name))]
    assert len(hooks) == 9 and NoMetrics.enabled is False and Metrics.enabled is True
    quiet = NoMetrics()
    for name in hooks:
        assert getattr(NoMetrics, name) is not getattr(Observer, name), f"NoMetrics does not define {name}"
        assert callable(getattr(Metrics, name))
    quiet.run_finished("github", "page", 3, 0.5)
    quiet.set_backlog([("initial", "github", 1, 2.0)])


async def test_a_scheduler_without_metrics_runs_with_the_null_observer(mock_db, clock):
    settings = make_settings()
    store = Store(mock_db)
    async with httpx.AsyncClient() as client:
        sched = Scheduler(store, Executor(store, client, settings, REGISTRY, clock=clock), settings, "initial",
                          clock=clock)
        fleet = Fleet(store, sched, settings, clock=clock)
    assert isinstance(sched.metrics, NoMetrics) and isinstance(fleet.metrics, NoMetrics)


@respx.mock
async def test_the_loop_reports_each_run_and_what_is_in_flight(mock_db, clock):
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [{"id": 1}], "next": None}))
    settings = make_settings(daemon={"concurrency": 4})
    store = Store(mock_db)
    observer = Recorder()
    await seed(store, clock, 2)
    async with httpx.AsyncClient() as client:
        sched = Scheduler(store, Executor(store, client, settings, REGISTRY, clock=clock), settings, "initial",
                          owner="test", clock=clock, metrics=observer)
        assert await sched.fill(clock.now) == 2
        await asyncio.gather(*list(sched.inflight))
    finished = [args for name, args in observer.calls if name == "run_finished"]
    assert finished == [("fake", "page", 1, True)] * 2
    in_flight = [args[0] for name, args in observer.calls if name == "set_in_flight"]
    assert in_flight[0] == {"fake": 2} and in_flight[-1] == {}


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_fleet_wide_figures_are_gathered_only_for_an_observer_that_reads_them(mock_db, clock, enabled):
    """The backlog is a database aggregation: a process without metrics never runs it."""
    settings = make_settings(fleet={"backlog_interval": 0.0})
    store = Store(mock_db)
    gathered = []
    shared = store.shared_figures

    async def counting(*args: Any, **kwargs: Any) -> Any:
        gathered.append(args[0])
        return await shared(*args, **kwargs)

    store.shared_figures = counting
    observer = Recorder(enabled=enabled)
    async with httpx.AsyncClient() as client:
        sched = Scheduler(store, Executor(store, client, settings, REGISTRY, clock=clock), settings, "initial",
                          owner="test", clock=clock)
        assert await Fleet(store, sched, settings, clock=clock, metrics=observer).beat()
    assert gathered == (["metrics"] if enabled else [])
    assert ("set_backlog" in observer.hooks()) is enabled
