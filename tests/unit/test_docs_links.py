"""Every relative link of README.md and docs/*.md leads somewhere: the file exists, and a `#anchor` names a heading
of the page it points to (GitHub's anchors: the heading's text, lowercased, punctuation dropped, spaces as `-`,
a repeated heading suffixed -1, -2...). External links (http, https, mailto) are not fetched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`+[^`]*`+")
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link or a `#` there is code, not markdown)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[str]:
    found = []
    for line in prose(page.read_text()):
        definition = DEFINITION.match(line)
        if definition:
            found.append(definition.group(1))
            continue
        found += INLINE.findall(CODE_SPAN.sub("", line))
    return found


def broken(page: Path) -> list[str]:
    """Each relative link of `page` that leads nowhere, with why."""
    problems = []
    for target in links(page):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken(page) == []


def test_the_pages_link_to_each_other():
    """The README reaches every docs page (none is orphaned) and its links are found at all."""
    readme = links(ROOT / "README.md")
    for doc in PAGES[1:]:
        assert any(t.split("#")[0] == f"docs/{doc.name}" for t in readme), f"README.md does not link {doc.name}"


def test_a_broken_link_and_a_missing_anchor_are_reported(tmp_path):
    (tmp_path / "other.md").write_text(
        "# Other page\n\n## State fields written by the daemon\n\n## Notes\n\n## Notes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page: `code`, and more!\n\n"
        "[ok](other.md#state-fields-written-by-the-daemon) [dup](other.md#notes-1) [self](#page-code-and-more)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [web](https://example.com/x#y)\n"
        "`[in code](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n"
        "[ref]: missing-too.md\n")
    assert broken(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading with the anchor #nowhere in other.md",
        "missing-too.md: no such file",
    ]
