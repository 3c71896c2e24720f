#!/usr/bin/env python3
"""Throwaway MongoDB wire-protocol server for tests and benchmarks: mongo-java-server 1.47.0 (its in-memory
backend), installed by name from Maven Central, with a one-file launcher of this project's own
(scripts/devdb/CollectorDevDB.java). Atomicity (findAndModify, updates per document, unique indexes, bulk
writes with per-document errors) is the server's: the suite's probe (tests/integration/test_engine_guarantees.py)
proves it on every run. What it lacks is said where it matters: no `explain` (the index-scan tests skip with
that reason), no `hello` (it answers the legacy `isMaster`, as MongoDB before 4.4.2 does), no secondary
indexes (every query but `_id` equality scans its collection) and one lock per collection per command.

Uses $MONGODB_URI as is when set. Otherwise, the first time (about half a minute, then cached):
  1. Java 17 and Maven from Debian's packages if they are missing (apt-get, as root; DEB_PACKAGES below);
  2. `mvn dependency:copy-dependencies` on scripts/devdb/pom.xml: the server's jars from Maven Central into
     $COLLECTOR_CACHE_DIR (default ~/.cache/collector), Maven's own repository beside them;
  3. `javac` of the launcher against those jars.
Each start is a fresh, empty server on a free port of 127.0.0.1 (data in the JVM's memory only); stop() ends it.
Importable: start_server() -> Server (pause()/resume(): a database outage, the same data back on the same port),
engine_missing() says why the server cannot run here (None if it can).

  run -- CMD ARGS...        start, run CMD with MONGODB_URI set, stop; exit with CMD's code
  start --state-file F      start detached, write {uri, pid, dir} to F, print the URI
  stop --state-file F       stop that server, remove its temporary directory
  uri                       print $MONGODB_URI (exit 1 if unset)
  build                     install (or find the cached) server, print its folder
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "scripts" / "devdb"  # pom.xml (the dependency, by name) and CollectorDevDB.java (the launcher)
SERVER_VERSION = "1.47.0"  # de.bwaldvogel:mongo-java-server-memory-backend, as pom.xml names it
MAIN_CLASS = "CollectorDevDB"
JAVA_MAJOR = 17
DEB_PACKAGES = {"java": "openjdk-17-jdk-headless", "javac": "openjdk-17-jdk-headless", "mvn": "maven"}
# throughput; up to half the machine's memory (the data lives in the heap: about 35 KB of it for a 5.5 KB
# document); no hsperfdata files in /tmp
JVM_OPTIONS = ("-XX:+UseParallelGC", "-XX:MaxRAMPercentage=50", "-XX:-UsePerfData")
RECIPE = "1"  # bump when the install steps below change: the cache key includes it
TMP_PREFIX = "collector-devdb-"
ENGINE = f"mongo-java-server {SERVER_VERSION} (in-memory backend, reporting MongoDB 5.0)"
# what a benchmark on this engine measures and what it does not (bench/run.py prints it with the figures)
ENGINE_BOUNDS = ("mongo-java-server reads no secondary index (every query but an `_id` lookup scans its "
                 "collection) and takes one lock per collection for each command, so wall times, runs/s, claims/s "
                 "and how a fleet scales are bounds of this engine, not of the daemon; the daemon's own CPU and "
                 "database commands per run, and its ratio to the ceilings measured on the same engine in the same "
                 "run, are the daemon's. The same harness runs unchanged against MONGODB_URI.")


class DevDBError(RuntimeError):
    """A failure with a one-line, human-readable reason."""


# -- installing ------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("COLLECTOR_CACHE_DIR") or Path.home() / ".cache" / "collector").expanduser()


def _engine_dir() -> Path:
    """The cache folder of this install: keyed by the pom, the launcher's source and the recipe."""
    digest = hashlib.sha256(RECIPE.encode())
    for path in sorted(SOURCES.iterdir()):
        if path.suffix in (".xml", ".java"):
            digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return _cache_root() / f"engine-mongo-java-server-{SERVER_VERSION}-{digest.hexdigest()[:12]}"


