#!/usr/bin/env bash
# Create .venv (if missing) and install collector with its test dependencies into it. Idempotent: nothing is
# installed again while pyproject.toml and the lock are unchanged.
#   1. the dependencies pinned in requirements/test.lock, every file checked against its hash (scripts/lock.sh
#      regenerates the lock after a change of pyproject.toml's dependencies);
#   2. the project itself, editable, with nothing fetched: a dependency missing from the lock fails here, saying
#      to run scripts/lock.sh.
# One line per step with its duration and the total at the end; pip's output is shown only when a step fails.
# COLLECTOR_VENV=DIR installs into another virtualenv than .venv (e.g. a fresh one, to time a first install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${COLLECTOR_VENV:-.venv}
LOCK=requirements/test.lock
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "collector needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=$VENV/.installed-$(cat pyproject.toml "$LOCK" | sha1sum | cut -c1-12)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
  exit 0  # up to date
fi

began=$EPOCHREALTIME
log=$(mktemp "${TMPDIR:-/tmp}/collector-bootstrap.XXXXXX")
trap 'rm -f "$log"' EXIT
seconds() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }
# step WHAT CMD...: one line, WHAT as CMD starts and how long it took once it is done; CMD's output goes to $log,
# shown only if CMD fails
step() {
  local what=$1 t0=$EPOCHREALTIME rc=0
  shift
  printf 'bootstrap: %-72s ' "$what"
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf 'FAILED (exit code %s) after %s:\n' "$rc" "$(seconds "$t0")"
    cat "$log" >&2
    exit "$rc"
  fi
  printf '%8s\n' "$(seconds "$t0")"
}
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
# collector-daemon was called `collector` before: its entry points (connectors.*) must not linger beside ours
stale_distribution() {
  (cd / && "$VENV/bin/python" -c 'import importlib.metadata as m; m.distribution("collector")' 2>/dev/null)
}
install_project() {
  if ! pip install --no-index --no-build-isolation -e '.[test,demo,bench]'; then
    echo "(if a dependency is missing above: pyproject.toml has one that $LOCK lacks: run scripts/lock.sh)"
    return 1
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  step "virtualenv $VENV ($("$PY" --version 2>&1))" "$PY" -m venv "$VENV"
fi
pinned=$(grep -c '^[a-z0-9]' "$LOCK")
step "dependencies: $pinned pinned in $LOCK, hashes checked" \
  pip install --require-hashes --only-binary :all: -r "$LOCK"
rm -rf collector.egg-info  # the build metadata of the old name, read from the clone's root by `python -m`
if stale_distribution; then
  step "removed the distribution's old name (collector)" pip uninstall --yes collector
fi
step "collector-daemon, editable, extras test, demo and bench (nothing fetched)" install_project
rm -f "$VENV"/.installed-* && touch "$stamp"
echo "bootstrap: $VENV ready in $(seconds "$began")"
