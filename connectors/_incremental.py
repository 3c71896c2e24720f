"""Kept for plugins written against the first SDK: `sweep` now lives in collector.sdk."""

from collector.sdk import sweep

__all__ = ["sweep"]
