#!/usr/bin/env bash
# The whole test suite: unit tests (mongomock-motor + respx) and integration tests on a real MongoDB
# wire-protocol server ($MONGODB_URI if set, else mongo-java-server: installed once from Maven Central,
# then started and stopped by scripts/devdb.py).
# Extra arguments go to pytest, e.g. scripts/test.sh -k leases -x, or -m 'not slow' for the quick loop
set -euo pipefail
cd "$(dirname "$0")/.."
# timing: each phase's duration, then the total, printed at the end (also when a phase fails)
began=$EPOCHREALTIME
phase_at=$began
phases=()
seconds() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f s", b - a }'; }
phase_done() { phases+=("$1 $(seconds "$phase_at")"); phase_at=$EPOCHREALTIME; }
report() {
  local out="" p
  for p in "${phases[@]}"; do out+="${out:+, }$p"; done
  printf 'test.sh: %s; total %s\n' "${out:-nothing}" "$(seconds "$began")"
}
trap report EXIT
scripts/bootstrap.sh
# the example plugin package: tests/e2e/test_plugin.py proves the daemon runs it with no engine change
plugin_stamp=.venv/.plugin-$(sha1sum examples/collector-hackernews/pyproject.toml | cut -c1-12)
if [ ! -f "$plugin_stamp" ]; then  # its one dependency is collector-daemon: nothing fetched, pip's output on failure
  if ! out=$(.venv/bin/python -m pip install --disable-pip-version-check --no-index --no-build-isolation \
               -e examples/collector-hackernews 2>&1); then
    printf 'installing examples/collector-hackernews failed:\n%s\n' "$out" >&2
    exit 1
  fi
  rm -f .venv/.plugin-* && touch "$plugin_stamp"
fi
export COLLECTOR_REQUIRE_WIRE=1   # no wire server is a failure here, never a silent skip
phase_done "install"
# bytecode, written once (outside the clone) and read by every later process: the pytest processes (their assertion
# rewriting of the test modules was seconds of CPU each) and the daemons the tests start, even where the environment
# sets PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-${HOME:-/tmp}/.cache/collector/pycache}
unset PYTHONDONTWRITEBYTECODE
.venv/bin/ruff check .
.venv/bin/mypy collector   # the runtime package type-checks, strict (config: pyproject.toml [tool.mypy])
phase_done "ruff + mypy"
# 1. the local tests (mongomock-motor, respx, the sandbox in-process), in parallel over the cores (pytest-xdist);
# 2. the wire tests (tests/integration, e2e, faults: the wire server and real daemon processes), one at a time,
#    with the server up. The same arguments go to both; a phase they select nothing of is not a failure.
set +e
.venv/bin/python -m pytest -q -rs -n "${COLLECTOR_TEST_WORKERS:-auto}" --tests local "$@"
local_status=$?
phase_done "local tests"
if [ "$local_status" -ne 0 ] && [ "$local_status" -ne 5 ]; then
  exit "$local_status"
fi
.venv/bin/python scripts/devdb.py run -- .venv/bin/python -m pytest -q -rs --tests wire "$@"
wire_status=$?
phase_done "wire tests (database start included)"
set -e
if [ "$wire_status" -eq 5 ] && [ "$local_status" -eq 5 ]; then
  exit 5  # nothing selected at all
fi
if [ "$wire_status" -eq 5 ]; then
  exit 0
fi
exit "$wire_status"
