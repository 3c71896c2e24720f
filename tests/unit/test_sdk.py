"""The connector helpers of collector.sdk: Link headers, Retry-After, resets, rate limits, times, URLs; its public
names (discovery: test_plugins.py)."""

from __future__ import annotations

import ast
import email.utils
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from collector.connectors.github import GitHubStarred

from collector import sdk
from collector.sdk import RateLimit, header_rate_limit, links, parse_time
from collector.sdk import _urls as urls
from collector.sdk._errors import ForeignHost
from collector.sdk._limits import MAX_WAIT, epoch, retry_after

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
IN_AN_HOUR = NOW + timedelta(hours=1)


def unix(when: datetime) -> str:
    return str(int(when.timestamp()))


# -- links() ------------------------------------------------------------------------------------

GITHUB_LINK = (
    '<https://api.github.com/user/starred?per_page=100&page=1>; rel="prev", '
    '<https://api.github.com/user/starred?per_page=100&page=3>; rel="next", '
    '<https://api.github.com/user/starred?per_page=100&page=7>; rel="last", '
    '<https://api.github.com/user/starred?per_page=100&page=1>; rel="first"'
)


def test_links_reads_a_github_link_header():
    assert links(httpx.Headers({"Link": GITHUB_LINK})) == {
        "prev": "https://api.github.com/user/starred?per_page=100&page=1",
        "next": "https://api.github.com/user/starred?per_page=100&page=3",
        "last": "https://api.github.com/user/starred?per_page=100&page=7",
        "first": "https://api.github.com/user/starred?per_page=100&page=1",
    }


def test_links_accepts_plain_mappings_with_either_spelling():
    assert links({"link": '<https://a.test/2>; rel="next"'}) == {"next": "https://a.test/2"}
    assert links({"Link": '<https://a.test/2>; rel="next"'}) == {"next": "https://a.test/2"}


def test_links_handles_unquoted_and_multiple_rels_and_extra_params():
    value = '<https://a.test/9>; rel="next last"; title="end", <https://a.test/1>;rel=prev'
    assert links({"link": value}) == {"next": "https://a.test/9", "last": "https://a.test/9",
                                      "prev": "https://a.test/1"}


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    'rel="next"',
    "<https://a.test/2>",                 # no rel
    '<https://a.test/2>; title="next"',   # a parameter, but not rel
    "<<<>>>;;;,,,",
])
def test_links_ignores_garbage(value):
    assert "next" not in links({"link": value})


def test_links_without_a_header():
    assert links(httpx.Headers()) == {}


# -- retry_after() ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), (" 120 ", 120.0), ("0", 0.0)])
def test_retry_after_in_seconds(value, seconds):
    assert retry_after(value, NOW) == seconds


def test_retry_after_as_an_http_date():
    value = email.utils.format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert value.endswith("GMT")
    assert retry_after(value, NOW) == 90.0


def test_retry_after_a_date_in_the_past_means_now():
    value = email.utils.format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert retry_after(value, NOW) == 0.0


def test_retry_after_negative_seconds_mean_now():
    assert retry_after("-5", NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "garbage", "soon", "1e999", "inf", "nan", "Mon, 99 Foo 2026"])
def test_retry_after_garbage_is_none(value):
    assert retry_after(value, NOW) is None


# -- epoch() ------------------------------------------------------------------------------------


def test_epoch_reads_unix_seconds():
    assert epoch(unix(IN_AN_HOUR), NOW) == IN_AN_HOUR
    assert epoch(int(IN_AN_HOUR.timestamp()), NOW) == IN_AN_HOUR
    assert epoch(IN_AN_HOUR.timestamp(), NOW) == IN_AN_HOUR


@pytest.mark.parametrize("value", ["99999999999", 99999999999, 10**20, 1e300])
def test_epoch_clamps_far_futures_to_two_days(value):
    assert epoch(value, NOW) == NOW + MAX_WAIT == NOW + timedelta(days=2)


@pytest.mark.parametrize("value", ["-5", -5, "0", "1332242920"])
def test_epoch_clamps_the_past_to_now(value):
    assert epoch(value, NOW) == NOW


@pytest.mark.parametrize("value", [None, "", "garbage", "1e999", "inf", "nan", float("inf"), float("nan")])
def test_epoch_garbage_is_none(value):
    assert epoch(value, NOW) is None


