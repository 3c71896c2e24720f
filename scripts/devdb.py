#!/usr/bin/env python3
"""Throwaway MongoDB-compatible database for tests and benchmarks: FerretDB v2.5.0 over PostgreSQL 15 with
the DocumentDB extension (0.106.0, FerretDB's fork). Atomicity (findAndModify, updates per document) and
secondary indexes come from PostgreSQL: the suite's probe (tests/integration/test_engine_guarantees.py)
proves both on every run.

Uses $MONGODB_URI as is when set. Otherwise, the first time (about 3 minutes on 2 cores, then cached):
  1. the Debian packages PostgreSQL 15 and DocumentDB need (apt-get, as root; DEB_PACKAGES below);
  2. libbson 1.28.0 (Debian 12's 1.23 is too old for DocumentDB), pgvector and DocumentDB built from the
     source archives in third_party/ (or $COLLECTOR_VENDOR_DIR) into $COLLECTOR_CACHE_DIR
     (default ~/.cache/collector), then installed into PostgreSQL 15's extension directories (root);
  3. FerretDB v2.5.0 built from its Go module with the Go toolchain its go.mod names (go1.24.6: its
     GOMAXPROCS code does not build with Go >= 1.25; the go command fetches that toolchain as a module).
Each start is a fresh cluster (initdb, `CREATE EXTENSION documentdb`) in a temporary directory, PostgreSQL
run as the `postgres` system user when we are root, and FerretDB on a free port of 127.0.0.1; stop()
removes it all. Importable: start_server() -> Server (pause()/resume() stop and restart FerretDB on the same
port: a database outage), engine_missing() says why the engine cannot run here (None if it can).

  run -- CMD ARGS...        start, run CMD with MONGODB_URI set, stop; exit with CMD's code
  start --state-file F      start detached, write {uri, pid, dir, pg_pid} to F, print the URI
  stop --state-file F       stop that server (and its PostgreSQL), remove its temporary directory
  uri                       print $MONGODB_URI (exit 1 if unset)
  build                     build (or find the cached) engine, print the ferretdb binary's path
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import filecmp
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT, Popen

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_MODULE, FERRETDB_VERSION = "github.com/FerretDB/FerretDB/v2", "v2.5.0"
GO_TOOLCHAIN = "go1.24.6"  # FerretDB v2.5.0's go.mod toolchain
PG_MAJOR = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
ARCHIVES = {  # the source archives in third_party/ (see its README)
    "libbson": "mongo-c-driver-1.28.0.tar.gz",
    "pgvector": "pgvector-0.8.6.tar.gz",
    "documentdb": "documentdb-0.106.0-ferretdb-2.5.0.tar.gz",
}
DEB_PACKAGES = (  # Debian 12: what PostgreSQL 15 + DocumentDB need to build and run
    f"postgresql-{PG_MAJOR}", f"postgresql-server-dev-{PG_MAJOR}", f"postgresql-{PG_MAJOR}-cron",
    f"postgresql-{PG_MAJOR}-rum", f"postgresql-{PG_MAJOR}-postgis-3", "libpcre2-dev", "libintelrdfpmath-dev",
    "libkrb5-dev",  # gssapi.h: PostgreSQL's libpq-be.h includes it
    "systemtap-sdt-dev",  # sys/sdt.h: PostgreSQL's probes.h includes it (DocumentDB's RUM fork)
    "cmake", "make", "gcc", "pkg-config",
)
RECIPE = "4"  # bump when the build steps below change: the cache key includes it
TMP_PREFIX = "collector-devdb-"
PG_SETTINGS = (
    "listen_addresses=127.0.0.1",
    "fsync=off", "synchronous_commit=off", "full_page_writes=off",  # throwaway data: durability off
    "max_connections=300", "shared_buffers=256MB",
    "shared_preload_libraries=pg_cron,pg_documentdb_core,pg_documentdb",
    "cron.database_name=postgres",
    # DocumentDB schedules its index-build job every 2 s by default; Debian 12's pg_cron (1.4) only takes
    # minute schedules. Index builds of createIndexes on a small or new collection do not wait for it.
    "documentdb.indexBuildScheduleInSec=60",
    # the index access method from DocumentDB's own RUM fork, built here with it: with Debian 12's rum 1.3.13
    # (DocumentDB 0.106 pins 1.3.14) concurrent inserts into a collection with a unique index crash the backend
    "documentdb.rum_library_load_option=require_documentdb_extended_rum",
    # the composite index operator class (DocumentDB's newer one, off by default in 0.106): measured here with 16
    # writers, inserts into the items collection with its indexes went from 5,200 to 12,000 documents/s
    "documentdb.enableNewCompositeIndexOpClass=on", "documentdb.defaultUseCompositeOpClass=on",
    "documentdb.enableCompositeUniqueIndex=on", "documentdb.enableIndexOrderbyPushdown=on",
)
FERRETDB_PG_POOL = 100  # FerretDB's connections to PostgreSQL (its default: 50)


class DevDBError(RuntimeError):
    """A failure with a one-line, human-readable reason."""


# -- building ------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("COLLECTOR_CACHE_DIR") or Path.home() / ".cache" / "collector").expanduser()


def _vendor_dir() -> Path:
    return Path(os.environ.get("COLLECTOR_VENDOR_DIR") or ROOT / "third_party")


def _archives() -> dict[str, Path]:
    vendor = _vendor_dir()
    paths = {name: vendor / archive for name, archive in ARCHIVES.items()}
    if missing := [p.name for p in paths.values() if not p.is_file()]:
        raise DevDBError(f"source archives not found in {vendor}: {', '.join(missing)} "
                         "(set COLLECTOR_VENDOR_DIR to the folder that holds them)")
    return paths


def _engine_dir() -> Path:
    """The cache folder of this engine build: keyed by the archives' contents and the recipe."""
    digest = hashlib.sha256(RECIPE.encode())
    for path in sorted(_archives().values()):
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return _cache_root() / f"engine-ferretdb-{FERRETDB_VERSION}-pg{PG_MAJOR}-{digest.hexdigest()[:12]}"