def _java_major(java: str) -> int | None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        if found := re.search(r'version "(\d+)', out.stderr + out.stdout):
            return int(found.group(1))
    return None


def _missing_tools() -> list[str]:
    """The Debian packages to install for the tools that are missing (java >= 17, javac, mvn)."""
    missing = [tool for tool in DEB_PACKAGES if shutil.which(tool) is None]
    if "java" not in missing and (_java_major("java") or 0) < JAVA_MAJOR:
        missing += ["java", "javac"]
    return sorted({DEB_PACKAGES[tool] for tool in missing})


def _installed(engine: Path) -> bool:
    return (engine / ".installed").exists() and (engine / "classes" / f"{MAIN_CLASS}.class").exists()


def engine_missing() -> str | None:
    """None if the server can be installed (or is installed) and run here, else a one-line reason why not."""
    if _installed(_engine_dir()) and shutil.which("java"):
        return None
    if (missing := _missing_tools()) and os.geteuid() != 0:
        return f"Java {JAVA_MAJOR} and Maven are needed (as root: apt-get install {' '.join(missing)})"
    return None


def _say(line: str) -> None:
    print(f"devdb: {line}", file=sys.stderr, flush=True)


def _run(cmd: list[str], log: Path, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """One install step, its output into the log: a line every 15 s while it runs, one with its duration."""
    began, stdout = time.monotonic(), None
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        res = Popen(cmd, cwd=cwd, env=env, stdin=DEVNULL, stdout=PIPE, stderr=out, text=True)
        while stdout is None:
            try:
                stdout = res.communicate(timeout=15)[0]
            except subprocess.TimeoutExpired:
                _say(f"  {what}: {time.monotonic() - began:.0f} s ...")
        out.write(stdout)
    _say(f"  {what}: {time.monotonic() - began:.1f} s")
    if res.returncode:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line] or lines[-1:] or ["no output"]
        raise DevDBError(f"{what} failed (exit code {res.returncode}): {errors[0].strip()[:300]} (log: {log})")
    return stdout


def _install_packages(log: Path) -> None:
    if not (missing := _missing_tools()):
        return
    if os.geteuid() != 0:
        raise DevDBError(f"Java {JAVA_MAJOR} and Maven are needed: run as root `apt-get install {' '.join(missing)}`")
    _say(f"installing Debian packages: {' '.join(missing)} ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], log, "apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], log, "apt-get install", env=env)


def _install(engine: Path, log: Path) -> None:
    """The server's jars from Maven Central into engine/lib, the launcher compiled into engine/classes."""
    lib, classes = engine / "lib", engine / "classes"
    for folder in (lib, classes):
        shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="collector-devdb-install-") as tmp:
        shutil.copy(SOURCES / "pom.xml", Path(tmp) / "pom.xml")  # Maven's target/ stays out of the clone
        _run(["mvn", "--batch-mode", "--quiet", "--no-transfer-progress", "-Dstyle.color=never",
              f"-Dmaven.repo.local={_cache_root() / 'maven'}", "dependency:copy-dependencies",
              f"-DoutputDirectory={lib}", "-DincludeScope=runtime"], log, "mvn dependency:copy-dependencies",
             cwd=Path(tmp))
    if not any(lib.glob("mongo-java-server-core-*.jar")):
        raise DevDBError(f"Maven resolved no mongo-java-server jars into {lib} (log: {log})")
    _run(["javac", "--release", str(JAVA_MAJOR), "-nowarn", "-d", str(classes), "-cp", f"{lib}/*",
          str(SOURCES / f"{MAIN_CLASS}.java")], log, "javac of the launcher")


