"""Scenario "hostile_server" (issue 24, item 7: one hostile network cannot hurt any other user).

One initial-mode daemon serves ordinary networks (GitHub, Stack Overflow and Mastodon on the sandbox API) and
hostile Mastodon networks whose users chose their instance: a server of this module on 127.0.0.1 (HostileApi,
served by the sandbox's HTTP server) that answers with a gzip bomb of GiBs (nested `gzip, gzip`, a few KiB on
the wire, and in one layer), a 100 KB crafted Link header, a status whose content is a `<` flood, a 302 to
another loopback service (the body echoing the token JSON-escaped across the 200-byte cut of lastError), a slow
drip, a 10 MB `[{},{},...]` array; and instances on a refused address (127.0.0.2 and its decimal spelling
2130706434, https and http: loopback too, so nothing can leave the machine even without an egress policy).
The daemon runs with the egress allow-list naming only 127.0.0.1/32 (the sandbox and the hostile server), and
under an address-space limit (SAFETY_AS) so that an engine without bounded decoding cannot exhaust the machine.

    run(uri, size) -> row          (scripts/faults.py)
    execute(uri, size) -> Report   (the row and the detail: tests/faults/test_hostile_server_small.py)

Measured, per run: the largest event-loop gap (the daemon is given NOTIFY_SOCKET and WATCHDOG_USEC: the
longest time between two watchdog pings while the networks run), the daemon's RSS when idle (started,
nothing due) and at its peak (VmHWM, read before it stops); checked: every ordinary item collected once
(against what the sandbox served), every hostile network in a documented state with a reason, no connection
to a refused address or to the redirect's target, no crash, no 8-character piece of any token in the
database or the daemon's output. Targets (issue 24): RSS growth <= 200 MiB, loop gap <= 1 s: judged at size
full only (a FAIL note), reported at size small.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.sandbox import Response, Sandbox, Server, json_reply
from collector.sandbox.apis.mastodon import _status, status_id
from tests.faults.scenarios import FAST, World, _crash_notes, row

SIZES = {
    # ordinary: World's networks (a quarter Stack Overflow, the rest GitHub) plus Mastodon ones on the sandbox;
    # per_kind: hostile networks per kind (the refused address: per spelling); bomb: its decoded size
    "small": {"users": 32, "mastodon": 8, "pages": 2, "per_kind": 1, "bomb": 1 << 30, "limit": 45.0},
    "full": {"users": 170, "mastodon": 30, "pages": 3, "per_kind": 2, "bomb": 2 << 30, "limit": 300.0},
}
KINDS = ("gzip_bomb", "link_flood", "html_flood", "redirect", "drip", "huge_array", "private")
# kinds whose run cannot succeed, and why a success would be wrong
MUST_FAIL = {
    "gzip_bomb": "a body decoded past the cap was accepted",
    "redirect": "the redirect was followed",
    "drip": "a body slower than total_timeout was accepted",
    "private": "an instance on a refused address was reached",
}
NOTHING_STORED = {*MUST_FAIL, "huge_array"}
LINK_BYTES = 100_000  # the Link header's value: under httpcore's 100 KiB limit on a response head
HTML_BYTES = 120_000  # the `<` flood of a status' content
ARRAY_BYTES = 10_000_000  # the `[{},{},...]` body: under the default body cap (10 MiB)
PAD = 143  # filler before the echoed token in the 302 body: the token straddles the 200-byte cut of lastError
PRIVATE_HOST, PRIVATE_DECIMAL = "127.0.0.2", "2130706434"  # the same loopback address, two spellings
ALLOW = '["127.0.0.1/32"]'  # [http] allow: the sandbox and the hostile server only

WATCHDOG_USEC = 200_000  # a ping every 0.1 s: the resolution of the loop gap
TARGET_GAP = 1.0  # seconds
TARGET_GROWTH = 200  # MiB of peak RSS over the idle RSS
SAFETY_AS = 8 << 30  # the daemon's address space (prlimit): today's bombs must not take the machine down
CONCURRENCY = 16
SETTINGS = ["--concurrency", str(CONCURRENCY), "--set", "schedule.max_errors=2", "--set", "schedule.disable_after=0",
            "--set", "schedule.backoff_base=0.2", "--set", "schedule.backoff_cap=1", "--set", "schedule.jitter=0.0",
            "--set", "schedule.initial_pace=0.05", "--set", "schedule.normal_interval=3600"]


@dataclass
class Net:
    name: str  # the network's user
    kind: str
    variant: str  # gzip_bomb: the Content-Encoding; private: the instance; else ""
    service: str
    instance: str
    token: str
    id: Any = None


@dataclass
class Report:
    row: dict[str, Any]
    hostile: list[dict[str, Any]]  # per hostile network: name, kind, instance, requests, stored, end, problems
    refused: int  # connections that reached the refused address (127.0.0.2)
    redirected: int  # connections that reached the redirect's target
    leaks: list[str]
    crashes: list[str]
    ordinary: dict[str, int]  # World.tally() of the ordinary networks
    loop_gap: float | None  # seconds
    gap_at: float  # when it began (Unix seconds)
    rss_idle: int | None  # MiB
    rss_peak: int | None  # MiB
    timings: dict[str, float] = field(default_factory=dict)


# -- what the hostile server sends --------------------------------------------------------------


def bomb(decoded: int) -> bytes:
    """gzip(gzip(`[` + spaces + `]`)): `decoded` bytes of valid JSON (an empty list: accepted, the run would be a
    success) once both layers are undone, a few KiB on the wire (one layer: ~1 MiB per GiB). Built once (5 s per
    GiB) and kept in the temporary directory."""
    path = Path(tempfile.gettempdir()) / f"collector-hostile-bomb-{decoded}.gz.gz"
    with contextlib.suppress(OSError, zlib.error, EOFError):
        body = path.read_bytes()
        inner = gzip.decompress(body)
        if int.from_bytes(inner[-4:], "little") == decoded & 0xFFFFFFFF:
            return body
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    spaces = b" " * (1 << 20)
    parts = [packer.compress(b"[")]
    for _ in range((decoded - 2) >> 20):
        parts.append(packer.compress(spaces))
    parts += [packer.compress(b" " * ((decoded - 2) & ((1 << 20) - 1)) + b"]"), packer.flush()]
    body = gzip.compress(b"".join(parts), compresslevel=9)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        partial.write_bytes(body)
        partial.replace(path)
    return body


def _statuses(endpoint: str, ids: list[int]) -> list[dict[str, Any]]:
    return [_status(endpoint, {"id": n, "at": time.time()}) for n in ids]


class HostileApi(Sandbox):
    """A user's "Mastodon instance" that attacks the client: each token gets the reply of its kind, every time.
    Served by the sandbox's HTTP server (collector.sandbox.Server); counts requests and transfers as the
    sandbox does."""

    def __init__(self, redirect_to: str, bomb_body: bytes):
        super().__init__()
        self.nets: dict[str, Net] = {}  # by token
        self.redirect_to = redirect_to
        self.bombs = {"gzip, gzip": bomb_body, "gzip": gzip.decompress(bomb_body)}
        self.array = b"[" + b"{}," * ((ARRAY_BYTES - 4) // 3) + b"{}]"

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self.lock:
            self.total += 1
            self.log.append(target)
            self.requests[token] += 1
            self.hits.setdefault(token, []).append(float(headers.get("x-sandbox-arrived") or time.time()))
        path = urlsplit(target).path
        match = re.fullmatch(r"/api/v1/(favourites|bookmarks)", path)
        net = self.nets.get(token)
        if match is None or net is None:
            return json_reply(401, {"error": "The access token is invalid"})
        kind = net.kind
        with self.lock:
            self.faults_served[kind] += 1
        url = f"{headers.get('x-sandbox-base', '')}{path}"
        prev = f'<{url}?min_id=2>; rel="prev"'
        if kind == "gzip_bomb":
            return Response(200, self.bombs[net.variant], {"content-type": "application/json",
                                                          "content-encoding": net.variant})
        if kind == "link_flood":  # quadratic for a `<([^>]*)>` regex; no usable link for a linear parser
            return json_reply(200, _statuses(match.group(1), [2, 1]), {"link": "<" * LINK_BYTES})
        if kind == "html_flood":  # quadratic for a `<[^>]*>` regex
            status = _statuses(match.group(1), [2])[0]
            status["content"] = "<" * HTML_BYTES
            return json_reply(200, [status], {"link": prev})
        if kind == "redirect":  # another loopback service; the body echoes the token as JSON escapes it
            echo = json.dumps({"error": "moved", "detail": "." * PAD + " token " + token}).replace("/", "\\/")
            return Response(302, echo.encode(),
                            {"content-type": "application/json", "location": f"{self.redirect_to}/internal/admin"})
        if kind == "drip":  # a byte at a time, for ten minutes
            return Response(200, b"[" + b" " * 4000 + b"]", {"content-type": "application/json"}, action="drip",
                            seconds=600.0)
        if kind == "huge_array":
            return Response(200, self.array, {"content-type": "application/json", "link": prev})
        return json_reply(500, {"error": f"unexpected kind {kind}"})


class Listener:
    """A TCP port that counts the connections it gets (each answered with a small HTTP 200, then closed): the
    redirect's target, and the refused address."""

    REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 31\r\n\r\n" \
            b'{"internal": "loopback secret"}'

    def __init__(self, host: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"listener-{host}")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the timeout included
                continue
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.REPLY)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Watchdog:
    """The systemd side of sd_notify: a datagram socket the daemon pings (NOTIFY_SOCKET); the times of its
    WATCHDOG=1 pings (Unix seconds) and of READY=1."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="collector-notify-"))
        self.path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.05)
        self.pings: list[float] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True, name="watchdog")
        self._thread.start()

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            if b"WATCHDOG=1" in data:
                self.pings.append(time.time())
            if b"READY=1" in data:
                self.ready.set()

    def longest_gap(self, since: float, until: float) -> tuple[float, float]:
        """(seconds, start) of the longest time without a ping between `since` and `until` (Unix seconds)."""
        marks = [since, *(p for p in self.pings if since < p < until), until]
        return max(((b - a, a) for a, b in pairwise(marks)), default=(0.0, since))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the scenario ---------------------------------------------------------------------------------


def plan(size: str, hostile_url: str, private_port: int) -> list[Net]:
    """Hostile networks: `per_kind` of each kind and variant: the bomb nested (`gzip, gzip`, a few KiB on the
    wire) and in one layer (`gzip`, ~1 MiB per GiB: what bounded decoding must stop), the refused address in
    four spellings."""
    per_kind = SIZES[size]["per_kind"]
    variants = {"gzip_bomb": ["gzip, gzip", "gzip"],
                "private": [f"{scheme}://{host}:{private_port}" for scheme in ("https", "http")
                            for host in (PRIVATE_HOST, PRIVATE_DECIMAL)]}
    nets = []
    for kind in KINDS:
        for variant in variants.get(kind, [""]):
            for _ in range(per_kind):
                n = len(nets)
                service = ("mastodon_favourites", "mastodon_bookmarks")[n % 2]
                instance = variant if kind == "private" else hostile_url
                nets.append(Net(f"hostile-{n:02d}-{kind}", kind, variant, service, instance,
                                f"hst/{uuid.uuid4().hex}"))
    return nets


# the daemon's egress policy: the allow-list names 127.0.0.1/32 only (the sandbox and the hostile server), private
# addresses refused: 127.0.0.2 stands for an address the policy refuses without any traffic leaving this host
EGRESS = ["--set", "http.allow_private=false", "--set", f"http.allow={ALLOW}"]


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in MiB (empty when it is gone)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    return out


def execute(uri: str, size: str = "small") -> Report:
    cfg = SIZES[size]
    began = time.monotonic()
    timings: dict[str, float] = {}
    built: dict[str, bytes] = {}
    builder = threading.Thread(target=lambda: built.update(body=bomb(cfg["bomb"])), daemon=True)
    builder.start()
    with contextlib.ExitStack() as cleanup:
        redirect_target = Listener("127.0.0.1")
        cleanup.callback(redirect_target.close)
        refused = Listener(PRIVATE_HOST)
        cleanup.callback(refused.close)
        world = World(uri, cfg["users"], cfg["pages"])
        cleanup.callback(world.close)
        far = datetime.now(UTC) + timedelta(days=1)  # nothing due until the idle RSS is read
        world.db.networks.update_many({}, {"$set": {"scheduledTo": far}})
        mastodon = _ordinary_mastodon(world, cfg, far)
        builder.join()
        api = HostileApi(f"http://127.0.0.1:{redirect_target.port}", built["body"])
        hostile_server = Server(api).start()
        cleanup.callback(hostile_server.stop)
        nets = plan(size, hostile_server.url, refused.port)
        api.nets.update({n.token: n for n in nets})
        ids = world.db.networks.insert_many([{"user": n.name, "service": n.service, "accessToken": n.token,
                                              "mode": "initial", "options": {"instance": n.instance},
                                              "scheduledTo": far} for n in nets]).inserted_ids
        for net, oid in zip(nets, ids, strict=True):
            net.id = oid
        timings["setup"] = time.monotonic() - began
        launcher = (["prlimit", f"--as={SAFETY_AS}", "--", sys.executable, "-m", "collector"]
                    if shutil.which("prlimit") else None)
        daemons = world.daemons(*FAST, *SETTINGS, *EGRESS)
        watchdog = Watchdog()
        cleanup.callback(watchdog.close)
        idle = peak = gap = None
        gap_at = due_at = 0.0
        settled = False
        try:
            proc = daemons.start("initial", watchdog.env(), launcher=launcher)
            if watchdog.ready.wait(30) and proc.popen.poll() is None:
                time.sleep(1.0)
                idle = rss(proc.pid).get("VmRSS")
            timings["start"] = time.monotonic() - began - timings["setup"]
            due_at, mark = time.time(), time.monotonic()
            world.db.networks.update_many({}, {"$set": {"scheduledTo": datetime.now(UTC)}})
            while time.monotonic() < mark + cfg["limit"] and proc.popen.poll() is None:
                if _settled(world, nets):
                    settled = True
                    break
                time.sleep(0.5)
            timings["run"] = time.monotonic() - mark
            peak = rss(proc.pid).get("VmHWM")
            if watchdog.pings:
                gap, gap_at = watchdog.longest_gap(due_at, time.time())
        finally:
            daemons.stop_all()
        crashes = daemons.crashes()
        outputs = [(f"daemon output ({p.log.name})", p.output()) for p in daemons.procs]
        leaks = find_leaks(world, outputs, {**world.networks, **mastodon}, nets)
        hostile, hostile_runs = _hostile_ends(world, api, nets, cfg["limit"])
        ordinary = world.tally()  # GitHub and Stack Overflow: the sandbox's ids are the items' ids
        ordinary["lost"] += mastodon_lost(world, mastodon)
    figures = {**ordinary, "runs": ordinary["runs"] + hostile_runs,
               "stuck": ordinary["stuck"] + sum(1 for h in hostile if h["problems"])}
    report = Report(row("hostile_server"), hostile, refused.connections, redirect_target.connections, leaks, crashes,
                    ordinary, gap, gap_at, idle, peak, timings)
    report.row = row("hostile_server", faults=sum(api.requests.values()), crashes=len(crashes),
                     seconds=round(time.monotonic() - began, 1),
                     notes=_notes(report, size, settled, due_at, api) + _crash_notes(crashes), **figures)
    return report


def _ordinary_mastodon(world: World, cfg: dict[str, Any], due: datetime) -> dict[str, tuple[str, str]]:
    """Ordinary Mastodon networks on the sandbox (the services of the hostile ones): {token: (user, service)}."""
    docs, networks = [], {}
    for i in range(cfg["mastodon"]):
        service, token = ("mastodon_favourites", "mastodon_bookmarks")[i % 2], f"mst-{uuid.uuid4().hex[:16]}"
        world.box.add_user(service, token, items=cfg["pages"] * 2)
        networks[token] = (f"muser{i}", service)
        docs.append({"user": f"muser{i}", "service": service, "accessToken": token, "mode": "initial",
                     "options": {"instance": world.server.url}, "scheduledTo": due})
    world.db.networks.insert_many(docs)
    return networks


def _hostile_ends(world: World, api: HostileApi, nets: list[Net], limit: float) -> tuple[list[dict[str, Any]], int]:
    """Each hostile network's end and problems, and their runs; then their documents and items are removed (what
    remains is World.tally()'s: the ordinary networks)."""
    names = [n.name for n in nets]
    docs = {d["user"]: d for d in world.db.networks.find({"user": {"$in": names}}, {"accessToken": 0})}
    stored = Counter(d["user"] for d in world.db.items.find({"user": {"$in": names}}, {"user": 1}))
    ends = []
    for net in nets:
        doc = docs.get(net.name)
        final, problems = judge(net, doc, stored[net.name])
        if not final:
            problems.append(f"not in a final state within {limit:g}s")
        ends.append({"name": net.name, "kind": net.kind, "variant": net.variant, "instance": net.instance,
                     "requests": api.requests.get(net.token, 0), "stored": stored[net.name], "end": end_state(doc),
                     "problems": problems})
    world.db.networks.delete_many({"user": {"$in": names}})
    world.db.items.delete_many({"user": {"$in": names}})
    return ends, sum(int((d.get("stats") or {}).get("runs") or 0) for d in docs.values())