def _missing_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return list(DEB_PACKAGES)
    res = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *DEB_PACKAGES],
                         stdout=PIPE, stderr=DEVNULL, text=True)
    installed = {line.split()[0] for line in res.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in DEB_PACKAGES if p not in installed]


def engine_missing() -> str | None:
    """None if the engine can be built (or is built) and run here, else a one-line reason why not."""
    try:
        _archives()
    except DevDBError as exc:
        return str(exc)
    if os.geteuid() != 0:
        if missing := _missing_packages():
            return f"Debian packages missing (install them as root: apt-get install {' '.join(missing)})"
        if not (_engine_dir() / ".installed").exists() and not os.access(PG_BIN.parent / "lib", os.W_OK):
            return f"the DocumentDB extension must be installed into {PG_BIN.parent} once, as root"
    elif not shutil.which("runuser"):
        return "running as root (PostgreSQL refuses to) and 'runuser' is not on PATH to run it as 'postgres'"
    if not shutil.which("go") and not (_engine_dir() / "ferretdb").exists():
        return "'go' not found on PATH: install Go to build FerretDB, or set MONGODB_URI"
    return None


def _run(cmd: list[str], log: Path, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        res = subprocess.run(cmd, cwd=cwd, env=env, stdin=DEVNULL, stdout=PIPE, stderr=out, text=True)
        out.write(res.stdout)
    if res.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DevDBError(f"{what} failed (exit code {res.returncode}): {tail[0].strip()[:300]} (log: {log})")
    return res.stdout


def _install_packages(log: Path) -> None:
    if not (missing := _missing_packages()):
        return
    if os.geteuid() != 0:
        raise DevDBError(f"Debian packages missing: run as root `apt-get install {' '.join(missing)}`")
    print(f"devdb: installing Debian packages: {' '.join(missing)} ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], log, "apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], log, "apt-get install", env=env)


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
        top = tar.getnames()[0].split("/")[0]
    return into / top


