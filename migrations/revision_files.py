"""Earlier revision files, loaded by path.

A revision that edits a function an earlier revision created starts from that revision's
text (its `flush_function()`, say), so each step stays readable as a change. Revision
files are not an importable package (their names start with digits), hence the loading
by path. alembic.ini's `prepend_sys_path = .` puts the project root on sys.path, which
makes this module importable from a revision.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).with_name("versions")


def load_revision(file_name: str) -> ModuleType:
    """The revision file `file_name` of migrations/versions, as a module of its own."""
    path = VERSIONS / file_name
    spec = importlib.util.spec_from_file_location(f"taskq_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