def build() -> Path:
    """Install and cache the server if needed; return its folder (lib/ jars, classes/ the launcher)."""
    engine = _engine_dir()
    if _installed(engine) and shutil.which("java"):
        return engine
    engine.mkdir(parents=True, exist_ok=True)
    with (engine / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, e.g. for parallel test runs
        if _installed(engine) and shutil.which("java"):
            return engine
        log, began = engine / "install.log", time.monotonic()
        _say(f"installing mongo-java-server {SERVER_VERSION} from Maven Central into {engine} (once; log: {log}) ...")
        _install_packages(log)
        _install(engine, log)
        (engine / ".installed").write_text(f"{SERVER_VERSION}\n")
        jars = len(list((engine / "lib").glob("*.jar")))
        _say(f"installed mongo-java-server {SERVER_VERSION} ({jars} jars) in {time.monotonic() - began:.1f} s")
    return engine


# -- processes -------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"  # zombie == dead
    except OSError:
        return False


def _terminate(pid: int, proc: Popen[str] | None = None, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (proc.poll() is None if proc else _alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None if proc else _alive(pid):
            os.kill(pid, signal.SIGKILL)
    if proc:
        proc.wait()


def _is(pid: int | None, name: bytes) -> bool:
    """False if pid now runs something else (a pid from a state file may have been reused)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    return bool(pid) and (not cmdline.exists() or name in cmdline.read_bytes())


def _tail(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    return f"end of {log_path}:\n" + "\n".join(lines[-20:])


def _readline(proc: Popen[str], deadline: float) -> str | None:
    """One line of the launcher's standard output, None if none came before the deadline (or it exited)."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if ready:
            line = proc.stdout.readline()
            return line.strip() if line else None
        if proc.poll() is not None:
            return None
    return None


def _ping(uri: str, port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    try:
        from pymongo import MongoClient
    except ImportError:
        return  # the TCP connect has to do
    with MongoClient(uri, directConnection=True, serverSelectionTimeoutMS=1000) as client:
        client.admin.command("ping")


@dataclass
class Server:
    uri: str
    pid: int | None = None  # the JVM; None: the external $MONGODB_URI server, never stopped by us (or paused)
    dir: Path | None = None
    engine: str = "external"  # what serves `uri`: ENGINE, or external
    _proc: Popen[str] | None = field(default=None, repr=False)
    _paused: bool = field(default=False, repr=False)

    @property
    def paused(self) -> bool:
        return self._paused

    def _command(self, word: str, timeout: float) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.poll() is not None:
            raise DevDBError("only a running server started by start_server() here can be paused or resumed")
        self._proc.stdin.write(word + "\n")
        self._proc.stdin.flush()
        answer = _readline(self._proc, time.monotonic() + timeout)
        if answer != word + "d":
            raise DevDBError(f"the server did not confirm '{word}' within {timeout:g}s (it said {answer!r})")

    def pause(self, timeout: float = 30.0) -> None:
        """A database outage: the server closes its listening socket and every client connection at once
        (operations on the wire are cut off mid-way, new connections are refused), keeping its data:
        `resume()` brings the same database back on the same port."""
        self._command("pause", timeout)
        self._paused = True

    def resume(self, timeout: float = 30.0) -> None:
        """Listen again on the same port, over the same data."""
        if not self._paused:
            raise DevDBError("resume() needs a server stopped by pause()")
        self._command("resume", timeout)
        self._paused = False

    def stop(self) -> None:
        """Stop the server and remove its temporary directory."""
        if self.pid and (self._proc or _is(self.pid, MAIN_CLASS.encode())):
            _terminate(self.pid, self._proc)
        if self.dir is not None and self.dir.name.startswith(TMP_PREFIX):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.pid = self.dir = self._proc = None
        self._paused = False


def start_server(timeout: float = 60.0, *, use_env: bool = True) -> Server:
    """Use $MONGODB_URI if set (unless use_env=False), else start a fresh server in a temporary directory; it
    runs until .stop(), even past our exit. timeout bounds the start."""
    if use_env and (uri := os.environ.get("MONGODB_URI")):
        return Server(uri=uri)
    if why := engine_missing():
        raise DevDBError(f"the test database cannot run here: {why}")
    engine, tmp = build(), Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    log_path = tmp / "server.log"
    cmd = ["java", *JVM_OPTIONS, f"-Djava.io.tmpdir={tmp}", "-cp", f"{engine / 'classes'}:{engine / 'lib'}/*",
           MAIN_CLASS, "0"]
    try:
        with log_path.open("ab") as log:  # own session: no Ctrl-C from the terminal, survives `start`
            proc = Popen(cmd, cwd=tmp, stdin=PIPE, stdout=PIPE, stderr=log, text=True, start_new_session=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        deadline = time.monotonic() + timeout
        port = _readline(proc, deadline)
        if not port or not port.isdigit():
            why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"it said {port!r}"
            raise DevDBError(f"the server did not start within {timeout:g}s ({why}); {_tail(log_path)}")
        uri, why = f"mongodb://127.0.0.1:{port}/", "no answer"
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                _ping(uri, int(port))
                return Server(uri, proc.pid, tmp, ENGINE, _proc=proc)
            except Exception as exc:
                why = (str(exc).splitlines() or [type(exc).__name__])[0]
            time.sleep(0.1)
        raise DevDBError(f"the server did not answer a ping within {timeout:g}s ({why}); {_tail(log_path)}")
    except BaseException:
        _terminate(proc.pid, proc, grace=5)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cmd_run(cmd: list[str]) -> int:
    cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
    if not cmd:
        raise DevDBError("usage: devdb.py run -- CMD ARGS...")
    child: Popen[bytes] | None = None
    exiting = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal exiting
        if child is not None and child.poll() is None:
            child.send_signal(signum)  # let CMD shut down; the server is stopped once it exits
        elif not exiting:  # abort startup; a further signal must not interrupt the cleanup
            exiting = True
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    server, rc = start_server(), 130
    try:
        child = Popen(cmd, env={**os.environ, "MONGODB_URI": server.uri})
        rc = child.wait()
    except FileNotFoundError:
        print(f"devdb: error: command not found: {cmd[0]}", file=sys.stderr)
        rc = 127
    except KeyboardInterrupt:
        pass  # CMD got the terminal's SIGINT too: give it a moment to finish
    finally:
        exiting = True
        if child is not None:
            try:
                child.wait(10)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                _terminate(child.pid, grace=5)
                child.wait()
            rc = child.returncode
        server.stop()
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run, start = sub.add_parser("run"), sub.add_parser("start")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    start.add_argument("--state-file", type=Path, required=True)
    sub.add_parser("stop").add_argument("--state-file", type=Path, required=True)
    sub.add_parser("uri")
    sub.add_parser("build")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.cmd)
        if args.command == "start":
            if args.state_file.exists():
                raise DevDBError(f"{args.state_file} exists: `stop --state-file` first (or delete it)")
            server = start_server()
            state = {"uri": server.uri, "pid": server.pid, "dir": str(server.dir) if server.dir else None}
            try:
                args.state_file.write_text(json.dumps(state) + "\n")
            except BaseException:
                server.stop()
                raise
            print(server.uri)
            return 0
        if args.command == "stop":
            st = json.loads(args.state_file.read_text())
            where = Path(st["dir"]) if st.get("dir") else None
            Server(st["uri"], st.get("pid"), where).stop()
            args.state_file.unlink()
            return 0
        if args.command == "build":
            if why := engine_missing():
                raise DevDBError(f"the test database cannot be installed here: {why}")
            print(build())
        elif uri := os.environ.get("MONGODB_URI"):
            print(uri)
        return 0 if args.command == "build" or uri else 1
    except (DevDBError, OSError, ValueError) as exc:
        print(f"devdb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