def _build_extensions(engine: Path, log: Path) -> None:
    """libbson (static, into engine/libbson), then pgvector and DocumentDB staged into engine/stage."""
    archives, stage, jobs = _archives(), engine / "stage", str(os.cpu_count() or 2)
    pg_config = str(PG_BIN / "pg_config")
    with tempfile.TemporaryDirectory(prefix="collector-engine-build-") as tmp:
        src = _unpack(archives["libbson"], Path(tmp))
        _run(["cmake", "-S", str(src), "-B", str(src / "_build"), "-DENABLE_MONGOC=OFF", "-DENABLE_TESTS=OFF",
              "-DENABLE_EXAMPLES=OFF", "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_FLAGS=-fPIC",
              f"-DCMAKE_INSTALL_PREFIX={engine / 'libbson'}", "-DCMAKE_INSTALL_LIBDIR=lib"], log, "libbson cmake")
        _run(["cmake", "--build", str(src / "_build"), "--target", "install", "-j", jobs], log, "libbson build")
        pkgconfig = engine / "pkgconfig"
        pkgconfig.mkdir(exist_ok=True)
        # Debian's libintelrdfpmath-dev has no .pc file; DocumentDB asks pkg-config for `intelmathlib`. Its
        # own script builds the library with CALL_BY_REF=0 GLOBAL_RND=0 GLOBAL_FLAGS=0: Debian's libbidgcc000
        (pkgconfig / "intelmathlib.pc").write_text(
            "libdir=/usr/lib/x86_64-linux-gnu\nincludedir=/usr/include\n\nName: intelmathlib\n"
            "Description: Intel Decimal Floating-Point Math Library (Debian)\nVersion: 2.0\n"
            "Cflags: -I${includedir}\nLibs: -L${libdir} -lbidgcc000\n")
        env = {**os.environ, "PG_CONFIG": pg_config,
               "PKG_CONFIG_PATH": f"{engine / 'libbson' / 'lib' / 'pkgconfig'}:{pkgconfig}"}
        make = ["make", f"PG_CONFIG={pg_config}", "with_llvm=no"]  # no LLVM bitcode: half the build time
        src = _unpack(archives["pgvector"], Path(tmp))
        _run([*make, "-j", jobs], log, "pgvector build", cwd=src, env=env)
        _run([*make, "install", f"DESTDIR={stage}"], log, "pgvector install", cwd=src, env=env)
        src = _unpack(archives["documentdb"], Path(tmp))
        for part in ("pg_documentdb_core", "pg_documentdb", "internal/pg_documentdb_extended_rum"):
            _run([*make, "-j", jobs, "-C", part], log, f"{part} build", cwd=src, env=env)
            _run([*make, "-C", part, "install", f"DESTDIR={stage}"], log, f"{part} install", cwd=src, env=env)


def _staged(engine: Path) -> list[tuple[Path, Path]]:
    stage = engine / "stage"
    return [(p, Path("/") / p.relative_to(stage)) for p in sorted(stage.rglob("*")) if p.is_file()]


def _install_extensions(engine: Path) -> None:
    """Copy the staged extension files into PostgreSQL's directories where they are missing or differ."""
    todo = [(src, dst) for src, dst in _staged(engine) if not dst.exists() or not filecmp.cmp(src, dst, False)]
    if not todo:
        return
    for src, dst in todo:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)  # a running postgres keeps the old file open; new backends load the new one
        except OSError as exc:
            raise DevDBError(f"cannot install {dst} (the DocumentDB extension goes into PostgreSQL's own "
                             f"directories: run once as root): {exc}") from exc


