#!/usr/bin/env python3
"""Throwaway MongoDB-compatible database for tests: FerretDB v1 with the SQLite backend.

Uses $MONGODB_URI as is when set, else builds FerretDB once into $COLLECTOR_CACHE_DIR/ferretdb-v1.24.2
(default ~/.cache/collector/...) by `go build` of the module source plus build/version/version.txt (`go
install` makes a binary that panics: the module lacks that file). Importable: start_server() -> Server.

  run -- CMD ARGS...    start, run CMD with MONGODB_URI set, stop; exit with CMD's code
  start --state-file F  start detached, write {uri, pid, dir} to F, print the URI
  stop --state-file F   stop that server, remove its temporary directory
  uri                   print $MONGODB_URI (exit 1 if unset)
  build                 build (or find the cached) ferretdb binary, print its path
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
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


def _terminate(pid: int, proc: Popen[bytes] | None = None, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (proc.poll() is None if proc else _alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None if proc else _alive(pid):
            os.kill(pid, signal.SIGKILL)
    if proc:
        proc.wait()


@dataclass
class Server:
    uri: str
    pid: int | None = None  # None: the external $MONGODB_URI server, never stopped by us (or paused)
    dir: Path | None = None
    _proc: Popen[bytes] | None = field(default=None, repr=False)
    _cmd: list[str] | None = field(default=None, repr=False)  # how to start it again (servers started here)

    @property
    def paused(self) -> bool:
        return self._cmd is not None and self.pid is None and self.dir is not None

    def pause(self, kill: bool = False) -> None:
        """Stop the server process (SIGTERM, or SIGKILL with kill=True), keeping its data directory and
        its port: `resume()` brings the same database back at the same URI (a database outage)."""
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
        cmdline = Path(f"/proc/{self.pid}/cmdline")  # a pid from a state file may have been reused
        if self.pid and (self._proc or not cmdline.exists() or b"ferretdb" in cmdline.read_bytes()):
            _terminate(self.pid, self._proc)
        if self.dir is not None and self.dir.name.startswith(TMP_PREFIX):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.pid = self.dir = self._proc = self._cmd = None


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
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise DevDBError(f"ferretdb did not start within {timeout:g}s ({why}); end of {log_path}:\n{tail}")
    except BaseException:
        _terminate(proc.pid, proc, grace=5)
        raise


def start_server(timeout: float = 30.0, *, use_env: bool = True) -> Server:
    """Use $MONGODB_URI if set (unless use_env=False), else start a fresh FerretDB; it runs until .stop(),
    even past our exit. A server started here can also be paused and resumed on the same port."""
    if use_env and (uri := os.environ.get("MONGODB_URI")):
        return Server(uri=uri)
    binary, tmp = build(), Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        cmd = [str(binary), "--handler=sqlite", f"--sqlite-url=file:{tmp}/", "--telemetry=disable"]
        cmd += [f"--listen-addr=127.0.0.1:{port}", "--debug-addr=-", f"--state-dir={tmp}"]
        uri = f"mongodb://127.0.0.1:{port}/"
        proc = _launch(cmd, tmp, uri, timeout)
        return Server(uri=uri, pid=proc.pid, dir=tmp, _proc=proc, _cmd=cmd)
    except BaseException:
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
                _terminate(child.pid, child, grace=5)
            rc = child.returncode
        server.stop()
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("start").add_argument("--state-file", type=Path, required=True)
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
            Server(st["uri"], st.get("pid"), Path(st["dir"]) if st.get("dir") else None).stop()
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