def run(uri: str, size: str = "small") -> dict[str, Any]:
    return execute(uri, size).row


def _settled(world: World, nets: list[Net]) -> bool:
    """Every ordinary network back-filled (normal mode) and every hostile one in a final state."""
    ids = [n.id for n in nets]
    ordinary = world.db.networks.count_documents({"_id": {"$nin": ids}})
    if world.db.networks.count_documents({"_id": {"$nin": ids}, "mode": "normal"}) < ordinary:
        return False
    docs = {d["_id"]: d for d in world.db.networks.find({"_id": {"$in": ids}}, {"accessToken": 0})}
    return all(judge(n, docs.get(n.id), 0)[0] for n in nets)


def mastodon_lost(world: World, networks: dict[str, tuple[str, str]]) -> int:
    """Items of the ordinary Mastodon networks served and not stored (World.tally counts them as served, not
    lost): the sandbox serves favourite/bookmark ids, the items are keyed by the status ids derived from them
    (collector.sandbox.apis.mastodon.status_id)."""
    with world.box.lock:
        served = {token: {status_id(i) for i in world.box.served_ids.get(token, ())} for token in networks}
    stored: dict[tuple[Any, Any], set[str]] = {}
    for doc in world.db.items.find({"service": {"$in": ["mastodon_favourites", "mastodon_bookmarks"]}},
                                   {"user": 1, "service": 1, "itemId": 1}):
        stored.setdefault((doc.get("user"), doc.get("service")), set()).add(str(doc.get("itemId")))
    return sum(len(ids - stored.get(networks[token], set())) for token, ids in served.items())