def _go_build(binary: Path, log: Path) -> None:
    if (go_bin := shutil.which("go")) is None:
        raise DevDBError("'go' not found on PATH: install Go to build FerretDB, or set MONGODB_URI")
    env = {**os.environ, "GOWORK": "off", "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": GO_TOOLCHAIN}
    with tempfile.TemporaryDirectory(prefix="ferretdb-build-") as tmp:
        module = f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"
        info = json.loads(_run([go_bin, "mod", "download", "-json", module], log, "go mod download", cwd=Path(tmp),
                               env=env))
        shutil.copytree(info["Dir"], src := Path(tmp, "src"))
        for root, _dirs, _files in os.walk(src):  # the module cache is read-only
            os.chmod(root, 0o755)
        (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")  # `go generate` makes it
        partial = binary.with_name(f".ferretdb.{os.getpid()}.tmp")
        _run([go_bin, "build", "-buildvcs=false", "-o", str(partial), "./cmd/ferretdb"], log, "go build FerretDB",
             cwd=src, env=env)
        os.replace(partial, binary)  # atomic: a half-written binary is never visible


def _works(binary: Path) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        return out.returncode == 0 and f"version: {FERRETDB_VERSION}" in out.stdout
    return False


def build() -> Path:
    """Install, build and cache the engine if needed; return the path of its ferretdb binary."""
    engine = _engine_dir()
    binary, done = engine / "ferretdb", engine / ".built"
    if done.exists() and _works(binary) and not _missing_packages():
        _install_extensions(engine)  # cheap when already there (a new machine with this cache: copies them)
        return binary
    engine.mkdir(parents=True, exist_ok=True)
    with (engine / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, e.g. for parallel test runs
        log = engine / "build.log"
        if not done.exists() or not _works(binary) or _missing_packages():
            print(f"devdb: building FerretDB {FERRETDB_VERSION} + DocumentDB into {engine} (a few minutes, once; "
                  f"log: {log}) ...", file=sys.stderr)
            _install_packages(log)
            if not done.exists():
                shutil.rmtree(engine / "stage", ignore_errors=True)
                _build_extensions(engine, log)
            if not _works(binary):
                _go_build(binary, log)
            done.write_text(f"{FERRETDB_VERSION}\n")
        _install_extensions(engine)
        (engine / ".installed").touch()
    return binary


# -- processes -------------------------------------------------------------------------------------------


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
    pg_pid: int | None = None  # the postmaster
    engine: str = "external"  # what serves `uri`: "FerretDB v2.5.0 + DocumentDB on PostgreSQL 15", or external
    _proc: Popen[bytes] | None = field(default=None, repr=False)
    _cmd: list[str] | None = field(default=None, repr=False)  # how to start ferretdb again
    _pg_proc: Popen[bytes] | None = field(default=None, repr=False)  # postgres (or runuser) child of ours

    @property
    def paused(self) -> bool:
        return self._cmd is not None and self.pid is None and self.dir is not None

    def pause(self, kill: bool = False) -> None:
        """Stop FerretDB (SIGTERM, or SIGKILL with kill=True), keeping PostgreSQL and the port: `resume()`
        brings the same database back at the same URI (a database outage, as a client sees it)."""
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
        """Start the paused FerretDB again on the same port over the same PostgreSQL."""
        if not self.paused:
            raise DevDBError("resume() needs a server stopped by pause()")
        assert self._cmd is not None and self.dir is not None
        self._proc = _launch(self._cmd, self.dir, self.uri, timeout)
        self.pid = self._proc.pid

    def stop(self) -> None:
        """Stop FerretDB, then PostgreSQL (fast shutdown), and remove the temporary directory."""
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


def _as_postgres(cmd: list[str]) -> list[str]:
    """cmd, run as the `postgres` system user if we are root: PostgreSQL refuses to run as root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _psql(port: int, sql: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                           "-U", "postgres", "-d", "postgres", "-c", sql],
                          stdin=DEVNULL, capture_output=True, text=True, timeout=timeout)


def _postmaster(data: Path, proc: Popen[bytes]) -> int:
    """The postmaster's pid: proc's own, or under runuser that of its child (postmaster.pid, once written)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().split()[0])
    return proc.pid


def _start_postgres(tmp: Path, timeout: float) -> tuple[Popen[bytes], int, int]:
    """initdb a cluster in tmp/pg, start postgres on 127.0.0.1 (socket dir tmp/pg-run) on a free port and create
    the DocumentDB extension. Return (our child: postgres or runuser, the postmaster's pid, port)."""
    deadline, data, run = time.monotonic() + timeout, tmp / "pg", tmp / "pg-run"
    for d in (data, run):
        d.mkdir(mode=0o700)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        tmp.chmod(0o711)  # the postgres user may pass through to its own directories, not list ours
        for d in (data, run):
            os.chown(d, user.pw_uid, user.pw_gid)
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
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
    cmd = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(run)]
    cmd += [arg for setting in PG_SETTINGS for arg in ("-c", setting)]
    with log_path.open("ab") as log:  # own session, as for ferretdb
        proc = Popen(_as_postgres(cmd), cwd=data, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True)
    try:
        why = "not accepting connections"
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                res = _psql(port, "select 1", 5)
                if res.returncode == 0:
                    break
                why = (res.stderr.strip().splitlines() or [why])[-1]
            time.sleep(0.1)
        else:
            why = f"exited with code {proc.returncode}" if proc.poll() is not None else why
            raise DevDBError(f"postgres did not start within {timeout:g}s ({why}); {_tail(log_path)}")
        res = _psql(port, "CREATE EXTENSION IF NOT EXISTS documentdb CASCADE", max(5.0, deadline - time.monotonic()))
        if res.returncode:
            error = [line for line in res.stderr.splitlines() if "ERROR" in line][:1] or [res.stderr.strip()[-300:]]
            raise DevDBError(f"CREATE EXTENSION documentdb failed: {error[0]}; {_tail(log_path)}")
        return proc, _postmaster(data, proc), port
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


