"""`collector demo` end to end in one process: sandbox over real HTTP, in-memory database."""

from __future__ import annotations

import pytest

from collector.demo import run_demo


@pytest.mark.slow
async def test_demo_collects_everything_the_sandbox_served():
    lines: list[str] = []
    assert await run_demo(users=12, cycles=1, time_limit=120, echo=lines.append)
    text = "\n".join(lines)
    assert "normal cycle 1/1" in text and "equal" in text
    assert "networks     normal 11, unauthorized 1, disabled 0" in text  # user003 has a revoked token
    assert "rate_limited" in text and "transient" in text  # the troublemakers did their thing


async def test_without_the_demo_extra_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mongomock_motor", None)  # as if `pip install collector-daemon` alone
    lines: list[str] = []
    assert not await run_demo(users=2, cycles=1, time_limit=30, echo=lines.append)
    assert any('pip install "collector-daemon[demo]"' in line for line in lines), lines
