"""The state mover: every move is an allowed transition, checked before any SQL runs, and
no module but queue_service/transitions.py writes a job's status."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from queue_service import transitions
from queue_service.model import ALLOWED_TRANSITIONS, JobStatus
from queue_service.transitions import MOVES, IllegalTransition, Move

ROOT = Path(__file__).resolve().parents[2]


def test_every_move_is_allowed_and_together_they_cover_the_state_machine() -> None:
    moved = {(s, t) for move in MOVES for s in move.sources for t in move.targets}
    allowed = {(s, t) for s, targets in ALLOWED_TRANSITIONS.items() for t in targets}
    assert moved == allowed


@pytest.mark.parametrize(
    ("sources", "targets"),
    [
        ({JobStatus.PENDING}, {JobStatus.COMPLETED}),
        ({JobStatus.COMPLETED}, {JobStatus.PENDING}),
        ({JobStatus.RUNNING, JobStatus.BLOCKED}, {JobStatus.CANCELLED, JobStatus.FAILED}),
        (set(), {JobStatus.PENDING}),
    ],
)
def test_an_illegal_move_cannot_be_built(sources: set[JobStatus], targets: set[JobStatus]) -> None:
    with pytest.raises(IllegalTransition):
        Move("bad", frozenset(sources), frozenset(targets))


def test_a_move_renders_only_its_own_targets() -> None:
    assert transitions.UNBLOCK.target(JobStatus.PENDING) == "'pending'"
    assert transitions.CANCEL.guard() == (
        "j.status IN ('blocked', 'pending', 'retrying', 'scheduled')"
    )
    with pytest.raises(IllegalTransition):
        transitions.UNBLOCK.target(JobStatus.RUNNING)


class NoDatabase:
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("SQL ran before the move was checked")


def test_an_outcome_outside_its_move_raises_before_any_sql() -> None:
    outcome = transitions.RecordedOutcome("j1", "pending", None, None, None, None)
    with pytest.raises(IllegalTransition):
        transitions.record_outcomes(NoDatabase(), [outcome], datetime.now(UTC))  # type: ignore[arg-type]


_UPDATE_JOBS = re.compile(
    r"UPDATE\s+jobs\b(?:\s+\w+)?\s+SET\s+(.*?)(?:\bFROM\b|\bWHERE\b|\bRETURNING\b|$)",
    re.IGNORECASE | re.DOTALL,
)
_SETS_STATUS = re.compile(r"(?:^|[\s,])(?:\w+\.)?status\s*=", re.IGNORECASE)


def _strings(tree: ast.AST) -> list[str]:
    """Every string literal, f-strings with their literal parts (adjacent literals are one)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append(
                "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
            )
    return found


def test_no_module_but_transitions_writes_a_status() -> None:
    writers = set()
    for package in ("queue_service", "api", "actors"):
        for path in (ROOT / package).rglob("*.py"):
            for text in _strings(ast.parse(path.read_text())):
                for match in _UPDATE_JOBS.finditer(text):
                    if _SETS_STATUS.search(match.group(1)):
                        writers.add(str(path.relative_to(ROOT)))
    assert writers == {"queue_service/transitions.py"}