# -- header_rate_limit() ------------------------------------------------------------------------


def test_header_rate_limit_reads_github_headers():
    headers = httpx.Headers({"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset": unix(IN_AN_HOUR), "X-RateLimit-Used": "5000"})
    assert header_rate_limit(headers, NOW) == RateLimit(remaining=0, limit=5000, reset_at=IN_AN_HOUR)


def test_header_rate_limit_reads_retry_after_alone():
    assert header_rate_limit(httpx.Headers({"Retry-After": "120"}), NOW) == RateLimit(retry_after=120.0)


def test_header_rate_limit_clamps_an_absurd_retry_after():
    limit = header_rate_limit(httpx.Headers({"Retry-After": "999999999"}), NOW)
    assert limit.retry_after == MAX_WAIT.total_seconds()


def test_header_rate_limit_clamps_an_absurd_reset():
    headers = httpx.Headers({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "99999999999"})
    assert header_rate_limit(headers, NOW).reset_at == NOW + MAX_WAIT


@pytest.mark.parametrize("headers", [
    {},
    {"content-type": "application/json"},
    {"x-ratelimit-remaining": "lots"},
    {"x-ratelimit-remaining": "1e999"},
    {"retry-after": "later"},
])
def test_header_rate_limit_without_usable_headers_is_none(headers):
    assert header_rate_limit(httpx.Headers(headers), NOW) is None


def test_header_rate_limit_ignores_a_garbage_reset():
    headers = httpx.Headers({"x-ratelimit-remaining": "0", "x-ratelimit-limit": "x", "x-ratelimit-reset": "1e999"})
    assert header_rate_limit(headers, NOW) == RateLimit(remaining=0)


# -- RateLimit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [
    RateLimit(),
    RateLimit(remaining=10, reset_at=IN_AN_HOUR),
    RateLimit(remaining=1, reset_at=IN_AN_HOUR),   # the floor itself is still allowed
    RateLimit(retry_after=0),
    RateLimit(retry_after=-3),
])
def test_resume_at_none_when_there_is_room(limit):
    assert limit.resume_at(NOW, floor=1) is None


def test_resume_at_the_reset_when_nothing_remains():
    assert RateLimit(remaining=0, reset_at=IN_AN_HOUR).resume_at(NOW, floor=1) == IN_AN_HOUR


def test_resume_at_respects_the_floor():
    assert RateLimit(remaining=5, reset_at=IN_AN_HOUR).resume_at(NOW, floor=10) == IN_AN_HOUR


@pytest.mark.parametrize("reset_at", [None, NOW - timedelta(seconds=1), NOW])
def test_resume_at_waits_a_minute_without_a_future_reset(reset_at):
    assert RateLimit(remaining=0, reset_at=reset_at).resume_at(NOW, floor=1) == NOW + timedelta(seconds=60)


def test_resume_at_after_retry_after():
    assert RateLimit(retry_after=120).resume_at(NOW, floor=1) == NOW + timedelta(seconds=120)


def test_resume_at_takes_the_latest_moment():
    limit = RateLimit(remaining=0, reset_at=NOW + timedelta(seconds=30), retry_after=120)
    assert limit.resume_at(NOW, floor=1) == NOW + timedelta(seconds=120)
    limit = RateLimit(remaining=0, reset_at=IN_AN_HOUR, retry_after=120)
    assert limit.resume_at(NOW, floor=1) == IN_AN_HOUR


def test_merge_with_none_is_identity():
    limit = RateLimit(remaining=3, retry_after=5)
    assert limit.merge(None) is limit


def test_merge_keeps_the_stricter_reading_of_each_field():
    headers = RateLimit(remaining=10, limit=5000, reset_at=IN_AN_HOUR, retry_after=30)
    body = RateLimit(remaining=2, limit=300, reset_at=NOW + timedelta(hours=2), retry_after=10, scope="service")
    assert headers.merge(body) == RateLimit(remaining=2, limit=5000, reset_at=NOW + timedelta(hours=2),
                                            retry_after=30, scope="service")


def test_merge_fills_missing_fields_from_either_side():
    assert RateLimit(remaining=0).merge(RateLimit(reset_at=IN_AN_HOUR, retry_after=60)) == RateLimit(
        remaining=0, reset_at=IN_AN_HOUR, retry_after=60)
    assert RateLimit(limit=10).merge(RateLimit()) == RateLimit(limit=10)


