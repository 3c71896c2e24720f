"""Full-size GitHub payloads of the project's own: the repository object of GET /user/starred, generated from
GitHub's documented schema (no recorded reply needed).

The fields are those of the `repository` schema, its `simple-user` owner and `nullable-license-simple` license
in GitHub's REST API description (github/rest-api-description, descriptions/api.github.com/
api.github.com.2022-11-28.json, the version connectors/github.py asks for), in the order GitHub's example
reply lists them: every field the schema requires and every other it documents for a starred repository, but
those in OMITTED (with why). `starred_at` is the star+json wrapper's ({starred_at, repo}, the media type the
connector asks for), where the sandbox puts it.

Values are realistic and deterministic: names, descriptions, topics, counts and timestamps are drawn from a
generator seeded with the index (and an optional seed); URLs are built from owner/name the way api.github.com
builds them; node ids the way GitHub's legacy global ids are (base64 of "010:Repository<id>"). About 5.5 KB of
JSON each, as a real starred repository.
"""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from typing import Any

API = "https://api.github.com"
WEB = "https://github.com"

# repository URL fields: the suffix GitHub appends to {API}/repos/{owner}/{name}, in the order it sends them
REPO_URLS = (
    ("archive_url", "/{archive_format}{/ref}"), ("assignees_url", "/assignees{/user}"),
    ("blobs_url", "/git/blobs{/sha}"), ("branches_url", "/branches{/branch}"),
    ("collaborators_url", "/collaborators{/collaborator}"), ("comments_url", "/comments{/number}"),
    ("commits_url", "/commits{/sha}"), ("compare_url", "/compare/{base}...{head}"),
    ("contents_url", "/contents/{+path}"), ("contributors_url", "/contributors"),
    ("deployments_url", "/deployments"), ("downloads_url", "/downloads"), ("events_url", "/events"),
    ("forks_url", "/forks"), ("git_commits_url", "/git/commits{/sha}"), ("git_refs_url", "/git/refs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
)
REPO_URLS_AFTER_GIT = (
    ("issue_comment_url", "/issues/comments{/number}"), ("issue_events_url", "/issues/events{/number}"),
    ("issues_url", "/issues{/number}"), ("keys_url", "/keys{/key_id}"), ("labels_url", "/labels{/name}"),
    ("languages_url", "/languages"), ("merges_url", "/merges"), ("milestones_url", "/milestones{/number}"),
    ("notifications_url", "/notifications{?since,all,participating}"), ("pulls_url", "/pulls{/number}"),
    ("releases_url", "/releases{/id}"),
)
REPO_URLS_AFTER_SSH = (
    ("stargazers_url", "/stargazers"), ("statuses_url", "/statuses/{sha}"), ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"), ("tags_url", "/tags"), ("teams_url", "/teams"),
    ("trees_url", "/git/trees{/sha}"),
)
# owner URL fields: the suffix appended to {API}/users/{login}
USER_URLS = (
    ("followers_url", "/followers"), ("following_url", "/following{/other_user}"), ("gists_url", "/gists{/gist_id}"),
    ("starred_url", "/starred{/owner}{/repo}"), ("subscriptions_url", "/subscriptions"),
    ("organizations_url", "/orgs"), ("repos_url", "/repos"), ("events_url", "/events{/privacy}"),
    ("received_events_url", "/received_events"),
)

FIRST = ("anna", "ben", "carlos", "dana", "emil", "farah", "george", "hana", "ivan", "julia", "kenji", "lena",
         "marco", "nina", "oscar", "priya", "quentin", "rosa", "sven", "tara", "umar", "vera", "wei", "yusuf")
LAST = ("andersen", "brooks", "castillo", "dubois", "eriksson", "fischer", "garcia", "haddad", "ito", "jensen",
        "kowalski", "lindqvist", "moreau", "nakamura", "okafor", "petrov", "quinn", "rossi", "schmidt", "tanaka")
ORGS = ("lattice", "northwind", "bluefin", "cobalt", "driftwood", "ember", "foxglove", "granite", "harbor",
        "ironbark", "juniper", "kestrel", "lumen", "meridian", "nimbus", "orchard", "pinecone", "quartz")
WORDS = ("async", "fast", "tiny", "micro", "open", "simple", "smart", "lazy", "pure", "static", "secure", "hyper")
THINGS = ("json", "http", "cache", "queue", "router", "parser", "logger", "scheduler", "crawler", "config", "cli",
          "orm", "graph", "stream", "proxy", "template", "validator", "markdown", "sync", "metrics", "auth", "diff")
KINDS = ("library", "toolkit", "framework", "client", "server", "engine", "utility", "plugin", "SDK", "daemon")
PURPOSES = ("building REST APIs", "parsing large JSON documents", "background jobs", "static sites",
            "command-line applications", "data pipelines", "real-time dashboards", "testing HTTP services",
            "structured logging", "configuration management", "incremental backups", "typed configuration",
            "distributed tracing", "feature flags", "offline-first apps", "rate limiting")
EXTRAS = ("Zero dependencies.", "Batteries included.", "Written in a weekend, maintained for years.",
          "Fully typed, well tested.", "Inspired by the Unix philosophy.", "Fast by default, safe by design.",
          "Works on Linux, macOS and Windows.", "Production-ready since v1.0.")
LANGUAGES = ("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C", "C++", "Ruby", "Shell", "Kotlin",
             "Swift", "PHP", "Elixir", "Haskell", None)
TOPICS = ("python", "javascript", "golang", "rust", "cli", "http", "json", "api", "database", "async", "testing",
          "devtools", "performance", "security", "linux", "web", "machine-learning", "data", "docker", "kubernetes",
          "parser", "logging", "cache", "open-source", "hacktoberfest", "library", "framework", "automation")
# (key, name, spdx_id) of the licenses GitHub detects most often; node ids as GitHub builds them ("07:License<n>")
LICENSES = (("mit", "MIT License", "MIT"), ("apache-2.0", "Apache License 2.0", "Apache-2.0"),
            ("gpl-3.0", "GNU General Public License v3.0", "GPL-3.0"),
            ("bsd-3-clause", 'BSD 3-Clause "New" or "Revised" License', "BSD-3-Clause"),
            ("bsd-2-clause", 'BSD 2-Clause "Simplified" License', "BSD-2-Clause"),
            ("mpl-2.0", "Mozilla Public License 2.0", "MPL-2.0"),
            ("agpl-3.0", "GNU Affero General Public License v3.0", "AGPL-3.0"),
            ("unlicense", "The Unlicense", "Unlicense"), ("isc", "ISC License", "ISC"))
EPOCH = datetime(2009, 1, 1, tzinfo=UTC)
SPAN = (datetime(2024, 6, 30, tzinfo=UTC) - EPOCH).total_seconds()  # repositories created before mid-2024
LATEST = datetime(2026, 11, 1, tzinfo=UTC)  # last pushes before then

_ADMIN = "a setting GitHub shows only to those who administer the repository (GET /repos/{owner}/{repo})"
# documented properties a starred repository does not carry, and why
OMITTED: dict[str, str] = {
    **dict.fromkeys(("allow_rebase_merge", "allow_squash_merge", "allow_merge_commit", "allow_auto_merge",
                     "allow_update_branch", "delete_branch_on_merge", "use_squash_pr_title_as_default",
                     "squash_merge_commit_title", "squash_merge_commit_message", "merge_commit_title",
                     "merge_commit_message", "temp_clone_token", "anonymous_access_enabled"), _ADMIN),
    "code_search_index_status": "sent by GET /repos/{owner}/{repo} only",
    "master_branch": "deprecated (default_branch; dropped from API version 2026-03-10)",
    "starred_at": "the star+json wrapper's: {starred_at, repo}",
}
OMITTED_OWNER: dict[str, str] = {
    "name": "sent by the user endpoints, not in a repository's owner",
    "email": "sent by the user endpoints, not in a repository's owner",
    "starred_at": "a stargazer list's (GET /repos/{owner}/{repo}/stargazers)",
}
OMITTED_LICENSE: dict[str, str] = {"html_url": "sent by GET /licenses/{license}, not in a repository's license"}


def node_id(kind: str, n: int | str) -> str:
    """GitHub's legacy global node id: base64 of "<type number>:<Type><id>" (e.g. MDEwOlJlcG9zaXRvcnkxMjk2MjY5)."""
    return base64.b64encode(f"{kind}{n}".encode()).decode()


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner(rng: random.Random) -> dict[str, Any]:
    """A simple-user object, a person (~70 %) or an organization: every field of the schema but OMITTED_OWNER."""
    org = rng.random() < 0.3
    if org:
        login = rng.choice(ORGS) + rng.choice(("", "hq", "-labs", "-dev", "io"))
    else:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        login = rng.choice((f"{first[0]}{last}", f"{first}{rng.randrange(1, 99)}", f"{first}-{last}"))
    user_id = rng.randrange(1_000, 160_000_000)
    base = f"{API}/users/{login}"
    return {"login": login, "id": user_id,
            "node_id": node_id("012:Organization" if org else "04:User", user_id),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4", "gravatar_id": "",
            "url": base, "html_url": f"{WEB}/{login}",
            **{field: base + suffix for field, suffix in USER_URLS},
            "type": "Organization" if org else "User", "user_view_type": "public", "site_admin": False}


def _description(rng: random.Random) -> str:
    text = f"{rng.choice(WORDS).capitalize()} {rng.choice(THINGS)} {rng.choice(KINDS)} for {rng.choice(PURPOSES)}"
    return text + (f". {rng.choice(EXTRAS)}" if rng.random() < 0.3 else "")


def _license(rng: random.Random) -> dict[str, Any] | None:
    """A license-simple object (every field but OMITTED_LICENSE), or None: ~12 % have no license GitHub detects."""
    if rng.random() < 0.12:
        return None
    n = rng.randrange(len(LICENSES))
    key, name, spdx = LICENSES[n]
    return {"key": key, "name": name, "spdx_id": spdx, "url": f"{API}/licenses/{key}",
            "node_id": node_id("07:License", n + 1)}


def github_repository(i: int, seed: str = "") -> dict[str, Any]:
    """Repository number `i` (its id) as GET /user/starred returns it: every field of GitHub's `repository`
    schema but those in OMITTED, about 5.5 KB of JSON. The same (i, seed) always gives the same repository;
    another `seed` draws other names and values for the same ids. Build it once and keep it: ~100 us."""
    rng = random.Random(f"github-repository:{seed}:{i}")
    owner = _owner(rng)
    thing = rng.choice(THINGS)
    name = rng.choice((thing, f"{rng.choice(WORDS)}-{thing}", f"{thing}{rng.choice(('.js', '.py', '-rs', 'kit'))}"))
    full = f"{owner['login']}/{name}"
    api = f"{API}/repos/{full}"
    created = EPOCH + timedelta(seconds=rng.uniform(0, SPAN))
    pushed = created + (LATEST - created) * rng.random() ** 0.3
    updated = pushed + timedelta(seconds=rng.uniform(0, 3 * 86_400))
    stars = int(10 ** rng.uniform(0, 5.2))
    forks = int(stars * rng.uniform(0.02, 0.3))
    issues = int(stars * rng.uniform(0, 0.05))
    branch = "main" if created.year >= 2020 or rng.random() < 0.3 else "master"
    homepage = rng.choice((None, "", f"https://{owner['login']}.github.io/{name}/", f"https://{name}.dev"))
    archived = rng.random() < 0.05
    return {
        "id": i, "node_id": node_id("010:Repository", i), "name": name, "full_name": full, "private": False,
        "owner": owner, "html_url": f"{WEB}/{full}", "description": _description(rng),
        "fork": rng.random() < 0.08, "url": api,
        **{field: api + suffix for field, suffix in REPO_URLS},
        "git_url": f"git://github.com/{full}.git",
        **{field: api + suffix for field, suffix in REPO_URLS_AFTER_GIT},
        "ssh_url": f"git@github.com:{full}.git",
        **{field: api + suffix for field, suffix in REPO_URLS_AFTER_SSH},
        "clone_url": f"{WEB}/{full}.git", "mirror_url": None, "hooks_url": f"{api}/hooks", "svn_url": f"{WEB}/{full}",
        "homepage": homepage, "language": rng.choice(LANGUAGES), "forks_count": forks, "stargazers_count": stars,
        "watchers_count": stars, "size": int(10 ** rng.uniform(1, 5.5)), "default_branch": branch,
        "open_issues_count": issues, "is_template": rng.random() < 0.03,
        "topics": sorted(rng.sample(TOPICS, rng.randrange(0, 7))),
        "has_issues": rng.random() < 0.95, "has_projects": rng.random() < 0.8, "has_wiki": rng.random() < 0.7,
        "has_pages": rng.random() < 0.2, "has_downloads": True, "has_discussions": rng.random() < 0.25,
        "has_pull_requests": True, "pull_request_creation_policy": "all", "archived": archived, "disabled": False,
        "visibility": "public", "pushed_at": _time(pushed), "created_at": _time(created),
        "updated_at": _time(updated),
        # what a user who starred, not administers, the repository may do (pull: read)
        "permissions": {"admin": False, "maintain": False, "push": False, "triage": False, "pull": True},
        "allow_forking": True, "web_commit_signoff_required": False,
        "license": _license(rng), "forks": forks, "open_issues": issues, "watchers": stars,
    }