FAILED = ("transient", "permanent", "unauthorized", "rate_limited")


def judge(net: Net, doc: dict[str, Any] | None, stored: int) -> tuple[bool, list[str]]:
    """(final, problems) of a hostile network: final = disabled, back-filled after a success, or waiting far
    ahead (a limit); problems = every way it is not in a documented state with a reason."""
    if doc is None:
        return False, ["network document missing"]
    outcome = doc.get("lastOutcome") or {}
    kind = outcome.get("kind")
    due = doc.get("scheduledTo")
    waiting = isinstance(due, datetime) and due > datetime.now(UTC) + timedelta(minutes=10)
    final = not doc.get("lease") and (bool(doc.get("disabled")) or waiting
                                      or (doc.get("mode") == "normal" and kind in ("page", "not_modified")))
    problems = []
    if not kind:
        problems.append("never ran (no lastOutcome)")
    elif not str(outcome.get("reason") or "").strip():
        problems.append("lastOutcome without a reason")
    if doc.get("disabled") and not str(doc.get("disabledReason") or "").strip():
        problems.append("disabled without a disabledReason")
    if kind in FAILED and not str((doc.get("lastError") or {}).get("message") or "").strip():
        problems.append(f"a {kind} outcome without lastError.message")
    if net.kind in MUST_FAIL and kind in ("page", "not_modified"):
        problems.append(f"ended as a success ({kind}): {MUST_FAIL[net.kind]}")
    if net.kind in NOTHING_STORED and stored:
        problems.append(f"{stored} items stored from it")
    return final, problems


