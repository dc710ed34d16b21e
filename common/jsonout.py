"""The one JSON rendering of every tool's JSON output (stdout documents, the health endpoint):
indented 2, UTF-8 as is, one trailing newline, so `jq` and diffs see the same shape everywhere."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def render_json(doc: Any, *, default: Callable[[Any], Any] | None = str) -> str:
    """`doc` as indented JSON text ending in a newline; values JSON has no type for go through
    `default` (str: datetimes and paths print as text)."""
    return json.dumps(doc, indent=2, ensure_ascii=False, default=default) + "\n"
