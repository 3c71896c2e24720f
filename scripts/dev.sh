#!/usr/bin/env bash
# Install, start a local database (mongo-java-server via scripts/devdb.py, or $MONGODB_URI) and run both
# daemons (initial + normal) in the foreground with readable logs. Ctrl-C stops everything cleanly.
# Add a network from another terminal with the `collector networks add` line this prints.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export COLLECTOR_ENV=${COLLECTOR_ENV:-development}
exec .venv/bin/python scripts/devdb.py run -- bash -c '
  echo "database: $MONGODB_URI"
  echo "add a network:  MONGODB_URI=$MONGODB_URI GITHUB_TOKEN=... .venv/bin/collector networks add --user me --service github --token-env GITHUB_TOKEN"
  .venv/bin/collector --mode initial --log-format console & a=$!
  .venv/bin/collector --mode normal --log-format console & b=$!
  trap "kill -TERM $a $b 2>/dev/null" INT TERM
  wait $a; wait $b'