def end_state(doc: dict[str, Any] | None) -> str:
    """One line: mode or disabled, the last outcome, the error kind and message, the disabled reason."""
    if doc is None:
        return "no document"
    outcome, error = doc.get("lastOutcome") or {}, doc.get("lastError") or {}
    text = ("disabled" if doc.get("disabled") else str(doc.get("mode"))) + f", {outcome.get('kind') or 'never run'}"
    if error and outcome.get("kind") in FAILED:
        text += f" {error.get('kind')}: {str(error.get('message'))[:90]!r}"
    elif error:
        text += f" (after an earlier {error.get('kind')})"
    if doc.get("disabled"):
        text += f", reason {str(doc.get('disabledReason'))[:90]!r}"
    return text


# -- secrets -------------------------------------------------------------------------------------

WORDS = re.compile(r"[A-Za-z0-9/_\-]{8,}")


def find_leaks(world: World, outputs: list[tuple[str, str]], ordinary: dict[str, tuple[str, str]],
               nets: list[Net]) -> list[str]:
    """Pieces of any token (token_pieces) in the daemon's output or any document but the tokens' own fields."""
    tokens = {t: user for t, (user, _service) in ordinary.items()} | {n.token: n.name for n in nets}
    sources = list(outputs)
    for coll in ("networks", "services", "collectors", "items"):
        for doc in world.db[coll].find({}, {"accessToken": 0, "refreshToken": 0}):
            sources.append((f"db.{coll} {doc.get('user') or doc.get('_id')}", json.dumps(doc, default=str)))
    return leaks_in(sources, token_pieces(tokens))


