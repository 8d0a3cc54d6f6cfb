"""Writing one benchmark's section of evaluation_results.md, leaving the others alone."""

from __future__ import annotations

from taskq_client.results_file import write_section

__all__ = ["write_section"]
