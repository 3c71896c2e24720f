from __future__ import annotations

import io
import json

import structlog

from collector import logs

TOKEN = "ghp_abcdefghijklmnop1234"


def capture(fmt: str = "json") -> io.StringIO:
    out = io.StringIO()
    logs.configure(fmt, "debug", stream=out)
    return out


def test_json_lines_carry_the_bound_run_context():
    out = capture()
    structlog.contextvars.bind_contextvars(network="n1", user="u1", service="github", mode="initial")
    try:
        structlog.get_logger("collector").info("run", items=3)
    finally:
        structlog.contextvars.clear_contextvars()
    line = json.loads(out.getvalue())
    assert line["event"] == "run" and line["items"] == 3 and line["level"] == "info"
    assert (line["network"], line["user"], line["service"], line["mode"]) == ("n1", "u1", "github", "initial")
    assert line["timestamp"].endswith("Z")


def test_console_format_is_key_value():
    out = capture("console")
    structlog.get_logger("collector").info("run", items=3)
    assert "items=3" in out.getvalue() and "run" in out.getvalue()


def test_secret_keys_are_redacted():
    out = capture()
    structlog.get_logger("collector").info("x", accessToken=TOKEN, headers={"Authorization": f"Bearer {TOKEN}"},
                                           api_key="k" * 10)
    text = out.getvalue()
    assert TOKEN not in text and "k" * 10 not in text and text.count("[redacted]") == 3


def test_run_secrets_are_scrubbed_from_any_string_and_exception():
    out = capture()
    token = logs.set_run_secrets([TOKEN])
    try:
        try:
            raise ValueError(f"server said {TOKEN} is bad")
        except ValueError:
            structlog.get_logger("collector").exception("failed", url=f"https://api/x?q=1&t={TOKEN}")
    finally:
        logs.reset_run_secrets(token)
    assert TOKEN not in out.getvalue() and "[redacted]" in out.getvalue()


def test_inline_forms_are_scrubbed_without_knowing_the_value():
    assert logs.scrub("GET /x?access_token=abc123def&page=2") == "GET /x?access_token=[redacted]&page=2"
    assert logs.scrub("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer [redacted]"
    assert logs.scrub("nothing secret here") == "nothing secret here"
