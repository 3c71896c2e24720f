"""collector/sandbox/payloads.py: full-size GitHub repositories generated from GitHub's documented schema.

The field names and types below are copied from GitHub's REST API description (github/rest-api-description,
descriptions/api.github.com/api.github.com.2022-11-28.json: components.schemas.repository, simple-user,
nullable-license-simple), so that a field the generator drops, renames or mistypes fails here. (The tests read
nothing beside the clone: the description is not read at test time.)
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from datetime import datetime

from collector.sandbox.payloads import OMITTED, OMITTED_LICENSE, OMITTED_OWNER, github_repository
from tests.conftest import ROOT

REPOSITORY = (
    "id", "node_id", "name", "full_name", "license", "forks", "permissions", "owner", "private", "html_url",
    "description", "fork", "url", "archive_url", "assignees_url", "blobs_url", "branches_url", "collaborators_url",
    "comments_url", "commits_url", "compare_url", "contents_url", "contributors_url", "deployments_url",
    "downloads_url", "events_url", "forks_url", "git_commits_url", "git_refs_url", "git_tags_url", "git_url",
    "issue_comment_url", "issue_events_url", "issues_url", "keys_url", "labels_url", "languages_url", "merges_url",
    "milestones_url", "notifications_url", "pulls_url", "releases_url", "ssh_url", "stargazers_url", "statuses_url",
    "subscribers_url", "subscription_url", "tags_url", "teams_url", "trees_url", "clone_url", "mirror_url",
    "hooks_url", "svn_url", "homepage", "language", "forks_count", "stargazers_count", "watchers_count", "size",
    "default_branch", "open_issues_count", "is_template", "topics", "has_issues", "has_projects", "has_wiki",
    "has_pages", "has_downloads", "has_discussions", "has_pull_requests", "pull_request_creation_policy",
    "archived", "disabled", "visibility", "pushed_at", "created_at", "updated_at", "allow_rebase_merge",
    "temp_clone_token", "allow_squash_merge", "allow_auto_merge", "delete_branch_on_merge", "allow_update_branch",
    "use_squash_pr_title_as_default", "squash_merge_commit_title", "squash_merge_commit_message",
    "merge_commit_title", "merge_commit_message", "allow_merge_commit", "allow_forking",
    "web_commit_signoff_required", "open_issues", "watchers", "master_branch", "starred_at",
    "anonymous_access_enabled", "code_search_index_status",
)
REPOSITORY_REQUIRED = (
    "archive_url", "assignees_url", "blobs_url", "branches_url", "collaborators_url", "comments_url", "commits_url",
    "compare_url", "contents_url", "contributors_url", "deployments_url", "description", "downloads_url",
    "events_url", "fork", "forks_url", "full_name", "git_commits_url", "git_refs_url", "git_tags_url", "hooks_url",
    "html_url", "id", "node_id", "issue_comment_url", "issue_events_url", "issues_url", "keys_url", "labels_url",
    "languages_url", "merges_url", "milestones_url", "name", "notifications_url", "owner", "private", "pulls_url",
    "releases_url", "stargazers_url", "statuses_url", "subscribers_url", "subscription_url", "tags_url",
    "teams_url", "trees_url", "url", "clone_url", "default_branch", "forks", "forks_count", "git_url",
    "has_downloads", "has_issues", "has_projects", "has_wiki", "has_pages", "homepage", "language", "archived",
    "disabled", "mirror_url", "open_issues", "open_issues_count", "license", "pushed_at", "size", "ssh_url",
    "stargazers_count", "svn_url", "watchers", "watchers_count", "created_at", "updated_at",
)
INTEGERS = ("id", "forks", "forks_count", "stargazers_count", "watchers_count", "size", "open_issues_count",
            "open_issues", "watchers")
BOOLEANS = ("private", "fork", "is_template", "has_issues", "has_projects", "has_wiki", "has_pages", "has_downloads",
            "has_discussions", "has_pull_requests", "archived", "disabled", "allow_forking",
            "web_commit_signoff_required")
NULLABLE = ("description", "mirror_url", "homepage", "language", "pushed_at", "created_at", "updated_at", "license")
OWNER = ("name", "email", "login", "id", "node_id", "avatar_url", "gravatar_id", "url", "html_url", "followers_url",
         "following_url", "gists_url", "starred_url", "subscriptions_url", "organizations_url", "repos_url",
         "events_url", "received_events_url", "type", "site_admin", "starred_at", "user_view_type")
OWNER_REQUIRED = ("avatar_url", "events_url", "followers_url", "following_url", "gists_url", "gravatar_id",
                  "html_url", "id", "node_id", "login", "organizations_url", "received_events_url", "repos_url",
                  "site_admin", "starred_url", "subscriptions_url", "type", "url")
LICENSE = ("key", "name", "url", "spdx_id", "node_id", "html_url")
LICENSE_REQUIRED = ("key", "name", "url", "spdx_id", "node_id")
PERMISSIONS_REQUIRED = ("admin", "pull", "push")

SAMPLE = [github_repository(i) for i in range(1, 1001)]


def test_every_field_the_schema_requires_is_there():
    for repo in SAMPLE:
        assert set(REPOSITORY_REQUIRED) <= set(repo), set(REPOSITORY_REQUIRED) - set(repo)
        assert set(OWNER_REQUIRED) <= set(repo["owner"])
        assert set(PERMISSIONS_REQUIRED) <= set(repo["permissions"])
        assert repo["license"] is None or set(LICENSE_REQUIRED) <= set(repo["license"])
    assert sum(repo["license"] is not None for repo in SAMPLE) > 800  # most repositories have one


def test_every_documented_field_is_there_or_left_out_for_a_stated_reason():
    """Nothing undocumented, and every documented field is served unless OMITTED says why not."""
    licensed = next(repo["license"] for repo in SAMPLE if repo["license"])
    for given, documented, omitted in ((SAMPLE[0], REPOSITORY, OMITTED), (SAMPLE[0]["owner"], OWNER, OMITTED_OWNER),
                                       (licensed, LICENSE, OMITTED_LICENSE)):
        assert set(given) | set(omitted) == set(documented)
        assert not set(given) & set(omitted)
        assert all(reason for reason in omitted.values())
    assert not set(REPOSITORY_REQUIRED) & set(OMITTED) and not set(OWNER_REQUIRED) & set(OMITTED_OWNER)


def test_values_have_the_documented_types():
    for repo in SAMPLE:
        for field, value in repo.items():
            if value is None:
                assert field in NULLABLE, field
            elif field in INTEGERS:
                assert type(value) is int and value >= 0, field
            elif field in BOOLEANS:
                assert type(value) is bool, field
            elif field == "topics":
                assert isinstance(value, list) and all(isinstance(t, str) for t in value)
            elif field not in ("owner", "license", "permissions"):
                assert isinstance(value, str), field
        assert all(type(v) is bool for v in repo["permissions"].values())
        assert type(repo["owner"]["id"]) is int and type(repo["owner"]["site_admin"]) is bool
        assert repo["pull_request_creation_policy"] in ("all", "collaborators_only")


def test_values_are_those_of_a_real_repository():
    for repo in SAMPLE:
        full, login = repo["full_name"], repo["owner"]["login"]
        assert re.fullmatch(r"[a-z0-9-]+/[a-z0-9.-]+", full) and full == f"{login}/{repo['name']}"
        api = f"https://api.github.com/repos/{full}"
        assert repo["url"] == api and repo["html_url"] == f"https://github.com/{full}"
        assert repo["issues_url"] == f"{api}/issues{{/number}}"
        assert repo["compare_url"] == f"{api}/compare/{{base}}...{{head}}"
        assert all(repo[f].startswith(api + "/") for f in REPOSITORY if f.endswith("_url") and f not in (
            "html_url", "git_url", "ssh_url", "clone_url", "svn_url", "mirror_url"))
        assert repo["git_url"] == f"git://github.com/{full}.git" and repo["ssh_url"] == f"git@github.com:{full}.git"
        assert repo["clone_url"] == f"https://github.com/{full}.git"
        owner_api = f"https://api.github.com/users/{login}"
        assert all(repo["owner"][f].startswith(owner_api) for f in OWNER_REQUIRED if f.endswith("_url") and f not in (
            "html_url", "avatar_url"))
        assert repo["owner"]["type"] in ("User", "Organization")
        created, pushed, updated = (datetime.strptime(repo[f], "%Y-%m-%dT%H:%M:%SZ")
                                    for f in ("created_at", "pushed_at", "updated_at"))
        assert created <= pushed <= updated
        assert repo["watchers"] == repo["watchers_count"] == repo["stargazers_count"]
        assert repo["forks"] == repo["forks_count"] and repo["open_issues"] == repo["open_issues_count"]
        assert repo["description"] and len(repo["topics"]) == len(set(repo["topics"]))
    assert len({repo["owner"]["login"] for repo in SAMPLE}) > 300 and len({repo["language"] for repo in SAMPLE}) > 10


def test_a_repository_is_about_five_and_a_half_kilobytes_of_json():
    """A modern starred repository: more fields than the 2013 recordings (4.8 KB), names of the same length."""
    sizes = [len(json.dumps(repo)) for repo in SAMPLE]  # as the sandbox serves it
    assert 4_500 <= min(sizes) and max(sizes) <= 6_500
    assert 5_000 <= statistics.mean(sizes) <= 6_000


def test_ids_are_the_index_distinct_and_the_same_every_time():
    assert [repo["id"] for repo in SAMPLE] == list(range(1, 1001))
    assert len({repo["node_id"] for repo in SAMPLE}) == len(SAMPLE)
    assert github_repository(7) == github_repository(7) == SAMPLE[6]
    other = github_repository(7, seed="another")
    assert other["id"] == 7 and other != SAMPLE[6]


def test_the_same_in_another_process():
    """No hash(), clock or process state in the values: another interpreter (another hash seed) gives the same."""
    code = "import json; from collector.sandbox.payloads import github_repository as g; " \
           "print(json.dumps([g(i) for i in (1, 2, 999)]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert json.loads(out) == [SAMPLE[0], SAMPLE[1], SAMPLE[998]]