def token_pieces(tokens: dict[str, str]) -> dict[str, str]:
    """{8-character piece: whose token} for every piece holding at least 4 characters of a token's random part
    (after its last `-` or `/`: "fault-0001-" or "hst/" alone is no secret)."""
    pieces: dict[str, str] = {}
    for token, user in tokens.items():
        secret = max(token.rfind("-"), token.rfind("/")) + 1
        for i in range(max(0, secret - 4), len(token) - 7):
            pieces.setdefault(token[i:i + 8], user)
    return pieces


def leaks_in(sources: list[tuple[str, str]], pieces: dict[str, str]) -> list[str]:
    """Each source holding a piece of a token, as "where: a piece of the token of USER": raw, JSON-escaped
    (`\\/`, in a JSON log line too) or URL-encoded (%2F) spellings."""
    found = []
    for where, text in sources:
        text = text.replace("\\\\", "\\").replace("\\/", "/").replace("%2F", "/").replace("%2f", "/")
        hits = {pieces[w[i:i + 8]] for m in WORDS.finditer(text) for w in [m.group()] for i in range(len(w) - 7)
                if w[i:i + 8] in pieces}
        found += [f"{where}: a piece of the token of {user}" for user in sorted(hits)]
    return found


# -- the row's notes -----------------------------------------------------------------------------


