"""item_key is the items' primary key: its text must never change (stored _ids would stop matching)."""

import json

from hypothesis import given
from hypothesis import strategies as st

from collector.documents import item_key, key_prefix


def reference(user, service, item_id):
    """The definition the stored _ids were written with: the compact JSON array [service, user, itemId]."""
    return json.dumps([service, user if isinstance(user, str | int) else str(user), item_id],
                      separators=(",", ":"), ensure_ascii=False)


users = st.one_of(st.text(), st.integers(), st.booleans(), st.floats(allow_nan=False), st.none())
ids = st.one_of(st.text(), st.integers())


@given(users, st.text(), ids)
def test_item_key_is_the_json_array_of_service_user_and_id(user, service, item_id):
    assert item_key(user, service, item_id) == reference(user, service, item_id)
    assert item_key(user, service, item_id, key_prefix(user, service)) == reference(user, service, item_id)


def test_item_keys_are_unambiguous():
    assert item_key("a,b", "s", "c") != item_key("a", "s", "b,c")
    assert item_key("u", "s", "1") != item_key("u", "s", 1)
    assert item_key("u", "s", '"]') == '["s","u","\\"]"]'
