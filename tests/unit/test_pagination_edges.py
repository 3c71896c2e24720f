"""sdk.sweep and the connectors' own pagination at the edges their APIs document: a page with no items that
still names a next page (followed: never the end), a next pointer that repeats the one just sent (the end: an
API looping on one token must not be asked the same page forever)."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from collector.connectors.gitlab import GitLabStarred
from collector.connectors.mastodon import MastodonFavourites

from collector.config import ServiceSettings
from collector.model import Network
from collector.sdk import Context, Item, sweep

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def items(*ids: str) -> list[Item]:
    return [Item(id=i) for i in ids]


# -- sdk.sweep -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["initial", "normal"])
def test_an_empty_first_page_with_a_next_pointer_goes_on(mode):
    fresh, cursor, more = sweep({"stop": "9"} if mode == "normal" else {}, [], "tok2", mode)
    assert fresh == [] and more is True
    assert cursor == {"next": "tok2", "stop": "9" if mode == "normal" else None, "top": None}


def test_the_first_item_after_empty_pages_becomes_the_top():
    fresh, cursor, more = sweep({"next": "tok2", "stop": None, "top": None}, items("5", "4"), "tok3", "initial")
    assert [i.id for i in fresh] == ["5", "4"] and more
    assert cursor == {"next": "tok3", "stop": None, "top": "5"}


def test_an_empty_page_in_the_middle_keeps_the_top_and_goes_on():
    fresh, cursor, more = sweep({"next": "tok2", "stop": None, "top": "9"}, [], "tok3", "initial")
    assert fresh == [] and more and cursor == {"next": "tok3", "stop": None, "top": "9"}


def test_no_pointer_ends_the_sweep_at_its_top():
    _, cursor, more = sweep({"next": "tok2", "stop": "1", "top": "9"}, [], None, "normal")
    assert not more and cursor == {"stop": "9"}


def test_a_sweep_of_empty_pages_only_keeps_the_old_stop():
    _, cursor, more = sweep({"next": "tok2", "stop": "1", "top": None}, [], None, "normal")
    assert not more and cursor == {"stop": "1"}


@pytest.mark.parametrize("sent, nxt", [("tok2", "tok2"), (2, 2), (2, "2"), ("https://a.test/x?page=2",) * 2])
def test_a_pointer_that_repeats_the_one_sent_ends_the_sweep(sent, nxt):
    fresh, cursor, more = sweep({"next": sent, "stop": None, "top": "9"}, items("3"), nxt, "initial", {"etag": "e"})
    assert [i.id for i in fresh] == ["3"] and not more and cursor == {"etag": "e", "stop": "9"}


def test_the_known_item_still_ends_a_normal_sweep():
    fresh, cursor, more = sweep({"stop": "4"}, items("6", "5", "4", "3"), "tok2", "normal")
    assert [i.id for i in fresh] == ["6", "5"] and not more and cursor == {"stop": "6"}


# -- connectors with their own pagination -------------------------------------------------------


def ctx(service: str, cursor: dict[str, Any], mode: str = "initial", **options: Any) -> Context:
    doc = {"_id": 1, "user": "u1", "service": service, "accessToken": "t", "mode": mode, "cursor": cursor,
           "options": options}
    return Context(network=Network.from_doc(doc), mode=mode, cursor=cursor, now=NOW)


def reply(url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(200, json=body, headers=headers, request=httpx.Request("GET", url))


def test_gitlab_an_empty_page_with_a_next_link_goes_on():
    """GitLab REST API docs: use the Link header's rel="next" ("Please use these links instead of generating
    your own URLs"); nothing there says an empty page is the last."""
    gitlab = GitLabStarred(ServiceSettings("x", base_url="https://gitlab.test"))
    here = "https://gitlab.test/api/v4/users/42/starred_projects?page=2"
    nxt = "https://gitlab.test/api/v4/users/42/starred_projects?page=3"
    c = ctx("gitlab", {"user_id": 42, "next": here, "walk_total": 5, "walk_head": "h", "walk_at": 1.0})
    page = gitlab.parse(c, reply(here, [], {"link": f'<{nxt}>; rel="next"'}))
    assert page.more and page.cursor["next"] == nxt


def test_gitlab_a_next_link_to_the_page_just_fetched_ends_the_walk():
    gitlab = GitLabStarred(ServiceSettings("x", base_url="https://gitlab.test"))
    here = "https://gitlab.test/api/v4/users/42/starred_projects?page=2"
    c = ctx("gitlab", {"user_id": 42, "next": here, "walk_total": 5, "walk_head": "h", "walk_at": 1.0})
    page = gitlab.parse(c, reply(here, [{"id": 7}], {"link": f'<{here}>; rel="next"'}))
    assert not page.more and "next" not in page.cursor and page.cursor["total"] == 5


def test_mastodon_a_next_link_with_the_max_id_just_sent_ends_the_backfill():
    """Mastodon: "you will have to parse the HTTP Link header"; a rel="next" naming the max_id this page was
    asked with would repeat the page forever."""
    masto = MastodonFavourites(ServiceSettings("x", base_url="https://masto.test"))
    here = "https://masto.test/api/v1/favourites?limit=40&max_id=500"
    link = f'<{here}>; rel="next", <https://masto.test/api/v1/favourites?min_id=600>; rel="prev"'
    c = ctx("mastodon_favourites", {"max_id": "500", "min_id": "900"})
    page = masto.parse(c, reply(here, [{"id": "1", "content": "<p>x</p>"}], {"link": link}))
    assert not page.more and page.cursor == {"min_id": "900"}