ENGINE = f"FerretDB {FERRETDB_VERSION} + DocumentDB 0.106.0 on PostgreSQL {PG_MAJOR}"


def start_server(timeout: float = 60.0, *, use_env: bool = True) -> Server:
    """Use $MONGODB_URI if set (unless use_env=False), else start a fresh engine in a temporary directory; it
    runs until .stop(), even past our exit. timeout bounds each startup step."""
    if use_env and (uri := os.environ.get("MONGODB_URI")):
        return Server(uri=uri)
    if why := engine_missing():
        raise DevDBError(f"the test database cannot run here: {why}")
    binary, tmp = build(), Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    pg_proc = pg_pid = None
    try:
        pg_proc, pg_pid, pg_port = _start_postgres(tmp, timeout)
        pg_url = f"postgres://postgres@127.0.0.1:{pg_port}/postgres?pool_max_conns={FERRETDB_PG_POOL}"
        port = _free_port()
        cmd = [str(binary), f"--postgresql-url={pg_url}", f"--listen-addr=127.0.0.1:{port}", "--no-auth",
               "--telemetry=disable", "--debug-addr=-", f"--state-dir={tmp}", "--log-level=WARN"]
        uri = f"mongodb://127.0.0.1:{port}/"
        proc = _launch(cmd, tmp, uri, timeout)
        return Server(uri, proc.pid, tmp, pg_pid, ENGINE, _proc=proc, _cmd=cmd, _pg_proc=pg_proc)
    except BaseException:
        if pg_pid:
            _terminate(pg_pid, pg_proc, grace=5, sig=signal.SIGINT)
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
            state = {"uri": server.uri, "pid": server.pid, "dir": str(server.dir) if server.dir else None,
                     "pg_pid": server.pg_pid}
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
            Server(st["uri"], st.get("pid"), where, st.get("pg_pid")).stop()
            args.state_file.unlink()
            return 0
        if args.command == "build":
            if why := engine_missing():
                raise DevDBError(f"the test database cannot be built here: {why}")
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
