"""Writing one benchmark's section of evaluation_results.md, leaving the others alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taskq_client.results_file import write_section

__all__ = ["report", "write_section"]


def report(results: Any, section_title: str, section: str, results_file: Path | None) -> None:
    """The tail of every benchmark: the raw results as JSON and the markdown section on
    stdout, and the section written into `results_file` when one is given."""
    print(json.dumps(results, indent=1, default=str))
    print(section)
    if results_file:
        write_section(results_file, section_title, section)
