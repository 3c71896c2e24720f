"""`python tests/faults/skewed.py SECONDS ARGS...`: the collector CLI (`collector ARGS...`) on a host whose wall
clock is SECONDS off (e.g. 600: ten minutes fast). A test harness only: collector.clock.utcnow, the clock every
part of the daemon reads by default, is shifted before anything binds it."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import collector.clock as clock

SKEW = timedelta(seconds=float(sys.argv[1]))
_real = clock.utcnow
clock.utcnow = lambda: _real() + SKEW

from collector.cli import main  # noqa: E402  (after the shift: the daemon's modules bind the shifted clock)

if __name__ == "__main__":
    sys.argv = ["collector", *sys.argv[2:]]
    main()
