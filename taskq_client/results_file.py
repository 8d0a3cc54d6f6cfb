"""Writing one section of evaluation_results.md, leaving the others alone."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting with `heading` (or append it) in the results file."""
    text = path.read_text() if path.exists() else "# Evaluation results\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if end == -1 else text[end + 1 :])
    path.write_text(text)
