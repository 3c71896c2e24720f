"""store.mongo_safe: keys a document cannot hold are made safe; what needs no change is not copied."""

from __future__ import annotations

import json

from collector.store import mongo_safe
from tests.conftest import fixture_json


def test_dollar_and_dot_keys_are_replaced_at_any_depth():
    raw = {"$type": "app.bsky.feed.like", "ok": 1, "a.b": {"$x": [1, {"c.d": 2}, (3, {"$y": 4})]}, 5: "five"}
    safe = mongo_safe(raw)
    assert safe == {"\uff04type": "app.bsky.feed.like", "ok": 1,
                    "a\uff0eb": {"\uff04x": [1, {"c\uff0ed": 2}, [3, {"\uff04y": 4}]]}, "5": "five"}
    assert list(safe) == ["\uff04type", "ok", "a\uff0eb", "5"]  # the order of the keys is kept
    assert raw["$type"] == "app.bsky.feed.like" and "a.b" in raw  # the payload itself is not modified


def test_a_clean_payload_is_returned_as_it_is_not_copied():
    repos = fixture_json("github.connector.init.json")
    assert all(mongo_safe(repo) is repo for repo in repos)
    mixed = {"clean": {"deep": [1, 2, {"x": 1}]}, "later": {"$bad": 1}}
    safe = mongo_safe(mixed)
    assert safe is not mixed and safe["clean"] is mixed["clean"]  # only the changed branch is rebuilt
    assert safe == {"clean": {"deep": [1, 2, {"x": 1}]}, "later": {"\uff04bad": 1}}


def test_nesting_deeper_than_64_levels_is_cut_off():
    deep: dict = {"leaf": 1}
    for _ in range(100):
        deep = {"d": deep}
    safe = mongo_safe(deep)
    depth, node = 0, safe
    while isinstance(node, dict):
        node, depth = node["d"] if "d" in node else node["leaf"], depth + 1
    assert node is None and depth == 65
    assert len(json.dumps(safe)) < len(json.dumps(deep))
