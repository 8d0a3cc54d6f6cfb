"""Layering: the api imports nothing from the worker side (`actors`), directly or not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_path(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (
        ROOT.joinpath(*parts).with_suffix(".py"),
        ROOT.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def test_api_imports_nothing_from_actors() -> None:
    # Given every module of api/, and what they reach through the product's own modules
    pending = list((ROOT / "api").rglob("*.py"))
    seen: set[Path] = set()
    offending: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_modules(path):
            if name == "actors" or name.startswith("actors."):
                offending.add(f"{path.relative_to(ROOT)} imports {name}")
                continue
            target = _module_path(name)
            if target is not None:
                pending.append(target)

    # Then none of them imports actors
    assert not offending
    # and the walk really reached the product's modules behind the routes
    assert ROOT / "queue_service" / "lifecycle.py" in seen
