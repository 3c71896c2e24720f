#!/usr/bin/env python3
"""Throwaway MongoDB-compatible database for tests: FerretDB v1 with the SQLite backend (default), or
over a throwaway PostgreSQL cluster (--backend postgresql: much faster point updates, for benchmarks).

Uses $MONGODB_URI as is when set, else builds FerretDB once into $COLLECTOR_CACHE_DIR/ferretdb-v1.24.2
(default ~/.cache/collector/...) by `go build` of the module source plus build/version/version.txt (`go
install` makes a binary that panics: the module lacks that file). Importable: start_server() -> Server;
postgres_missing() says why the postgresql backend cannot run here (None if it can). The PostgreSQL
server binaries come from PATH or the highest /usr/lib/postgresql/*/bin; as root, PostgreSQL runs as the
`postgres` system user (via runuser).

  run [--backend B] -- CMD ARGS...    start, run CMD with MONGODB_URI set, stop; exit with CMD's code
  start [--backend B] --state-file F  start detached, write {uri, pid, dir, backend, pg_pid} to F, print URI
  stop --state-file F                 stop that server (and its PostgreSQL), remove its temporary directory
  uri                                 print $MONGODB_URI (exit 1 if unset)
  build                               build (or find the cached) ferretdb binary, print its path
B: sqlite (default) or postgresql.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT, Popen

VERSION = "v1.24.2"
TMP_PREFIX = "collector-devdb-"
BACKENDS = ("sqlite", "postgresql")
PG_MAX_CONNECTIONS = 1000  # FerretDB holds a connection per update statement in flight: hangs when they run out
PG_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off",  # throwaway data: durability off
               f"max_connections={PG_MAX_CONNECTIONS}", "shared_buffers=256MB")
# FerretDB v1 holds one pooled connection per statement of an update command until the command ends and
# waits for a free one without a deadline: statements in flight beyond its pool (default 50) hang it for good
FERRETDB_PG_POOL = PG_MAX_CONNECTIONS - 10  # some left for psql


class DevDBError(RuntimeError):
    """A failure with a one-line, human-readable reason."""


def _works(binary: Path) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        return out.returncode == 0 and f"version: {VERSION}" in out.stdout
    return False


def _go_build(binary: Path) -> None:
    if (go_bin := shutil.which("go")) is None:
        raise DevDBError("'go' not found on PATH: install Go to build FerretDB, or set MONGODB_URI")
    log_path, env = binary.parent / "build.log", {**os.environ, "GOWORK": "off", "GOFLAGS": "-mod=readonly"}
    with tempfile.TemporaryDirectory(prefix="ferretdb-build-") as tmp, log_path.open("w") as log:

        def go(*args: str, cwd: str | Path = tmp) -> str:
            res = subprocess.run([go_bin, *args], cwd=cwd, env=env, stdout=PIPE, stderr=log, text=True)
            if res.returncode:
                out = " ".join(res.stdout.split())[-300:] or "no output"  # `go mod download -json` errors
                last = (log_path.read_text(errors="replace").strip().splitlines() or [out])[-1]
                raise DevDBError(f"FerretDB build failed (go {args[0]}): {last.strip()} (log: {log_path})")
            return res.stdout

        info = json.loads(go("mod", "download", "-json", f"github.com/FerretDB/FerretDB@{VERSION}"))
        shutil.copytree(info["Dir"], src := Path(tmp, "src"))
        for root, _dirs, _files in os.walk(src):  # the module cache is read-only
            os.chmod(root, 0o755)
        (src / "build" / "version" / "version.txt").write_text(VERSION + "\n")
        partial = binary.with_name(f".ferretdb.{os.getpid()}.tmp")
        go("build", "-buildvcs=false", "-o", str(partial), "./cmd/ferretdb", cwd=src)
        os.replace(partial, binary)  # atomic: a half-written binary is never visible


def build() -> Path:
    """Return the path of a working ferretdb binary, building it first if needed."""
    cache = os.environ.get("COLLECTOR_CACHE_DIR") or Path.home() / ".cache" / "collector"
    binary = Path(cache).expanduser() / f"ferretdb-{VERSION}" / "ferretdb"
    if _works(binary):
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (binary.parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, e.g. for parallel test workers
        pgrep = ["pgrep", "-f", f"^(\\S*/)?go (install|build) .*ferretdb@{VERSION}"]
        for _ in range(1800):  # a build started by hand (e.g. `go install`): wait up to 30 min for it
            if not shutil.which("pgrep") or subprocess.run(pgrep, stdout=DEVNULL).returncode:
                break
            time.sleep(1)
        if not _works(binary):
            print(f"devdb: building FerretDB {VERSION} into {binary.parent} ...", file=sys.stderr)
            _go_build(binary)
    return binary


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"  # zombie == dead
    except OSError:
        return False


def _terminate(pid: int, proc: Popen[bytes] | None = None, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
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


@dataclass
class Server:
    uri: str
    pid: int | None = None  # ferretdb; None: the external $MONGODB_URI server, never stopped by us (or paused)
    dir: Path | None = None
    backend: str = "sqlite"  # "sqlite", "postgresql" or "external" ($MONGODB_URI)
    pg_pid: int | None = None  # the postmaster of the postgresql backend
    _proc: Popen[bytes] | None = field(default=None, repr=False)
    _cmd: list[str] | None = field(default=None, repr=False)  # how to start it again (servers started here)
    _pg_proc: Popen[bytes] | None = field(default=None, repr=False)  # postgres (or runuser) child of ours

    @property
    def paused(self) -> bool:
        return self._cmd is not None and self.pid is None and self.dir is not None

    def pause(self, kill: bool = False) -> None:
        """Stop the server process (SIGTERM, or SIGKILL with kill=True), keeping its data directory and
        its port: `resume()` brings the same database back at the same URI (a database outage). Only
        FerretDB is paused: the PostgreSQL of the postgresql backend keeps running."""
        if self._cmd is None or self.dir is None:
            raise DevDBError("only a server started by start_server() here can be paused")
        if self.pid:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                if self._proc:
                    self._proc.wait()
            else:
                _terminate(self.pid, self._proc)
        self.pid = self._proc = None

    def resume(self, timeout: float = 30.0) -> None:
        """Start the paused server again on the same port with the same data."""
        if not self.paused:
            raise DevDBError("resume() needs a server stopped by pause()")
        assert self._cmd is not None and self.dir is not None
        self._proc = _launch(self._cmd, self.dir, self.uri, timeout)
        self.pid = self._proc.pid

    def stop(self) -> None:
        """Stop FerretDB, then its PostgreSQL (fast shutdown), and remove the temporary directory."""
        if self.pid and (self._proc or _is(self.pid, b"ferretdb")):
            _terminate(self.pid, self._proc)
        if self.pg_pid and (self._pg_proc or _is(self.pg_pid, b"postgres")):
            _terminate(self.pg_pid, self._pg_proc, sig=signal.SIGINT)  # SIGTERM (smart shutdown) is slow
        if self.dir is not None and self.dir.name.startswith(TMP_PREFIX):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.pid = self.dir = self._proc = self._cmd = self.pg_pid = self._pg_proc = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log_path: Path) -> str:
    return f"end of {log_path}:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])


def _pg_bindir() -> Path | None:
    """The directory holding initdb and postgres: that of initdb on PATH, else the highest version's."""

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) if x.isdigit() else -1 for x in d.parent.name.split("."))

    dirs = [Path(p).parent for p in [shutil.which("initdb")] if p]
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    return next((d for d in dirs if all(os.access(d / n, os.X_OK) for n in ("initdb", "postgres"))), None)


def _pg_tool(bindir: Path, name: str) -> str | None:
    return str(bindir / name) if os.access(bindir / name, os.X_OK) else shutil.which(name)


def postgres_missing() -> str | None:
    """None if the postgresql backend can run here, else a one-line reason why not."""
    if _pg_bindir() is None:
        return "PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root (PostgreSQL refuses to) and there is no 'postgres' system user to run it as"
        if not shutil.which("runuser"):
            return "running as root (PostgreSQL refuses to) and 'runuser' is not on PATH to run it as 'postgres'"
    return None


def _as_postgres(cmd: list[str]) -> list[str]:
    """cmd, run as the `postgres` system user if we are root: PostgreSQL refuses to run as root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _pg_ready(bindir: Path, port: int) -> bool:
    where = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        if isready := _pg_tool(bindir, "pg_isready"):
            return subprocess.run([isready, "-q", "-t", "1", *where], stdin=DEVNULL, timeout=5).returncode == 0
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        psql = _pg_tool(bindir, "psql")
        return not psql or not subprocess.run([psql, "-XAtq", "-c", "select 1", *where], stdin=DEVNULL,
                                              stdout=DEVNULL, stderr=DEVNULL, timeout=5).returncode
    return False


def _postmaster(data: Path, proc: Popen[bytes]) -> int:
    """The postmaster's pid: proc's own, or under runuser that of its child (postmaster.pid, once written)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().split()[0])
    return proc.pid


def _start_postgres(tmp: Path, timeout: float) -> tuple[Popen[bytes], int, int]:
    """initdb a cluster in tmp/pg and start postgres on 127.0.0.1 (socket dir tmp/pg-run) on a free port; wait
    until it accepts connections. Return (our child: postgres or runuser, the postmaster's pid, port)."""
    bindir = _pg_bindir()
    assert bindir is not None  # start_server() checked postgres_missing()
    deadline, data, run = time.monotonic() + timeout, tmp / "pg", tmp / "pg-run"
    for d in (data, run):
        d.mkdir(mode=0o700)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        tmp.chmod(0o711)  # the postgres user may pass through to its own directories, not list ours
        for d in (data, run):
            os.chown(d, user.pw_uid, user.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
              "--locale=C"]  # C: any encoding goes with it, whatever $LANG says
    with (tmp / "initdb.log").open("wb") as log:
        try:
            res = subprocess.run(_as_postgres(initdb), cwd=data, stdin=DEVNULL, stdout=log, stderr=STDOUT,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DevDBError(f"initdb took over {timeout:g}s; {_tail(tmp / 'initdb.log')}") from None
    if res.returncode:
        raise DevDBError(f"initdb failed (exit code {res.returncode}); {_tail(tmp / 'initdb.log')}")
    port, log_path = _free_port(), tmp / "postgres.log"
    cmd = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(run)]
    cmd += [arg for setting in ("listen_addresses=127.0.0.1", *PG_SETTINGS) for arg in ("-c", setting)]
    with log_path.open("ab") as log:  # own session, as for ferretdb
        proc = Popen(_as_postgres(cmd), cwd=data, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _pg_ready(bindir, port):
                return proc, _postmaster(data, proc), port
            time.sleep(0.1)
        why = f"exited with code {proc.returncode}" if proc.poll() is not None else "not accepting connections"
        raise DevDBError(f"postgres did not start within {timeout:g}s ({why}); {_tail(log_path)}")
    except BaseException:
        _terminate(_postmaster(data, proc), proc, grace=5, sig=signal.SIGINT)
        raise


def _ping(uri: str, port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    try:
        from pymongo import MongoClient
    except ImportError:
        return  # the TCP connect has to do
    with MongoClient(uri, directConnection=True, serverSelectionTimeoutMS=1000) as client:
        client.admin.command("ping")


def _launch(cmd: list[str], tmp: Path, uri: str, timeout: float) -> Popen[bytes]:
    """Start ferretdb and wait until it answers a ping; on failure it is stopped and DevDBError raised."""
    port = int(uri.rstrip("/").rsplit(":", 1)[1])
    log_path = tmp / "ferretdb.log"
    with log_path.open("ab") as log:  # own session: no Ctrl-C from the terminal, survives `start`
        proc = Popen(cmd, cwd=tmp, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True)
    try:
        deadline, why = time.monotonic() + timeout, "no answer"
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                _ping(uri, port)
                return proc
            except Exception as exc:
                why = (str(exc).splitlines() or [type(exc).__name__])[0]
            time.sleep(0.1)
        why = f"exited with code {proc.returncode}" if proc.poll() is not None else why
        raise DevDBError(f"ferretdb did not start within {timeout:g}s ({why}); {_tail(log_path)}")
    except BaseException:
        _terminate(proc.pid, proc, grace=5)
        raise


def start_server(timeout: float = 30.0, *, use_env: bool = True, backend: str = "sqlite") -> Server:
    """Use $MONGODB_URI if set (unless use_env=False), else start a fresh FerretDB over `backend` ("sqlite",
    or "postgresql": a throwaway cluster of its own, see postgres_missing()); it runs until .stop(), even past
    our exit. timeout bounds each startup. A server started here can also be paused and resumed on the same port."""
    if use_env and (uri := os.environ.get("MONGODB_URI")):
        return Server(uri=uri, backend="external")
    if backend not in BACKENDS:
        raise DevDBError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "postgresql" and (why := postgres_missing()):
        raise DevDBError(f"the postgresql backend cannot run here: {why}")
    binary, tmp = build(), Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    pg_proc = pg_pid = None
    try:
        if backend == "postgresql":
            pg_proc, pg_pid, pg_port = _start_postgres(tmp, timeout)  # the `postgres` database is all it needs
            pg_url = f"postgres://postgres@127.0.0.1:{pg_port}/postgres?pool_max_conns={FERRETDB_PG_POOL}"
            cmd = [str(binary), "--handler=postgresql", f"--postgresql-url={pg_url}"]
        else:
            cmd = [str(binary), "--handler=sqlite", f"--sqlite-url=file:{tmp}/"]
        port = _free_port()
        cmd += ["--telemetry=disable", f"--listen-addr=127.0.0.1:{port}", "--debug-addr=-", f"--state-dir={tmp}"]
        uri = f"mongodb://127.0.0.1:{port}/"
        proc = _launch(cmd, tmp, uri, timeout)
        return Server(uri, proc.pid, tmp, backend, pg_pid, _proc=proc, _cmd=cmd, _pg_proc=pg_proc)
    except BaseException:
        if pg_pid:
            _terminate(pg_pid, pg_proc, grace=5, sig=signal.SIGINT)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cmd_run(cmd: list[str], backend: str = "sqlite") -> int:
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
    server, rc = start_server(backend=backend), 130
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
                _terminate(child.pid, child, grace=5)
            rc = child.returncode
        server.stop()
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run, start = sub.add_parser("run"), sub.add_parser("start")
    for p in (run, start):
        p.add_argument("--backend", choices=BACKENDS, default="sqlite", help="what FerretDB stores into")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    start.add_argument("--state-file", type=Path, required=True)
    sub.add_parser("stop").add_argument("--state-file", type=Path, required=True)
    sub.add_parser("uri")
    sub.add_parser("build")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.cmd, args.backend)
        if args.command == "start":
            if args.state_file.exists():
                raise DevDBError(f"{args.state_file} exists: `stop --state-file` first (or delete it)")
            server = start_server(backend=args.backend)
            state = {"uri": server.uri, "pid": server.pid, "dir": str(server.dir) if server.dir else None,
                     "backend": server.backend, "pg_pid": server.pg_pid}
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
            Server(st["uri"], st.get("pid"), where, st.get("backend", "sqlite"), st.get("pg_pid")).stop()
            args.state_file.unlink()
            return 0
        if args.command == "build":
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