def test_merge_scope_network_only_when_both_are():
    assert RateLimit().merge(RateLimit()).scope == "network"
    assert RateLimit(scope="service").merge(RateLimit()).scope == "service"


# -- Request ----------------------------------------------------------------------------------


def sent_url(request: sdk.Request) -> str:
    from collector.http import build

    return str(build(httpx.AsyncClient(), request).url)


def test_request_keeps_the_query_of_a_next_link():
    """httpx replaces a URL's query with `params`, even empty ones: the engine merges them."""
    url = "https://api.github.test/user/starred?per_page=100&page=2&a=1&a=2"
    assert sent_url(sdk.Request(url)) == url


def test_request_explicit_params_win_over_the_query():
    assert sent_url(sdk.Request("https://a.test/x?page=2&size=10", params={"page": 3})) == \
        "https://a.test/x?page=3&size=10"


def test_request_without_a_query_gets_its_params():
    assert sent_url(sdk.Request("https://a.test/x", params={"q": 1})) == "https://a.test/x?q=1"


# -- parse_time() -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("2012-03-20T11:28:40Z", datetime(2012, 3, 20, 11, 28, 40, tzinfo=UTC)),
    ("2012-03-20T11:28:40+00:00", datetime(2012, 3, 20, 11, 28, 40, tzinfo=UTC)),
    ("2012-03-20T13:28:40+02:00", datetime(2012, 3, 20, 11, 28, 40, tzinfo=UTC)),
    ("2012-03-20T11:28:40", datetime(2012, 3, 20, 11, 28, 40, tzinfo=UTC)),   # naive: taken as UTC
    ("2012-03-20T11:28:40.123Z", datetime(2012, 3, 20, 11, 28, 40, 123000, tzinfo=UTC)),
    (1332242920, datetime(2012, 3, 20, 11, 28, 40, tzinfo=UTC)),
    (1332242920.5, datetime(2012, 3, 20, 11, 28, 40, 500000, tzinfo=UTC)),
])
def test_parse_time(value, expected):
    parsed = parse_time(value)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_parse_time_keeps_the_offset_it_was_given():
    assert parse_time("2012-03-20T13:28:40+02:00").utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


@pytest.mark.parametrize("value", [None, True, False, "", "garbage", "20/03/2012", 1e20, float("nan"), [], {}])
def test_parse_time_garbage_is_none(value):
    assert parse_time(value) is None


@pytest.mark.parametrize("url, base, inside", [
    ("https://api.example.com/v1/x?page=2", "https://api.example.com", True),
    ("https://api.example.com", "https://api.example.com/", True),
    ("https://api.example.com/2.3/me", "https://api.example.com/2.3", True),
    ("https://api.example.com/2.30/me", "https://api.example.com/2.3", False),  # a sibling path, not below
    ("https://api.example.com/other", "https://api.example.com/2.3", False),
    ("https://api.example.com.evil.example/v1", "https://api.example.com", False),
    ("https://api.example.com@evil.example/v1", "https://api.example.com", False),
    ("https://user@api.example.com/v1", "https://api.example.com", False),
    ("http://api.example.com/v1", "https://api.example.com", False),
    ("https://api.example.com:444/v1", "https://api.example.com", False),
    ("https://api.example.com:443/v1", "https://api.example.com", True),  # the scheme's own port
    ("/v1/relative", "https://api.example.com", False),
    ("https://api.example.com/v1", "", False),  # no base: nothing is inside
    ("http://[::1", "https://api.example.com", False),  # not a URL
])
def test_inside_compares_scheme_host_port_and_path(url, base, inside):
    assert urls.inside(url, base) is inside


def test_within_passes_a_link_inside_and_refuses_one_outside():
    assert sdk.within(None, "https://a.example") is None
    assert sdk.within("https://a.example/next", "https://a.example") == "https://a.example/next"
    with pytest.raises(ForeignHost, match="next URL points outside"):
        sdk.within("https://b.example/next", "https://a.example", "next URL")
    assert issubclass(ForeignHost, sdk.BadResponse)  # transient, as any bad reply


