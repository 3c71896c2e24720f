"""Bounded readers of what an API sends, internal (connectors import them from collector.sdk):
a JSON body with caps on its elements and its nesting, and the text of an HTML fragment. Each takes time
linear in its input and memory its caps bound, whatever a server sends: the server of one network may be
chosen by its user (a Mastodon instance, a self-hosted GitLab), and every network of the process shares its
event loop and its memory."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx

from collector.sdk._errors import BadResponse

# A page of any supported API holds well under this (Spotify's 50 tracks with their markets: ~20,000), and
# this many of the costliest element (`{}` in an array: ~70 bytes parsed) stay under ~15 MiB.
MAX_ITEMS = 200_000
# MongoDB refuses documents nested deeper than 100 levels: a page's items (their raw payload) stay well inside.
MAX_DEPTH = 64


def json_body(response: httpx.Response, kind: type | tuple[type, ...] = dict, max_items: int = MAX_ITEMS,
              max_depth: int = MAX_DEPTH) -> Any:
    """The JSON body, checked to be of `kind` (BadResponse otherwise, naming what came instead), within
    `max_items` elements and `max_depth` levels of nesting (BadResponse naming the cap otherwise)."""
    data = json_value(response.content, max_items, max_depth)
    if not isinstance(data, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadResponse(f"expected a JSON {want}, got {type(data).__name__}")
    return data


def json_value(raw: bytes, max_items: int = MAX_ITEMS, max_depth: int = MAX_DEPTH) -> Any:
    """`raw` parsed as JSON within the caps. The elements are bounded before parsing, from a count of the
    bytes that can start one (every element but the first of an array or object follows a comma): the C
    parser holds the GIL for its whole run, so a body it would spend a second and hundreds of MiB on (10 MB
    of `{},`) is refused up front, in milliseconds. Commas and brackets inside strings count too: a bound
    over the true number, which a real page stays far below. The nesting is checked after the parse, without
    recursion; one too deep for the parser itself (its RecursionError) is refused the same way.
    json.JSONDecodeError and UnicodeDecodeError go through: the engine reports them as bad JSON."""
    opens = raw.count(b"[") + raw.count(b"{")
    bound = raw.count(b",") + opens + 1
    if bound > max_items:
        raise BadResponse(f"JSON body over the cap of {max_items} elements (up to {bound})")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadResponse(f"JSON body nested deeper than the cap of {max_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise BadResponse(f"JSON body holds an unreadable value: {str(exc)[:100]}") from None
    if opens > max_depth and _deeper(data, max_depth):
        raise BadResponse(f"JSON body nested deeper than the cap of {max_depth} levels")
    return data


def _deeper(data: Any, max_depth: int) -> bool:
    """True when `data` nests arrays and objects more than `max_depth` levels deep (a loop, not recursion)."""
    stack = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


MAX_MARKUP = 16 * 1024  # of an HTML fragment, read for its text: a status is at most a few KB
_BREAK = re.compile(r"\s*(?:br|/p)\b", re.IGNORECASE)


def html_text(markup: str, max_markup: int = MAX_MARKUP) -> str:
    """The text of an HTML fragment on one line: tags and comments dropped, a line break or a paragraph's end
    a space, character references decoded, whitespace collapsed. Only the first `max_markup` characters are
    read, and a tag or comment left open ends the text. Linear in the input: one forward scan (str.find),
    never a regex that backtracks and never html.parser, which takes time quadratic in some unclosed
    constructs before Python 3.11.13 (gh-135462)."""
    source = markup[:max_markup]
    parts = []
    at = 0
    while at < len(source):
        start = source.find("<", at)
        if start < 0:
            parts.append(source[at:])
            break
        parts.append(source[at:start])
        comment = source.startswith("<!--", start)
        end = source.find("-->" if comment else ">", start + 1)
        if end < 0:
            break
        if not comment and _BREAK.match(source, start + 1, end):
            parts.append(" ")
        at = end + (3 if comment else 1)
    return " ".join(html.unescape("".join(parts)).split())


# an item id is part of a unique index key: MongoDB's index keys stay well under 1 KB with this
MAX_ID = 512


def item_id(value: Any, what: str = "id") -> str:
    """The text of an item's id as the reply gives it: an integer, or a non-blank string of at most MAX_ID
    characters. Anything else (null, a boolean, a float, a container, "") is a BadResponse, never an item stored
    under `str()` of junk, where distinct junk ids would collapse into one item."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= MAX_ID:
        return value
    shown = repr(value)[:40]
    raise BadResponse(f"an item whose {what} is not an integer or a non-blank string: {shown}")
