"""Limits on the JSON documents a job carries: payload, result, log and progress data.

PostgreSQL stores a `jsonb` nested hundreds of levels deep, but such a document cannot be
serialized back (the JSON encoder stops at a depth of a few hundred), so every later read
of the job would fail. Documents are therefore refused, or replaced, past a fixed depth
before they are stored: payloads at submission (422), results at the attempt's end (the
job fails without retry), log and progress data at the handler's call (stored as text).
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 32


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a tree of dicts and lists: never a Python
    object graph, which may hold cycles): 0 for a scalar, 1 for a flat object or array."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest
