"""Scenarios 3 (hostile APIs) and 5 (secrets) at size small (120 networks, every sandbox fault kind at
least twice; tests/faults/hostile.py): every faulty network ends in the state docs/states.md and
collector/states.py document for its fault, requests end within http.total_timeout, oversize bodies
are cut off without being read, absurd limits are clamped to two days, and no token shows up anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.sandbox import FAULTS
from tests.faults import hostile
from tests.faults.hostile import MINUTE, SLACK, TOTAL_TIMEOUT, TWO_DAYS

pytestmark = pytest.mark.slow  # a fault scenario with real daemons: seconds (the quick loop: -m "not slow")

# end state: (mode, disabled, unauthorized, errors, lastError.kind, lastOutcome.kind)
RECOVERED = ("normal", False, False, 0)  # + the fault's error kind, then a page: errors reset by the success
WAITING = ("initial", False, False, 0, "rate_limited", "rate_limited")  # same mode, errors unchanged, due later
UNAUTHORIZED = ("initial", True, True, 0, "unauthorized", "unauthorized")  # disabled by the second, never called again
FORBIDDEN = ("initial", True, False, 0, "forbidden", "permanent")  # a permission error: disabled at once
FINE = ("normal", False, False, 0, None, "page")


def documented(case: hostile.Case) -> set[tuple]:
    """What the table of outcomes in docs/states.md says this case ends in."""
    if case.expect == "recovers":  # 5xx, timeout, reset, bad JSON, wrong type, oversize
        return {(*RECOVERED, case.error, "page")}
    if case.expect == "disabled":  # transient max_errors times in a row
        return {("initial", True, False, hostile.MAX_ERRORS, case.error, "transient")}
    if case.expect == "unauthorized":  # 401, access_denied, revoked: a second one, unauthorized_recheck later
        return {UNAUTHORIZED}
    if case.expect == "rechecked":  # a single 401: marked, then the recheck's page clears the mark
        return {(*RECOVERED, "unauthorized", "page")}
    if case.expect == "forbidden":  # a 403 that is no rate limit
        return {FORBIDDEN}
    if case.expect in ("limited", "paused"):  # rate limited until the reset, then the back-fill completes
        return {FINE} if case.kind == "backoff" else {(*RECOVERED, "rate_limited", "page")}
    if case.expect == "waits":  # still waiting for its (clamped) reset, or - a minute - past it and done
        return {WAITING} if case.wait == TWO_DAYS else {WAITING, (*RECOVERED, "rate_limited", "page")}
    if case.expect in ("waits_page", "healthy"):  # a success; a low limit only moves the next run
        return {FINE}
    raise AssertionError(case)


@pytest.fixture(scope="module")
def report(wire_uri):
    result = hostile.execute(wire_uri, "small")
    print()
    for row in result.rows:
        print(row)
    print(f"timings {result.timings}")
    return result


def test_rows(report):
    hostile_row, secrets_row = report.rows
    for row in report.rows:
        assert tuple(row) == hostile.KEYS
        assert {k: row[k] for k in ("duplicated", "lost", "crashes", "stuck")} == dict.fromkeys(
            ("duplicated", "lost", "crashes", "stuck"), 0), row["notes"]
        assert "FAIL" not in row["notes"], row["notes"]
    assert hostile_row["scenario"] == "hostile" and secrets_row["scenario"] == "secrets"
    assert hostile_row["served"] > 0 and hostile_row["stored"] == hostile_row["served"], hostile_row
    assert hostile_row["faults"] >= 2 * len(FAULTS), hostile_row
    assert not report.crashes and not report.problems, (report.crashes, report.problems[:10])


def test_every_fault_kind_is_there_at_least_twice(report):
    networks: dict[str, int] = {}
    for case in report.cases.values():
        networks[case["kind"]] = networks.get(case["kind"], 0) + case["networks"]
    assert {k: n for k, n in networks.items() if n < 2} == {}
    assert set(FAULTS) | {"revoked", "healthy"} <= set(networks), set(FAULTS) - set(networks)
    assert networks["healthy"] > sum(n for k, n in networks.items() if k != "healthy")  # most are healthy


@pytest.mark.parametrize("case", [*hostile.CASES, *hostile.APP_WIDE, *hostile.HEALTHY.values()],
                         ids=lambda c: c.name)
def test_each_case_ends_in_its_documented_state(report, case):
    row = report.cases[case.name]
    assert row["networks"] >= 1
    assert set(row["end"]) <= documented(case), dict(row["end"])
    # the finer points (backoff between the retries, the wait before the next request, the reset of a
    # rate limit counted from the request, the whole service quiet during an app-wide pause, one request
    # only with a refused token, the echoed token shown as [redacted]...): hostile.judge
    assert row["problems"] == []


def test_5xx_backs_off_then_succeeds(report):
    row = report.cases["5xx-500-gh"]
    assert set(row["end"]) == {("normal", False, False, 0, "http_5xx", "page")}
    assert row["requests"] >= 3  # two failures (retried after 0.5 s, then 1 s) and the page
    persistent = report.cases["5xx-502-persistent-gh"]
    assert set(persistent["end"]) == {("initial", True, False, hostile.MAX_ERRORS, "http_5xx", "transient")}
    assert persistent["requests"] == hostile.MAX_ERRORS * persistent["networks"]  # then never again


def test_absurd_limits_are_clamped_to_two_days(report):
    # headers (x-ratelimit-reset in the year 5138, Retry-After 999999999 s or in the year 9999): two days
    for name in ("headers-reset-far", "headers-retry-after-huge", "headers-retry-after-date", "headers-200-reset-far"):
        assert report.cases[name]["problems"] == [], name
    # junk, negative or bare: the conservative minute
    for name in ("headers-reset-negative", "headers-reset-garbage", "headers-reset-inf", "headers-retry-after-garbage",
                 "headers-retry-after-negative", "headers-429-bare"):
        case = next(c for c in hostile.CASES if c.name == name)
        assert case.wait == MINUTE and report.cases[name]["problems"] == [], name
    # app-wide limits from a Stack Exchange body (throttle_violation of 10**20 s, backoff of 999999999 s):
    # the whole service pauses two days, not 31 years, and nothing overflows
    assert set(report.pauses) == {c.name for c in hostile.APP_WIDE}
    for name, seconds in report.pauses.items():  # from the request's arrival; the pause counts from the answer
        assert TWO_DAYS - hostile.DRIFT <= seconds <= TWO_DAYS + SLACK + hostile.ANSWER + hostile.DRIFT, (name, seconds)


def test_requests_are_bounded_by_the_total_timeout(report):
    # the slowest request (a slow drip or a late answer) ended when the client gave up at total_timeout
    assert 0.75 * TOTAL_TIMEOUT <= report.longest_request <= TOTAL_TIMEOUT + 0.75, report.longest_request
    # and its run ended soon after (the state saved): from the request's arrival to the daemon's log line
    assert report.longest_run <= TOTAL_TIMEOUT + 5.0, report.longest_run


def kernel_buffers() -> int:
    """The most a TCP connection's two kernel buffers hold (Linux: the max of tcp_rmem plus that of tcp_wmem, which
    autotuning grows to on loopback), with a margin; 16 MB where they cannot be read."""
    try:
        sizes = [int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2]) for name in ("tcp_rmem", "tcp_wmem")]
    except (OSError, ValueError, IndexError):
        return 16_000_000
    return sum(sizes) + 1_000_000


def test_oversize_bodies_are_cut_off_unread(report):
    by_framing = {o["framing"]: o for o in report.oversize}
    assert set(by_framing) == {"length", "chunked", "gzip"}, report.oversize
    for o in report.oversize:
        if o["framing"] == "gzip":  # a bomb: 50 MB once decoded, ~50 kB on the wire; refused once decoded past the cap
            assert o["size"] < hostile.MAX_BODY, o
        else:  # 50 MB offered: the client closed the connection after the headers (or the cap): what the server got
            # rid of is at most the cap read plus what the kernel buffers on both ends of a loopback connection
            assert not o["complete"] and o["sent"] < hostile.MAX_BODY + kernel_buffers(), o
    for name in ("oversize-length-gh", "oversize-chunked-so", "oversize-gzip-gh"):
        assert set(report.cases[name]["end"]) == {(*RECOVERED, "too_large", "page")}, name


def test_no_token_anywhere(report):
    secrets = report.rows[1]
    assert report.leaks == [], report.leaks[:10]
    assert secrets["stuck"] == 0 and secrets["crashes"] == 0, secrets["notes"]
    # daemons' output, status (text and JSON), networks list (text and JSON), show, every document, every URL
    assert report.places >= 2 + 4 + 120 + secrets["served"], report.places


def test_a_first_401_marks_and_only_a_second_one_in_a_row_disables(report):
    # one 401 (then the token works): the recheck, unauthorized_recheck later, succeeds and clears the mark
    for name in ("unauthorized-gh", "unauthorized-so"):
        row = report.cases[name]
        assert set(row["end"]) == {(*RECOVERED, "unauthorized", "page")}, name
        assert row["requests"] >= 2 * row["networks"], name  # the 401, the recheck's page (and phase 2's)
    # a revoked token (or two 401s in a row): disabled by the second, never called a third time
    for name in ("revoked-gh", "revoked-so", "unauthorized-echo-gh", "unauthorized-echo-so"):
        row = report.cases[name]
        assert set(row["end"]) == {UNAUTHORIZED}, name
        assert row["requests"] == 2 * row["networks"], name
