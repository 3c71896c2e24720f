"""store.mongo_safe: keys a document cannot hold are made safe; what needs no change is not copied."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.documents import mongo_safe
from tests.conftest import fixture_json


def test_dollar_and_dot_keys_are_replaced_at_any_depth():
    raw = {"$type": "app.bsky.feed.like", "ok": 1, "a.b": {"$x": [1, {"c.d": 2}, (3, {"$y": 4})]}, 5: "five"}
    safe = mongo_safe(raw)
    assert safe == {"\uff04type": "app.bsky.feed.like", "ok": 1,
                    "a\uff0eb": {"\uff04x": [1, {"c\uff0ed": 2}, [3, {"\uff04y": 4}]]}, "5": "five"}
    assert list(safe) == ["\uff04type", "ok", "a\uff0eb", "5"]  # the order of the keys is kept
    assert raw["$type"] == "app.bsky.feed.like" and "a.b" in raw  # the payload itself is not modified


@pytest.mark.recorded
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


def reference(value, depth=0):
    """The rule, key by key and copying everything: what mongo_safe must equal."""
    if depth > 64:
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = str(k) if not isinstance(k, str) else k
            if isinstance(k, str):
                key = (("\uff04" + k[1:]) if k.startswith("$") else k).replace(".", "\uff0e")
            out[key] = reference(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [reference(v, depth + 1) for v in value]
    return value


def lists(value):
    """Tuples as lists (BSON has arrays only; a tuple left unchanged stays a tuple)."""
    if isinstance(value, dict):
        return {k: lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [lists(v) for v in value]
    return value


keys = st.one_of(st.sampled_from(["$", ".", "\0", "\0$", "a.b", "$a", "a$", "", "x"]), st.text(max_size=4),
                 st.integers(-3, 3))
payloads = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5),
                                                st.tuples(inner, inner)), max_leaves=30)


@given(payloads)
def test_mongo_safe_equals_the_key_by_key_rule_and_never_modifies_its_input(payload):
    before = repr(payload)
    assert lists(mongo_safe(payload)) == reference(payload)
    assert repr(payload) == before
