"""The state machine, row by row (see the table in collector/states.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from collector.config import Schedule
from collector.sdk import RateLimit
from collector.states import Kind, Outcome, State, backoff, transition

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
S = Schedule(initial_pace=2.0, normal_interval=900.0, backoff_base=30.0, backoff_cap=3600.0, max_errors=5,
             rate_limit_floor=1, jitter=0.0, rate_limit_slack=2.0)


def step(mode: str, outcome: Outcome, errors: int = 0, schedule: Schedule = S):
    return transition(State(mode, errors), outcome, NOW, schedule, random.Random(1))


def secs(when: datetime | None) -> float:
    assert when is not None
    return (when - NOW).total_seconds()


@pytest.mark.parametrize("mode", ["initial", "normal"])
def test_page_with_more_stays_in_mode_and_is_due_after_the_pace(mode):
    t = step(mode, Outcome(Kind.PAGE, items=100, cursor={"next": 2}, more=True), errors=3)
    assert (t.mode, t.errors, t.success, t.disabled) == (mode, 0, True, False)
    assert t.cursor == {"next": 2}
    assert secs(t.scheduled_to) == 2.0
    assert "more pages" in t.reason


def test_initial_history_exhausted_switches_to_normal():
    t = step("initial", Outcome(Kind.PAGE, items=7, cursor={"stop": "9"}, more=False))
    assert t.mode == "normal" and t.cursor == {"stop": "9"}
    assert secs(t.scheduled_to) == 900.0
    assert "switching to normal" in t.reason


def test_normal_nothing_new():
    t = step("normal", Outcome(Kind.PAGE, items=0, cursor={"stop": "9"}, more=False))
    assert t.mode == "normal" and secs(t.scheduled_to) == 900.0 and t.reason == "nothing new"


def test_normal_new_items_caught_up():
    t = step("normal", Outcome(Kind.PAGE, items=3, cursor={"stop": "10"}, more=False))
    assert t.mode == "normal" and "3 items, caught up" in t.reason


def test_not_modified_keeps_cursor_and_waits_the_normal_interval():
    t = step("normal", Outcome(Kind.NOT_MODIFIED, status=304), errors=2)
    assert t.mode == "normal" and t.cursor is None and t.errors == 0
    assert secs(t.scheduled_to) == 900.0 and "304" in t.reason


def test_success_with_low_remaining_waits_for_the_reset():
    reset = NOW + timedelta(hours=1)
    t = step("initial", Outcome(Kind.PAGE, items=100, cursor={"next": 3}, more=True,
                                rate_limit=RateLimit(remaining=0, reset_at=reset)))
    assert t.scheduled_to == reset + timedelta(seconds=2.0)
    assert t.rate_limited_until == t.scheduled_to and t.success and t.mode == "initial"
    assert t.service_paused_until is None


def test_success_with_room_left_is_not_delayed():
    t = step("initial", Outcome(Kind.PAGE, items=1, cursor={}, more=True,
                                rate_limit=RateLimit(remaining=4000, reset_at=NOW + timedelta(hours=1))))
    assert secs(t.scheduled_to) == 2.0 and t.rate_limited_until is None


def test_app_wide_quota_spent_pauses_the_service():
    reset = NOW + timedelta(hours=5)
    t = step("normal", Outcome(Kind.PAGE, items=1, cursor={}, more=False,
                               rate_limit=RateLimit(remaining=0, reset_at=reset, scope="service")))
    assert t.service_paused_until == reset + timedelta(seconds=2.0)


@pytest.mark.parametrize("mode", ["initial", "normal"])
def test_rate_limited_waits_exactly_until_reset_and_keeps_errors(mode):
    reset = NOW + timedelta(minutes=30)
    t = step(mode, Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(remaining=0, reset_at=reset),
                           error="rate_limited", status=403), errors=2)
    assert t.mode == mode and t.errors == 2 and not t.success and not t.disabled
    assert t.scheduled_to == reset + timedelta(seconds=2.0)
    assert t.cursor is None and t.error["kind"] == "rate_limited"


def test_rate_limited_by_retry_after():
    t = step("initial", Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(retry_after=120), status=429))
    assert secs(t.scheduled_to) == 122.0


def test_rate_limited_without_any_hint_waits_a_minute():
    t = step("initial", Outcome(Kind.RATE_LIMITED, rate_limit=None, status=429))
    assert secs(t.scheduled_to) == 62.0


def test_rate_limit_jitter_never_resumes_before_the_reset():
    jittery = Schedule(jitter=0.5, rate_limit_slack=0.0)
    reset = NOW + timedelta(seconds=100)
    for seed in range(50):
        t = transition(State("initial"), Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(remaining=0, reset_at=reset)),
                       NOW, jittery, random.Random(seed))
        assert t.scheduled_to >= reset


def test_a_first_401_marks_the_network_and_runs_it_again_after_the_recheck():
    t = step("normal", Outcome(Kind.UNAUTHORIZED, error="unauthorized", status=401, message="Bad credentials"))
    assert t.unauthorized and not t.disabled and t.auth_failures == 1
    assert secs(t.scheduled_to) == S.unauthorized_recheck
    assert "Bad credentials" in t.reason and "confirming" in t.reason and t.error["status"] == 401


def test_a_second_401_in_a_row_disables_and_marks_the_network():
    state = State("normal", auth_failures=1)
    t = transition(state, Outcome(Kind.UNAUTHORIZED, error="unauthorized", status=401, message="Bad credentials"),
                   NOW, S, random.Random(1))
    assert t.disabled and t.unauthorized and t.scheduled_to is None and t.auth_failures == 2
    assert "second 401 in a row" in t.reason and t.reason.startswith("unauthorized: Bad credentials")


@pytest.mark.parametrize("outcome", [Outcome(Kind.TRANSIENT, error="http_5xx", status=502),
                                     Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(retry_after=30)),
                                     Outcome(Kind.DEFERRED, rate_limit=RateLimit(retry_after=30))])
def test_failures_between_two_401s_neither_clear_nor_confirm_the_mark(outcome):
    t = transition(State("normal", auth_failures=1), outcome, NOW, S, random.Random(1))
    assert t.auth_failures == 1 and not t.disabled


@pytest.mark.parametrize("outcome", [Outcome(Kind.PAGE, items=1), Outcome(Kind.NOT_MODIFIED, status=304)])
def test_a_success_clears_the_mark(outcome):
    t = transition(State("normal", auth_failures=1), outcome, NOW, S, random.Random(1))
    assert t.success and t.auth_failures == 0 and not t.unauthorized


@pytest.mark.parametrize("kind", ["http_5xx", "timeout", "connection", "bad_json"])
def test_transient_failure_backs_off_exponentially(kind):
    delays = []
    for errors in range(4):
        t = step("initial", Outcome(Kind.TRANSIENT, error=kind, message="boom"), errors=errors)
        assert t.errors == errors + 1 and not t.disabled and t.error["kind"] == kind
        delays.append(secs(t.scheduled_to))
    assert delays == [30.0, 60.0, 120.0, 240.0]


def test_backoff_is_capped():
    assert backoff(30, S) == 3600.0
    assert backoff(10_000, S) == 3600.0


def test_transient_failure_disables_after_max_errors_when_the_period_is_zero():
    t = step("normal", Outcome(Kind.TRANSIENT, error="http_5xx", status=503, message="HTTP 503"), errors=4,
             schedule=replace(S, disable_after=0.0))
    assert t.disabled and not t.unauthorized and t.errors == 5 and t.scheduled_to is None
    assert "5 consecutive failures" in t.reason and "http_5xx" in t.reason


FIVE_OH_THREE = Outcome(Kind.TRANSIENT, error="http_5xx", status=503, message="HTTP 503")


def test_an_outage_of_hours_backs_off_to_the_cap_and_disables_nothing():
    """The default policy: max_errors failures AND a day since the first of them. A one-hour outage used to
    disable every network of the service after 5 failures (about 7.5 minutes)."""
    state, now, delays = State("normal"), NOW, []
    for _ in range(40):  # 40 failures in a row, each retried when it said
        t = transition(state, FIVE_OH_THREE, now, S, random.Random(1))
        if t.disabled:
            break
        assert t.failing_since == NOW  # the streak's first failure, kept through the streak
        delays.append(secs(t.scheduled_to) - (now - NOW).total_seconds())
        now = t.scheduled_to
        state = State("normal", t.errors, t.failing_since)
    assert t.disabled and t.errors >= S.max_errors
    assert (now - NOW) >= timedelta(seconds=S.disable_after)  # a day of failing, not 7.5 minutes
    assert delays[:4] == [30.0, 60.0, 120.0, 240.0] and max(delays) == S.backoff_cap
    assert "31 consecutive failures over 24.1 h" in t.reason  # 30 s, 60 s ... then hourly: 31 tries in a day


def test_a_long_streak_still_needs_its_count():
    """A day since the first failure, but fewer than max_errors failures (the network ran rarely): not yet."""
    day_ago = NOW - timedelta(days=2)
    t = transition(State("normal", 2, day_ago), FIVE_OH_THREE, NOW, S, random.Random(1))
    assert not t.disabled and t.errors == 3 and t.failing_since == day_ago
    t = transition(State("normal", 4, day_ago), FIVE_OH_THREE, NOW, S, random.Random(1))
    assert t.disabled and "over 48.0 h" in t.reason


def test_a_streak_starts_at_its_first_failure_and_a_success_ends_it():
    t = transition(State("normal", 0, NOW - timedelta(days=9)), FIVE_OH_THREE, NOW, S, random.Random(1))
    assert t.failing_since == NOW and t.errors == 1  # a stale value of an old streak does not count
    t = transition(State("normal", 3, None), FIVE_OH_THREE, NOW, S, random.Random(1))
    assert t.failing_since == NOW and not t.disabled  # a streak from before the field existed starts now
    ok = transition(State("normal", 3, NOW), Outcome(Kind.PAGE, cursor={}), NOW, S, random.Random(1))
    assert ok.failing_since is None and ok.errors == 0
    limited = transition(State("normal", 3, NOW - timedelta(hours=1)), Outcome(Kind.RATE_LIMITED, status=429),
                         NOW, S, random.Random(1))
    assert limited.failing_since == NOW - timedelta(hours=1) and limited.errors == 3  # neither ends nor counts


@pytest.mark.parametrize("kind", ["malformed", "unknown_service", "missing_credentials"])
def test_permanent_bad_input_disables_with_the_reason(kind):
    t = step("initial", Outcome(Kind.PERMANENT, error=kind, message="why it cannot run"))
    assert t.disabled and t.scheduled_to is None and t.reason == f"{kind}: why it cannot run"


def test_any_success_resets_errors():
    t = step("normal", Outcome(Kind.PAGE, items=0, cursor={}, more=False), errors=4)
    assert t.errors == 0


def test_jitter_spreads_delays_within_bounds():
    jittery = Schedule(normal_interval=1000.0, jitter=0.1)
    seen = set()
    for seed in range(30):
        t = transition(State("normal"), Outcome(Kind.PAGE, cursor={}), NOW, jittery, random.Random(seed))
        assert 900.0 <= secs(t.scheduled_to) <= 1100.0
        seen.add(round(secs(t.scheduled_to)))
    assert len(seen) > 10


# -- rate limits in a row (GitHub: "wait an exponentially increasing amount of time between retries") --------


SECONDARY = Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(minimum_wait=60.0), error="rate_limited", status=403,
                    message="secondary rate limit")


def test_limits_that_name_no_reset_wait_longer_each_time_from_the_documented_minimum():
    state, now, waits = State("initial"), NOW, []
    for _ in range(5):
        t = transition(state, SECONDARY, now, S, random.Random(1))
        waits.append((t.scheduled_to - now).total_seconds() - S.rate_limit_slack)
        assert t.errors == 0 and not t.disabled and t.rate_limited_until == t.scheduled_to
        now, state = t.scheduled_to, State("initial", 0, None, t.limited)
    assert waits == [60.0, 120.0, 240.0, 480.0, 960.0]  # it was 60, 60, 60... forever
    assert t.limited == 5 and "no reset named: waiting 960s" in t.reason


def test_the_escalation_is_capped_and_jittered_never_below_its_step():
    jittery = replace(S, jitter=0.1)
    for seed in range(20):
        t = transition(State("initial", 0, None, 3), SECONDARY, NOW, jittery, random.Random(seed))
        assert 480.0 <= secs(t.scheduled_to) - S.rate_limit_slack <= 528.0
    far = transition(State("initial", 0, None, 4), SECONDARY, NOW, replace(S, rate_limit_cap=600.0), random.Random(1))
    assert secs(far.scheduled_to) == 600.0 + S.rate_limit_slack


def test_a_limit_that_names_its_reset_is_obeyed_exactly_however_many_came_before():
    named = Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(retry_after=90.0, minimum_wait=60.0), status=429)
    t = transition(State("initial", 0, None, 3), named, NOW, S, random.Random(1))
    assert secs(t.scheduled_to) == 90.0 + S.rate_limit_slack and t.limited == 4


def test_park_after_limits_in_a_row_parks_the_network_for_a_long_cool_down_not_for_ever():
    t = transition(State("normal", 0, None, S.park_after - 1), SECONDARY, NOW, S, random.Random(1))
    assert t.parked and not t.disabled and t.limited == S.park_after
    assert secs(t.scheduled_to) == S.park_for  # 6 h, more than the escalated wait (1920 s)
    assert t.reason.startswith(f"parked after {S.park_after} rate limits in a row")


def test_a_success_ends_the_streak_and_a_failure_does_not():
    page_ok = transition(State("normal", 0, None, 4), Outcome(Kind.PAGE, cursor={}), NOW, S, random.Random(1))
    assert page_ok.limited == 0 and not page_ok.parked
    failed = transition(State("normal", 0, None, 4), FIVE_OH_THREE, NOW, S, random.Random(1))
    assert failed.limited == 4


def test_an_app_wide_limit_escalates_with_the_service_s_streak_whichever_network_meets_it():
    throttle = Outcome(Kind.RATE_LIMITED, rate_limit=RateLimit(minimum_wait=60.0, scope="service"), status=400)
    t = transition(State("normal", 0, None, 0, service_limited=3), throttle, NOW, S, random.Random(1))
    assert secs(t.service_paused_until) == 480.0 + S.rate_limit_slack and t.limited == 1


def test_a_user_scoped_limit_holds_that_user_s_networks():
    quota = RateLimit(remaining=0, reset_at=NOW + timedelta(hours=5), scope="user")
    spent = transition(State("normal"), Outcome(Kind.PAGE, items=3, cursor={}, rate_limit=quota), NOW, S)
    assert spent.user_paused_until == NOW + timedelta(hours=5, seconds=S.rate_limit_slack)
    assert spent.service_paused_until is None
