#!/usr/bin/env python3
"""The packaged install, as a user gets it (CI runs it: .ci/run): build the wheel, install it with the `demo` extra
into a fresh virtualenv outside the clone, and from a directory outside the clone check what a user relies on.

  wheel      built from the clone's files (tracked and new, not ignored: what a fresh clone would hold) with the
             clone's pinned setuptools, no build isolation; it holds `collector` alone at the top (the built-in
             connectors as collector.connectors, no top-level `connectors`), every file of collector/ and
             connectors/, the entry points under collector.connectors.*, and the metadata (name, SPDX license)
  install    a fresh venv in a temporary directory: requirements/demo.lock with its hashes, then
             `pip install --no-index WHEEL[demo]` (so the wheel's own requirements must be met by the lock), pip check
  version    `collector --version` names the distribution's version (collector-daemon's metadata is found)
  connectors `collector connectors`: the ten built-in ones, from collector-daemon, none broken
  config     `collector config show` (and with `--env production`) prints what the clone's does
  demo       `collector demo` passes (the sandbox API, the in-memory database of the `demo` extra)
  daemon     `collector --mode normal` on the packaged settings against the test database (scripts/devdb.py):
             it reports READY=1 over sd_notify, `collector status` shows it (mode, alive, the distribution's
             version), and SIGTERM stops it with exit code 0

Every check runs; one line each with its duration, the output of a failed one; the last line counts them.
Usage: .venv/bin/python scripts/packaged.py [--keep] (--keep leaves the temporary directory for a look).
Takes about a minute (most of it the demo and the virtualenv); needs Java 17 and Maven for the daemon check
(scripts/devdb.py installs the test database once, as the wire tests do).
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import devdb  # noqa: E402  (scripts/devdb.py)

DISTRIBUTION = "collector-daemon"
BUILTIN = {"github", "stackoverflow", "mastodon_favourites", "mastodon_bookmarks", "gitlab", "youtube", "spotify",
           "reddit_saved", "reddit_upvoted", "bluesky"}
CLONE_PYTHON = ROOT / ".venv" / "bin" / "python"


class Failed(Exception):
    """A check that did not hold: the message, then what the command printed."""


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120.0) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode:
        raise Failed(f"`{' '.join(str(c) for c in cmd)}` exited with {res.returncode}\n{res.stdout}{res.stderr}")
    return res.stdout


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """The machine's environment less what would steer collector or Python: no COLLECTOR_*, MONGODB_URI, PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "PYTHON", "PIP_REQUIRE"))
           and k not in ("MONGODB_URI", "VIRTUAL_ENV", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    return env


class Checks:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.venv, self.cwd = tmp, tmp / "venv", tmp / "elsewhere"
        self.wheel: Path | None = None
        self.passed: list[str] = []
        self.failed: list[str] = []

    def check(self, name: str, what: str, body: Callable[[], str]) -> bool:
        began = time.monotonic()
        try:
            detail = body()
        except (Failed, OSError, subprocess.SubprocessError, devdb.DevDBError, AssertionError) as exc:
            self.failed.append(name)
            print(f"packaged: FAILED {name:<10} {what} ({time.monotonic() - began:.1f} s): {exc}", flush=True)
            return False
        self.passed.append(name)
        print(f"packaged: ok     {name:<10} {what}{f': {detail}' if detail else ''} "
              f"({time.monotonic() - began:.1f} s)", flush=True)
        return True

    def collector(self, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> str:
        return run([self.venv / "bin" / "collector", *args], self.cwd, env or clean_env(self.venv), timeout)

    # -- the checks ------------------------------------------------------------------------------------

    def build(self) -> str:
        src, dist = self.tmp / "src", self.tmp / "dist"
        files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT, clean_env())
        for name in filter(None, files.split("\0")):
            if (ROOT / name).is_file():  # a tracked file deleted in the work tree is not there
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
        run([CLONE_PYTHON, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--no-index",
             "--no-build-isolation", "--wheel-dir", dist, src], self.tmp, clean_env())
        wheels = list(dist.glob("*.whl"))
        assert len(wheels) == 1, f"one wheel expected, built {wheels}"
        self.wheel = wheels[0]
        with zipfile.ZipFile(self.wheel) as zf:
            names = set(zf.namelist())
            info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
            tops = {n.split("/")[0] for n in names} - {info}
            assert tops == {"collector"}, f"the wheel installs {sorted(tops)} at the top, collector alone expected"
            shipped = {f"collector/{p.relative_to(src / 'collector')}" for p in (src / "collector").rglob("*")
                       if p.is_file()}
            shipped |= {f"collector/connectors/{p.relative_to(src / 'connectors')}"
                        for p in (src / "connectors").rglob("*") if p.is_file()}
            missing = sorted(shipped - names)
            assert missing == [], f"files of the clone missing from the wheel: {missing}"
            points = configparser.ConfigParser(delimiters=("=",))
            points.read_string(zf.read(f"{info}/entry_points.txt").decode())
            targets = dict(points["collector.connectors"])
            assert set(targets) == BUILTIN, f"entry points {sorted(targets)}"
            wrong = {k: v for k, v in targets.items() if not v.strip().startswith("collector.connectors.")}
            assert wrong == {}, f"entry points outside collector.connectors: {wrong}"
            meta = zf.read(f"{info}/METADATA").decode()
            for field in (f"Name: {DISTRIBUTION}", "License-Expression: MIT", "Provides-Extra: demo"):
                assert f"\n{field}\n" in meta, f"METADATA lacks {field!r}"
        return f"{self.wheel.name}, {len(names)} files"

    def install(self) -> str:
        assert self.wheel is not None, "no wheel was built"
        run([sys.executable, "-m", "venv", self.venv], self.tmp, clean_env())
        pip: list[str | Path] = [self.venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
        run([*pip, "install", "--require-hashes", "--only-binary", ":all:", "-r", ROOT / "requirements" / "demo.lock"],
            self.tmp, clean_env(self.venv), timeout=300)
        run([*pip, "install", "--no-index", f"{self.wheel}[demo]"], self.tmp, clean_env(self.venv))
        run([*pip, "check"], self.tmp, clean_env(self.venv))
        site = next((self.venv / "lib").glob("python3*/site-packages"))
        assert not (site / "connectors").exists(), "a top-level `connectors` package was installed"
        return f"{DISTRIBUTION}[demo] from the wheel on requirements/demo.lock"

    def version(self) -> str:
        expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        out = self.collector("--version").strip()
        assert out.endswith(f" {expected}"), f"`collector --version` says {out!r}, {expected} expected"
        return out

    def connectors(self) -> str:
        rows = [line.split() for line in self.collector("connectors").splitlines() if line.strip()]
        ours = {row[0]: row[1] for row in rows if row[0] in BUILTIN}
        assert set(ours) == BUILTIN and set(ours.values()) == {DISTRIBUTION}, f"listed: {rows}"
        broken = [row[0] for row in rows if "BROKEN:" in row]
        assert broken == [], f"broken connectors: {broken}"
        return f"{len(ours)} built-in"

    def config(self) -> str:
        for env_args in ([], ["--env", "production"]):
            cmd = [*env_args, "config", "show"]
            mine = subprocess.run([self.venv / "bin" / "collector", *cmd], cwd=self.cwd, env=clean_env(self.venv),
                                  capture_output=True, text=True, timeout=60)
            clone = subprocess.run([CLONE_PYTHON, "-m", "collector", *cmd], cwd=ROOT, env=clean_env(),
                                   capture_output=True, text=True, timeout=60)
            shown = " ".join(cmd)
            assert clone.returncode == 0 or env_args, f"the clone's `collector {shown}` failed: {clone.stderr}"
            assert (mine.returncode, mine.stdout) == (clone.returncode, clone.stdout), (
                f"`collector {shown}` differs: packaged exit {mine.returncode}, clone exit {clone.returncode}\n"
                f"--- packaged\n{mine.stdout}{mine.stderr}--- clone\n{clone.stdout}{clone.stderr}")
        return "equal to the clone's, with and without --env production"

    def demo(self) -> str:
        out = self.collector("demo", timeout=240)
        summary = [line.strip() for line in out.splitlines() if line.strip().startswith("items")]
        return summary[-1] if summary else ""

    def daemon(self) -> str:
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        server = devdb.start_server(use_env=False)
        try:
            with notify_socket(self.tmp / "notify") as sock:
                env = {**clean_env(self.venv), "MONGODB_URI": server.uri, "NOTIFY_SOCKET": str(self.tmp / "notify")}
                log = (self.tmp / "daemon.log").open("w")
                proc = subprocess.Popen([self.venv / "bin" / "collector", "--mode", "normal"], cwd=self.cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                try:
                    ready = receive_ready(sock, proc, 60)
                    assert ready, f"no READY=1 within 60 s (exit code {proc.poll()}): {tail(self.tmp / 'daemon.log')}"
                    report = json.loads(self.collector("status", "--json", env=env, timeout=60))
                    mine = [p for p in report["processes"] if p["pid"] == proc.pid]
                    assert [(p["mode"], p["alive"], p["version"]) for p in mine] == [("normal", True, version)], (
                        f"`collector status --json` shows {report['processes']}")
                    proc.send_signal(signal.SIGTERM)
                    code = proc.wait(60)
                    assert code == 0, f"exit code {code} after SIGTERM: {tail(self.tmp / 'daemon.log')}"
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    log.close()
        finally:
            server.stop()
        return f"READY=1, in `collector status` as {version}, stopped by SIGTERM with exit code 0 ({server.engine})"


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        yield sock
    finally:
        sock.close()


def receive_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        with contextlib.suppress(TimeoutError):
            if "READY=1" in sock.recv(65536).decode(errors="replace").splitlines():
                return True
    return False


def tail(path: Path, lines: int = 15) -> str:
    return "\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str]) -> int:
    if not CLONE_PYTHON.exists():
        print("packaged: the clone's .venv is missing: run scripts/bootstrap.sh first", file=sys.stderr)
        return 2
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="collector-packaged-"))
    try:
        checks = Checks(tmp)
        checks.cwd.mkdir()
        if checks.check("wheel", "built from the clone", checks.build) and \
                checks.check("install", "into a fresh venv outside the clone", checks.install):
            checks.check("version", "collector --version", checks.version)
            checks.check("connectors", "collector connectors", checks.connectors)
            checks.check("config", "collector config show", checks.config)
            checks.check("demo", "collector demo", checks.demo)
            checks.check("daemon", "collector --mode normal on the test database", checks.daemon)
    finally:
        if "--keep" in argv:
            print(f"packaged: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"packaged: {len(checks.passed)} passed, {len(checks.failed)} failed in {time.monotonic() - began:.0f} s")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
