"""Shared fixtures: settings, a controllable clock, databases (mongomock-motor and the wire server),
the API replies Likeastore recorded (read-only, from ../shared/fixtures/likeastore beside the clone)."""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from collector import config

ROOT = Path(__file__).resolve().parent.parent
# Replies recorded by another project (Likeastore) are not the project's: they stay out of the repository and are
# read, never written, where the workplace keeps them beside the clone (COLLECTOR_FIXTURES: another copy).
RECORDED_HOME = ROOT.parent / "shared" / "fixtures" / "likeastore"
FIXTURES = Path(os.environ.get("COLLECTOR_FIXTURES", RECORDED_HOME))


from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property tests are reproducible by default (CI, the README's test command): derandomized, the same examples
# every run. HYPOTHESIS_PROFILE=explore explores instead: new random examples each run, ten times as many
# where a test does not fix its own count (a failure prints its seed: --hypothesis-seed=N replays it).
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False, max_examples=1000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

from collector.demo import mongomock_compat  # noqa: E402

mongomock_compat()  # mongomock's bulk builder predates PyMongo 4.9 (test-only shim, also used by the demo)


def _one_default_tls_context() -> None:
    """Every httpx client built with the default verification loads the CA bundle again (~20 ms of CPU), and the
    local tests build hundreds (an engine each) to speak plain HTTP to loopback or respx. The default context is
    built once per test process and shared, as an SSLContext may be; any other `verify` is built as asked."""
    import functools

    from httpx._transports import default

    build = getattr(default, "create_ssl_context", None)
    if build is None or getattr(build, "_collector_shared", False):
        return

    @functools.cache  # keyed by what httpx reads from the environment for the default context
    def shared(trust_env: bool, cafile: str | None, capath: str | None) -> Any:
        return build(verify=True, cert=None, trust_env=trust_env)

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None:
            return shared(trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        return build(verify=verify, cert=cert, trust_env=trust_env)

    create_ssl_context._collector_shared = True  # type: ignore[attr-defined]
    default.create_ssl_context = create_ssl_context


_one_default_tls_context()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


_SETTINGS: dict[str, config.Settings] = {}


def make_settings(**over: Any) -> config.Settings:
    """Test settings: the package's defaults and its test environment (collector/defaults.test.toml), then `over`.
    Loaded once per distinct `over` in a test process (a load reads and checks the TOML files: ~20 ms, and the local
    tests ask for settings hundreds of times); each caller gets its own copy."""
    key = json.dumps(over, sort_keys=True, default=repr)
    if key not in _SETTINGS:
        _SETTINGS[key] = config.load(environment="test", overrides=over, environ={})
    return copy.deepcopy(_SETTINGS[key])


@pytest.fixture
def settings() -> config.Settings:
    return make_settings(services={"github": {"base_url": "https://api.github.test"},
                                   "stackoverflow": {"base_url": "https://api.stackexchange.test/2.3"}})


@pytest.fixture
def api():
    """respx for a connector test: every route declared must be called."""
    import respx

    with respx.mock(assert_all_called=True) as mock:
        yield mock


@pytest.fixture
def mock_db():
    from mongomock_motor import AsyncMongoMockClient

    return AsyncMongoMockClient(tz_aware=True)["collector_test"]


@pytest.fixture(scope="module")
def sandbox_server(request):
    """The sandbox API over real HTTP on 127.0.0.1 (tests.harness.sandbox_api), one per test module: tests tell
    their users apart by token. Its page cap is the module's SANDBOX_PAGE_CAP, else 3 (a few items, many pages)."""
    from tests.harness import sandbox_api

    with sandbox_api(page_cap=getattr(request.module, "SANDBOX_PAGE_CAP", 3)) as server:
        yield server


@pytest.fixture
def sandbox():
    """A sandbox API of the test's own (tests.harness.sandbox_api), 2 items a page: for tests whose counters cover
    the whole sandbox, such as daemon processes sharing it."""
    from tests.harness import sandbox_api

    with sandbox_api(page_cap=2) as server:
        yield server


# -- recorded API replies ----------------------------------------------------------------------
# A test that reads them carries the `recorded` marker: where they are absent it is skipped before its fixtures are
# set up, with the reason; with COLLECTOR_REQUIRE_FIXTURES=1 (.ci/run) their absence fails it instead.


def require_recorded() -> Path:
    """FIXTURES when the recorded replies are there; else skip the test (or module) saying why, or fail it."""
    if FIXTURES.is_dir():
        return FIXTURES
    reason = f"recorded replies not found at {FIXTURES}: ../shared/fixtures/likeastore beside the clone"
    if os.environ.get("COLLECTOR_REQUIRE_FIXTURES") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("recorded"):
        require_recorded()


def fixture_json(name: str) -> Any:
    return json.loads((require_recorded() / name).read_bytes())


def stackexchange_recording(name: str) -> dict[str, Any]:
    """A recorded Stack Overflow reply as it was recorded (gzip'd, Latin-1, API 1.x: see stackexchange_page)."""
    return json.loads(gzip.decompress((require_recorded() / name).read_bytes()).decode("latin-1"))


def stackexchange_page(name: str, has_more: bool | None = None, quota_remaining: int = 9_990,
                       backoff: int | None = None) -> bytes:
    """A recorded Stack Overflow reply, gzip'd as the API sends it. The recordings predate API 2.x
    (a `questions` list, `total`/`page`/`pagesize`, Latin-1 text); the questions are served in the
    2.3 wrapper (`items`, `has_more`, `quota_max`, `quota_remaining`, `backoff`), as UTF-8."""
    old = stackexchange_recording(name)
    more = has_more if has_more is not None else old["page"] * old["pagesize"] < old["total"]
    body: dict[str, Any] = {"items": old["questions"], "has_more": more, "quota_max": 10_000,
                            "quota_remaining": quota_remaining}
    if backoff is not None:
        body["backoff"] = backoff
    return gzip.compress(json.dumps(body).encode("utf-8"))


# -- which tests run where -----------------------------------------------------------------------
# Tests under tests/integration, tests/e2e and tests/faults need the wire server (and start real processes):
# they carry the `wire` marker. scripts/test.sh runs the rest in parallel (pytest-xdist) with `--tests local`,
# then these with `--tests wire`, serially, with the server up. `slow` marks the tests that take seconds (the few
# local ones, the wire tests that start daemons or run a fault scenario): `-m "not slow"` is the quick loop.
# A phase does not even import the other phase's test modules (their collection, assertion rewriting included,
# was seconds of each process's start).

WIRE_DIRS = ("integration", "e2e", "faults")


def pytest_ignore_collect(collection_path, config):
    """With --tests local or wire, the directories of the other phase are not collected at all."""
    which = config.getoption("--tests")
    if which == "all" or not collection_path.is_dir() or collection_path.parent != ROOT / "tests":
        return None
    return True if (collection_path.name in WIRE_DIRS) != (which == "wire") else None


def pytest_addoption(parser):
    parser.addoption("--tests", choices=("all", "local", "wire"), default="all",
                     help="collector: run the local tests (no server), the wire tests, or all (default)")


def pytest_collection_modifyitems(config, items):
    which = config.getoption("--tests")
    keep, drop = [], []
    for item in items:
        parts = Path(str(item.path)).relative_to(ROOT).parts
        wire = len(parts) > 1 and parts[0] == "tests" and parts[1] in WIRE_DIRS
        if wire:
            item.add_marker(pytest.mark.wire)
        (keep if which == "all" or (which == "wire") == wire else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    import structlog

    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


# -- nothing outside the clone -------------------------------------------------------------------
# Every file this test process opens must be in the clone, the interpreter and its packages, the system, the
# temporary directory or the test engine's cache: a test that read a directory beside the clone would pass
# here and fail on a fresh machine. The one exception is RECORDED_HOME, for reading only (the tests that read it
# are marked and skip without it). An audit hook sees every open(); the session fails
# when one was outside (daemon processes the tests start run the same code).

import sys  # noqa: E402
import tempfile  # noqa: E402

ALLOWED_ROOTS = tuple(str(p) for p in {
    ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(tempfile.gettempdir()),
    Path.home() / ".cache" / "collector", Path("/usr"), Path("/lib"), Path("/lib64"), Path("/etc"), Path("/proc"),
    Path("/sys"), Path("/dev"), Path("/run"), Path("/var"),
} | {Path(p).resolve() for p in sys.path if p and Path(p).is_absolute()})
# the workplace's directory beside the clone: outside even when the clone itself lies in an allowed root such as
# the temporary directory (a clone in /tmp has /tmp/shared beside it), but for reading the recorded replies
NEVER = (str(ROOT.parent / "shared"),)
READ_ONLY = (str(RECORDED_HOME),)
WRITES = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
OUTSIDE: set[str] = set()


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root.rstrip("/") + "/") for root in roots)


def outside_the_clone(path: Any, mode: str | None = None, flags: int = 0) -> bool:
    """True when opening `path` reads or writes beside the clone (not in ALLOWED_ROOTS, or in NEVER and not a
    read in READ_ONLY). `mode` and `flags` are the audit "open" event's: open()'s mode (None for os.open) and
    the os.open flags."""
    if isinstance(path, int):  # a file descriptor
        return False
    try:
        name = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    if _under(name, READ_ONLY):
        return bool(isinstance(flags, int) and flags & WRITES) or any(c in "wax+" for c in str(mode or ""))
    return _under(name, NEVER) or not _under(name, ALLOWED_ROOTS)


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and outside_the_clone(*args[:3]):
        OUTSIDE.add(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def pytest_testnodedown(node, error):
    """pytest-xdist: a worker's opens outside the clone count as this session's."""
    OUTSIDE.update(getattr(node, "workeroutput", {}).get("outside", ()))


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller reports
        session.config.workeroutput["outside"] = sorted(OUTSIDE)
        return
    if OUTSIDE:
        print(f"\nFILES OUTSIDE THE CLONE were opened by the tests: {sorted(OUTSIDE)[:20]}", file=sys.stderr)
        session.exitstatus = 1
