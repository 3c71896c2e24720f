"""What an API sends is read in time linear in its size and within caps: Link headers, HTML to text, JSON bodies
(elements and nesting), rate-limit header values. The hostile inputs below are the ones that took quadratic
time (a crafted Link header, a `<` flood) or unbounded memory (`[{},{},...]`, 100,000 nested arrays); each
ends as a value or a documented BadResponse naming its cap."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from collector.connectors.mastodon import title

from collector.sdk import BadResponse, count, header_rate_limit, html_text, json_body, json_value, links, parse_time
from collector.sdk._bounded import MAX_DEPTH, MAX_ITEMS
from collector.sdk._limits import retry_after
from collector.sdk._urls import MAX_LINK

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


# -- Link headers ---------------------------------------------------------------------------------


def test_links_read_quoted_parameters_holding_commas_and_semicolons():
    value = ('<https://a.test/2?x=1,2;y>; title="a, b; c"; rel="next", '
             '<https://a.test/9>; title="say \\"hi\\", rel=prev"; REL="Last  First"; rel=ignored')
    assert links({"link": value}) == {"next": "https://a.test/2?x=1,2;y", "last": "https://a.test/9",
                                      "first": "https://a.test/9"}


def test_links_of_several_headers_joined_by_httpx():
    headers = httpx.Headers([("link", '<https://a.test/2>; rel="next"'), ("link", '<https://a.test/1>; rel=prev')])
    assert links(headers) == {"next": "https://a.test/2", "prev": "https://a.test/1"}


@pytest.mark.parametrize("value", [
    "<" * MAX_LINK,
    '"' * MAX_LINK,
    ("<a>;" * MAX_LINK)[:MAX_LINK],
    (",;" * MAX_LINK)[:MAX_LINK],
    ('<https://a.test/2>; rel="' + "\\" * MAX_LINK)[:MAX_LINK],
    ("<https://a.test/2>; rel=next next " * MAX_LINK)[:MAX_LINK],
])
def test_crafted_link_headers_up_to_the_cap_are_read_in_one_pass(value):
    assert "prev" not in links({"link": value})


def test_a_link_header_over_the_cap_is_refused_not_cut():
    value = ", ".join(f'<https://a.test/{n}>; rel="item"' for n in range(1000)) + ', <https://a.test/2>; rel="next"'
    with pytest.raises(BadResponse, match=f"Link header over the cap of {MAX_LINK} characters"):
        links({"link": value})
    with pytest.raises(BadResponse):
        links({"link": "<" * 100_000})


# -- HTML to text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("markup", "text"), [
    ('<p>Hello <span class="h-card"><a href="x">@bob</a></span> &amp; you<br>next &lt;b&gt;</p><p>para</p>',
     "Hello @bob & you next <b> para"),
    ("<p>one</p><p>two<br/>three<BR >four</p>", "one two three four"),
    ("a<!-- <p>hidden</p> -->b", "ab"),
    ("plain &#39;text&#x27; &nbsp; here", "plain 'text' here"),
    ("before <a href='x'", "before"),          # a tag left open ends the text
    ("before <!-- never closed <p>x</p>", "before"),
    ("<brand>word</brand>", "word"),            # not a <br>
    ("", ""),
])
def test_html_text(markup, text):
    assert html_text(markup) == text


@pytest.mark.parametrize("flood", ["<", "<a", "<!--", "</", "<!", "<?", "&", "&#", "<a b='", "<p>"])
def test_html_floods_are_read_in_one_pass_and_only_up_to_the_cap(flood):
    markup = flood * 200_000
    assert len(html_text(markup)) <= 16 * 1024


def test_html_text_reads_only_the_first_max_markup_characters():
    assert html_text("<p>" + "word " * 10_000, max_markup=100) == " ".join(["word"] * 19) + " wo"


def test_a_mastodon_title_from_hostile_content_stays_short():
    assert title({"content": "<" * 1_000_000}) is None
    assert len(title({"content": "<p>" + "&amp;" * 1_000_000}) or "") == 120


# -- JSON bodies --------------------------------------------------------------------------------------


def test_json_body_reads_a_page_within_the_caps():
    nested = [[[{"a": [1, {"b": None}]}]]]
    assert json_body(httpx.Response(200, json=nested), list) == nested
    assert json_value(json.dumps({"x": "a, [b], {c}"}).encode()) == {"x": "a, [b], {c}"}


def test_too_many_elements_are_refused_before_parsing():
    body = b"[" + b"{}," * MAX_ITEMS + b"{}]"
    with pytest.raises(BadResponse, match=f"over the cap of {MAX_ITEMS} elements"):
        json_value(body)
    with pytest.raises(BadResponse, match="over the cap of 3 elements"):
        json_body(httpx.Response(200, json=[1, 2, 3]), list, max_items=3)
    assert json_body(httpx.Response(200, json=[1, 2]), list, max_items=3) == [1, 2]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 999, 100_000])
def test_nesting_past_the_cap_is_refused(depth):
    with pytest.raises(BadResponse, match=f"nested deeper than the cap of {MAX_DEPTH} levels"):
        json_value(b"[" * depth + b"]" * depth)
    with pytest.raises(BadResponse, match=f"nested deeper than the cap of {MAX_DEPTH} levels"):
        json_value(b'{"a":' * depth + b"1" + b"}" * depth)


def test_nesting_up_to_the_cap_is_read():
    assert json_value(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None


def test_an_integer_of_too_many_digits_is_a_bad_response_not_a_crash():
    with pytest.raises(BadResponse, match="unreadable value"):
        json_value(b'{"id": ' + b"9" * 100_000 + b"}")


def test_invalid_json_still_raises_a_decode_error():
    with pytest.raises(json.JSONDecodeError):
        json_value(b'{"items": [')
    with pytest.raises(BadResponse, match="expected a JSON dict, got list"):
        json_body(httpx.Response(200, json=[]))


# -- rate-limit header values ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["9" * 100_000, "1" * 65, " " * 100_000 + "1"])
def test_huge_numbers_in_headers_are_bad_values(value):
    assert count(value) is None
    assert retry_after(value, NOW) is None
    assert parse_time(value) is None


def test_huge_rate_limit_headers_are_read_as_absent_or_bounded():
    assert header_rate_limit({"x-ratelimit-remaining": "9" * 100_000, "x-ratelimit-reset": "9" * 100_000},
                             NOW) is None
    limit = header_rate_limit({"ratelimit": "remaining=0, reset=30, " + "r " * 50_000}, NOW)
    assert limit is not None and limit.remaining == 0