def _notes(report: Report, size: str, settled: bool, due_at: float, api: HostileApi) -> str:
    cfg = SIZES[size]
    kinds = Counter(h["kind"] for h in report.hostile)
    ordinary = cfg["users"] + cfg["mastodon"]
    notes = (f"{ordinary} ordinary networks ({cfg['users']} GitHub/Stack Overflow, {cfg['mastodon']} Mastodon) x "
             f"{cfg['pages']} pages and {len(report.hostile)} hostile Mastodon networks "
             f"({', '.join(f'{k} {n}' for k, n in kinds.items())}; bombs of {cfg['bomb'] >> 20} MiB: "
             f"{len(api.bombs['gzip, gzip']):,} B nested, {len(api.bombs['gzip']):,} B in one layer); "
             f"1 initial daemon, concurrency {CONCURRENCY}; egress: http.allow={ALLOW}, allow_private=false")
    fails, missed = [], []
    if report.loop_gap is None:
        notes += "; loop gap not measured"
        fails.append("no watchdog ping while the networks ran")
    else:
        notes += (f"; largest loop gap {report.loop_gap:.2f}s at +{report.gap_at - due_at:.1f}s"
                  f"{_requests_before(api, report.gap_at)} (target {TARGET_GAP:g}s)")
        if report.loop_gap > TARGET_GAP:
            missed.append(f"loop gap {report.loop_gap:.2f}s > {TARGET_GAP:g}s")
    if report.rss_idle is not None and report.rss_peak is not None:
        growth = report.rss_peak - report.rss_idle
        notes += (f"; RSS idle {report.rss_idle} MiB, peak {report.rss_peak} MiB, growth {growth} MiB "
                  f"(target {TARGET_GROWTH} MiB)")
        if growth > TARGET_GROWTH:
            missed.append(f"RSS growth {growth} MiB > {TARGET_GROWTH} MiB")
    else:
        notes += "; RSS not measured (the daemon was gone)"
    by_kind: dict[str, list[str]] = {}
    for h in report.hostile:
        by_kind.setdefault(h["kind"], []).append(h["end"].split(" reason ")[0][:110])
    notes += "; hostile ends: " + "; ".join(f"{k}: {' | '.join(sorted(set(v)))}" for k, v in by_kind.items())
    notes += (f"; connections to the refused address {report.refused}, to the redirect's target "
              f"{report.redirected}; token pieces found {len(report.leaks)}")
    if not settled:
        fails.append(f"not settled within {cfg['limit']:g}s")
    if report.refused:
        fails.append(f"{report.refused} connections reached {PRIVATE_HOST} (a refused address)")
    if report.redirected:
        fails.append(f"{report.redirected} connections reached the redirect's target")
    if report.leaks:
        fails.append(f"{len(report.leaks)} token pieces: {'; '.join(report.leaks[:3])}")
    wrong = [f"{h['name']} ({h['end']}): {', '.join(h['problems'])}" for h in report.hostile if h["problems"]]
    if wrong:
        fails.append(f"{len(wrong)} hostile networks not in a documented state: {'; '.join(wrong[:3])}")
    if missed:
        fails += missed if size == "full" else []
        notes += f"; over target: {', '.join(missed)}" + (" (judged at size full only)" if size != "full" else "")
    return notes + (f"; FAIL: {'; '.join(fails)}" if fails else "")


def _requests_before(api: HostileApi, at: float, window: float = 3.0) -> str:
    """The hostile requests that arrived in the `window` seconds before `at` (Unix seconds), by kind: the
    suspects of a loop gap that began at `at` (a request in flight ends within total_timeout, 2 s, when the loop
    runs)."""
    with api.lock:
        kinds = Counter(api.nets[token].kind for token, times in api.hits.items() if token in api.nets
                        for t in times if at - window <= t <= at + 0.05)
    if not kinds:
        return f", no hostile request in the {window:g}s before"
    return f", after hostile requests ({window:g}s before: {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))})"
