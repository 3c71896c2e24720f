"""The fault driver of the refresh_outage scenario (tests/faults/refresh_outage.py): database outages that begin
the moment a provider has answered a refresh, kills -9 of the daemon holding the credential write, random kills,
restarts, items arriving upstream."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import collector.sandbox.tokens as sandbox_tokens
from collector.sandbox import Sandbox
from tests.faults.scenarios import Daemons, Proc

ARRIVALS = 2.0  # seconds between new items upstream (one per network)
PENDING = "refreshed tokens not stored yet"  # collector/refresh.py: a credential write waiting for the database


@dataclass
class Net:
    user: str
    service: str
    rotation: str
    token: str  # the user's own token: its key in the sandbox
    refresh: str
    id: str = ""


class RefreshLog:
    """Wraps collector.sandbox.tokens.refresh (the token endpoints call it through the module) for the scenario:
    records every refresh answered with new tokens, per user (wall time, refresh token issued), and, once armed,
    runs `on_answer` (the database outage) in the sandbox's thread before the answer of the next refresh of a
    network of that rotation leaves: the daemon gets its new pair with the database already gone."""

    def __init__(self, rotation_of: dict[str, str]) -> None:
        self.rotation_of = rotation_of
        self.issued: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
        self.lock = threading.Lock()
        self.armed: tuple[str, Callable[[str], None]] | None = None
        self._real = sandbox_tokens.refresh

    def __enter__(self) -> RefreshLog:
        def recording(box: Any, presented: str, service: str | None = None) -> Any:
            got = self._real(box, presented, service)
            if isinstance(got, str):
                return got
            token = got[0].token
            with self.lock:
                self.issued[token].append((time.time(), got[2]))
                armed, fire = self.armed, None
                if armed is not None and self.rotation_of.get(token) == armed[0]:
                    self.armed, fire = None, armed[1]
            if fire is not None:
                fire(token)
            return got

        sandbox_tokens.refresh = recording
        return self

    def __exit__(self, *exc: object) -> None:
        sandbox_tokens.refresh = self._real

    def arm(self, rotation: str, on_answer: Callable[[str], None]) -> None:
        with self.lock:
            self.armed = (rotation, on_answer)

    def disarm(self) -> bool:
        """True when it was still armed (no refresh of that rotation came)."""
        with self.lock:
            was, self.armed = self.armed is not None, None
            return was


def plan_faults(cfg: dict[str, Any], rng: random.Random) -> tuple[list[float], list[float]]:
    """When each outage is armed and when the random kills land, seconds from the start."""
    slot = (cfg["faulted"] - 3.0) / len(cfg["armed"])
    arms = [3.0 + i * slot + rng.uniform(0.0, max(slot - cfg["down"] - 1.5, 0.0)) for i in range(len(cfg["armed"]))]
    kills = [rng.uniform(2.0, cfg["faulted"]) for _ in range(max(cfg["kills"] - len(arms), 0))]
    return arms, sorted(kills)


class Driver:
    """The fault loop: outages armed in turn, kills, restarts, items arriving upstream."""

    def __init__(self, server: Any, daemons: Daemons, refreshes: RefreshLog, nets: list[Net], box: Sandbox,
                 cfg: dict[str, Any], rng: random.Random):
        self.server, self.daemons, self.refreshes, self.nets, self.box = server, daemons, refreshes, nets, box
        self.cfg, self.rng = cfg, rng
        self.ids = {n.token: n.id for n in nets}
        self.kills: list[dict[str, Any]] = []
        self.outages: list[dict[str, Any]] = []
        self.waiting: list[str] = []  # modes of daemons killed during an outage, started again after it
        self.met_outage = 0  # daemons started just before an outage that exited 3 at start (restarted)
        self.fired = threading.Event()

    def _fire(self, token: str) -> None:  # in the sandbox's thread, the refresh answer held until the pause is done
        self.server.pause()
        self.outages.append({"down": time.time(), "trigger": token, "marks": {p.pid: len(p.output())
                                                                              for p in self.daemons.procs}})
        self.fired.set()

    def run(self) -> None:
        arms, kill_at = plan_faults(self.cfg, self.rng)
        rotations = list(self.cfg["armed"])
        t0 = next_items = time.monotonic()
        armed_at: float | None = None
        while time.monotonic() - t0 < self.cfg["faulted"] or armed_at is not None:
            t = time.monotonic() - t0
            if armed_at is None and arms and t >= arms[0]:
                arms.pop(0)
                self.fired.clear()
                self.refreshes.arm(rotations.pop(0), self._fire)
                armed_at = t
            elif armed_at is not None and not self.fired.is_set() and t - armed_at > 3.0 and self.refreshes.disarm():
                self._fire("")  # no refresh of that rotation came: the outage starts now
            if self.fired.is_set():
                self._outage(self.outages[-1])
                armed_at = None
                self.fired.clear()
            if kill_at and t >= kill_at[0]:
                kill_at.pop(0)
                self._kill(None)
            self.daemons.revive()
            if time.monotonic() >= next_items:
                next_items += ARRIVALS
                for net in self.nets:
                    self.box.add_items(net.token, 1)
            time.sleep(0.05)

    def _outage(self, outage: dict[str, Any]) -> None:
        """The database is down (since `outage["down"]`): kill the daemon that holds the triggering network's
        credential write (or any daemon holding one, or a random one), then bring the database back."""
        down = self.cfg["down"]
        holder: tuple[Proc, str] | None = None
        while holder is None and time.time() - outage["down"] < down - 0.3:
            holder = self._holder(outage)
            if holder is None:
                time.sleep(0.1)
        self._kill(holder)
        time.sleep(max(outage["down"] + down - time.time(), 0.0))
        self.server.resume()
        outage["up"] = time.time()
        for proc in self.daemons.procs:  # started just before the outage: exited 3 at start, by design
            if proc.popen.poll() == 3 and not proc.killed and not proc.crashed and not proc.stopping:
                proc.killed = True
                self.met_outage += 1
                self.waiting.append(proc.mode)
        for mode in self.waiting:
            self.daemons.start(mode)
        self.waiting = []

    def _holder(self, outage: dict[str, Any]) -> tuple[Proc, str] | None:
        """A live daemon that logged a waiting credential write since the outage began, and the network's id (the
        triggering network's holder first)."""
        found: list[tuple[Proc, str]] = []
        for proc in self.daemons.alive():
            for line in proc.output()[outage["marks"].get(proc.pid, 0):].splitlines():
                if PENDING in line and line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        found.append((proc, str(json.loads(line).get("network"))))
        trigger = self.ids.get(outage["trigger"])
        return next((f for f in found if f[1] == trigger), found[0] if found else None)

    def _kill(self, holder: tuple[Proc, str] | None) -> None:
        alive = self.daemons.alive()
        if not alive:
            return
        victim = holder[0] if holder else self.rng.choice(alive)
        self.daemons.kill(victim)
        during = self.server.paused
        self.kills.append({"at": time.time(), "during": during, "holder": holder[1] if holder else None})
        if during:
            self.waiting.append(victim.mode)
        else:
            self.daemons.start(victim.mode)
