"""The sandbox's removals (un-star, un-like...) and restorations, through its control API: every emulated API lists
`user.items`, so an item removed there is gone from every API until restored, in its place."""

from __future__ import annotations

import httpx

SANDBOX_PAGE_CAP = 100  # the sandbox_server fixture's: one page lists a user's whole history


def test_remove_and_restore_keep_newest_first(sandbox_server):
    box = sandbox_server.sandbox
    box.add_user("github", "removals-1", 6)
    control = f"{sandbox_server.url}/_sandbox/users/removals-1"
    gone = httpx.post(f"{control}/remove", json={"ids": [5, 2, 99]}).json()
    assert gone == {"ids": [5, 2], "items": 4, "removed": 2}  # 99 was never there
    starred = httpx.get(f"{sandbox_server.url}/user/starred", headers={"Authorization": "Bearer removals-1"}).json()
    assert [entry["repo"]["id"] for entry in starred] == [6, 4, 3, 1]
    back = httpx.post(f"{control}/restore", json={"ids": [2, 7]}).json()
    assert back == {"ids": [2], "items": 5, "removed": 1}
    box.add_items("removals-1", 1)  # a new star (id 7) lands on top, as always
    assert box.restore_items("removals-1", [5]) == [5]
    assert [item["id"] for item in box.users["removals-1"].items] == [7, 6, 5, 4, 3, 2, 1]
    assert box.remove_items("removals-1", [1]) == [1] and box.remove_items("removals-1", [1]) == []


def test_an_unknown_user_or_a_bad_id_is_refused(sandbox_server):
    assert httpx.post(f"{sandbox_server.url}/_sandbox/users/nobody/remove", json={"ids": [1]}).status_code == 404
    sandbox_server.sandbox.add_user("github", "removals-2", 2)
    assert httpx.post(f"{sandbox_server.url}/_sandbox/users/removals-2/remove", json={"ids": ["x"]}).status_code == 400