def test_origin_shows_no_path_nor_query():
    assert urls.origin("https://a.example:8443/secret/path?token=x") == "https://a.example:8443"
    assert urls.origin("https://a.example/p") == "https://a.example"
    assert urls.origin("/relative") == "a URL without a host"


@pytest.mark.parametrize("value, path, expected", [
    ("example.org", False, "https://example.org"),
    (" https://Example.org:8443/ ", False, "https://example.org:8443"),
    ("http://127.0.0.1:9000", False, "http://127.0.0.1:9000"),
    ("https://code.example.org/gitlab/", True, "https://code.example.org/gitlab"),
])
def test_server_url_accepts_a_server_address(value, path, expected):
    assert sdk.server_url(value, "instance", "none given", "https://example.org", path=path) == expected


@pytest.mark.parametrize("value, words", [
    (None, "none given"), ("  ", "none given"), ("http://example.org", "must be https"),
    ("https://user:pw@example.org", "address only"), ("https://example.org/path", "address only"),
    ("https://example.org/?q=1", "address only"), ("https://" + "a" * 300 + ".org", "longer than 300"),
    ("https://[::1", "is not a URL"), ("https://:443", "address only"),
])
def test_server_url_refuses_anything_else_as_a_permanent_error(value, words):
    with pytest.raises(sdk.PermanentError, match=words):
        sdk.server_url(value, "instance", "none given", "https://example.org")


@pytest.mark.parametrize("value, expected", [("42", 42), (7, 7), (3.9, 3), ("1e3", 1000), (True, None),
                                              ("1e999", None), ("inf", None), ("x", None), (None, None), ([], None)])
def test_count_reads_a_finite_number_or_nothing(value, expected):
    assert sdk.count(value) == expected


def test_auth_header_and_scheme_say_how_the_token_is_sent():
    from collector.config import Schedule, ServiceSettings
    from collector.model import Network

    class Bare(sdk.Connector):
        service = "bare"
        auth_header, auth_scheme = "X-Token", ""

        def request(self, ctx):
            return sdk.Request(self.base_url)

        def parse(self, ctx, response):
            return sdk.Page(items=[], cursor={}, more=False)

    network = Network(id=1, user="u", service="bare", mode="initial", cursor={}, errors=0,
                      credentials={"accessToken": "secret-1"})
    ctx = sdk.Context(network=network, mode="initial", cursor={}, now=None)
    settings = ServiceSettings(name="bare", schedule=Schedule())
    assert Bare(settings).auth_headers(ctx) == {"X-Token": "secret-1"}
    assert GitHubStarred(settings).auth_headers(ctx) == {"Authorization": "Bearer secret-1"}
    no_token = sdk.Context(network=Network(id=1, user="u", service="bare", mode="initial", cursor={}, errors=0,
                                           credentials={}), mode="initial", cursor={}, now=None)
    assert Bare(settings).auth_headers(no_token) == {}


# -- the public names ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CONNECTOR_CODE = [*(ROOT / "connectors").glob("*.py"), *(ROOT / "examples").rglob("*.py")]


def sdk_imports(path: Path) -> set[tuple[str, str]]:
    """(module, name) of every import from collector.sdk or one of its modules in `path`."""
    return {(node.module, alias.name) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("collector.sdk")
            for alias in node.names}


def test_connectors_and_the_example_import_only_public_names():
    imported = set().union(*(sdk_imports(path) for path in CONNECTOR_CODE))
    assert imported and {module for module, _ in imported} == {"collector.sdk"}
    assert {name for _, name in imported} - set(sdk.__all__) == set()


def test_every_public_name_is_one_a_connector_author_uses():
    """`__all__` is the plugin API: each name in it is imported by a connector or the example, or documented in
    docs/connectors.md; what only the engine uses stays in the internal modules."""
    used = {name for path in CONNECTOR_CODE for _, name in sdk_imports(path)}
    guide = (ROOT / "docs" / "connectors.md").read_text()
    assert [name for name in sdk.__all__ if name not in used and not re.search(rf"\b{name}\b", guide)] == []
    assert {"discover", "Registered", "ENTRY_POINT_GROUP", "inside", "origin", "ForeignHost"}.isdisjoint(sdk.__all__)


def test_the_package_exports_its_public_names_and_nothing_else():
    assert {name for name in vars(sdk) if not name.startswith("_")} - {"annotations"} == set(sdk.__all__)
