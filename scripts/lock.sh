#!/usr/bin/env bash
# Regenerates the pinned, hash-checked installs from pyproject.toml; run it after changing a dependency there
# (the package's own ranges stay open for library users: only these files pin):
#   requirements/test.lock  the test and CI virtualenv (scripts/bootstrap.sh): the `test`, `demo`, `bench` extras, the
#                           build backend of [build-system] requires (the project is installed without build
#                           isolation, so nothing unpinned is fetched) and pip
#   requirements/demo.lock  what `pip install "collector-daemon[demo]"` brings, at the same versions
#                           (scripts/packaged.sh installs the built wheel on it)
# Pins already in a lock are kept (a new dependency is added, nothing else moves); extra arguments go to
# `uv pip compile`: scripts/lock.sh --upgrade (everything) or --upgrade-package NAME.
# For Python 3.11 on Linux (every wheel of a pinned version is hashed, so any architecture). The uv that resolves
# is itself pinned, installed from PyPI once into ~/.cache/collector/ ($COLLECTOR_CACHE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tools=${COLLECTOR_CACHE_DIR:-$HOME/.cache/collector}/uv-$UV_VERSION
PY=${PYTHON:-python3}
if [ ! -x "$tools/bin/uv" ]; then
  echo "lock: installing uv $UV_VERSION into $tools (once) ..."
  "$PY" -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
build_requires=$("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
common=(--quiet --generate-hashes --python-version 3.11 --python-platform linux --custom-compile-command scripts/lock.sh)
printf '%s\npip\n' "$build_requires" |
  "$tools/bin/uv" pip compile pyproject.toml - --extra test --extra demo --extra bench "${common[@]}" "$@" -o requirements/test.lock
"$tools/bin/uv" pip compile pyproject.toml --extra demo -c requirements/test.lock "${common[@]}" "$@" \
  -o requirements/demo.lock
for lock in requirements/test.lock requirements/demo.lock; do
  echo "lock: $lock: $(grep -c '^[a-z0-9]' "$lock") packages pinned with their hashes"
done
