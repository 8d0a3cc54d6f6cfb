"""Unit tests of the dependency-graph checks: cycles, order, batch validation."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from queue_service.dependency_graph import find_cycle, revivable, topological_order, validate_batch
from queue_service.errors import DependencyCycle, DuplicateJobId, UnknownDependency

DEEP = 10_000  # far beyond Python's default recursion limit of 1,000


def _chain(length: int) -> dict[str, list[str]]:
    """n0 <- n1 <- ... : each job depends on the one before it."""
    return {f"n{i}": ([f"n{i - 1}"] if i else []) for i in range(length)}


@pytest.mark.parametrize(
    ("dependencies", "expected"),
    [
        pytest.param({}, None, id="empty"),
        pytest.param({"a": [], "b": ["a"], "c": ["a", "b"]}, None, id="dag"),
        pytest.param({"a": ["a"]}, ["a", "a"], id="self-dependency"),
        pytest.param({"a": ["b"], "b": ["a"]}, ["a", "b", "a"], id="two-cycle"),
        pytest.param(
            {"job_a": ["job_c"], "job_b": ["job_a"], "job_c": ["job_b"]},
            ["job_a", "job_c", "job_b", "job_a"],
            id="bonus-scenario",
        ),
        pytest.param(
            {"x": ["y"], "y": ["z"], "z": ["y"]},
            ["y", "z", "y"],
            id="cycle-reached-from-outside-starts-where-the-walk-entered-it",
        ),
        pytest.param({"a": ["stored_1", "b"], "b": ["stored_2"]}, None, id="external-ids-ignored"),
        pytest.param(
            {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}, None, id="diamond-is-no-cycle"
        ),
        pytest.param(
            {"a": ["b"], "b": [], "c": ["d"], "d": ["e"], "e": ["c"]},
            ["c", "d", "e", "c"],
            id="cycle-in-a-later-component",
        ),
        pytest.param({"a": ["b", "b"], "b": []}, None, id="repeated-dependency"),
        pytest.param(_chain(DEEP), None, id="deep-chain"),
        pytest.param(
            {**_chain(DEEP), "n0": [f"n{DEEP - 1}"]},
            ["n0", *(f"n{i}" for i in range(DEEP - 1, -1, -1))],
            id="deep-cycle",
        ),
    ],
)
def test_find_cycle(dependencies: dict[str, list[str]], expected: list[str] | None) -> None:
    assert find_cycle(dependencies) == expected


@pytest.mark.parametrize(
    ("dependencies", "expected"),
    [
        pytest.param({}, [], id="empty"),
        pytest.param({"c": ["b"], "b": ["a"], "a": []}, ["a", "b", "c"], id="reversed-chain"),
        pytest.param(
            {"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []}, ["a", "c", "b", "d"], id="diamond"
        ),
        pytest.param({"a": ["stored"], "b": []}, ["a", "b"], id="external-ids-ignored"),
        pytest.param({"b": ["a", "a"], "a": []}, ["a", "b"], id="repeated-dependency"),
        pytest.param(
            dict(reversed(_chain(DEEP).items())), [f"n{i}" for i in range(DEEP)], id="deep-chain"
        ),
    ],
)
def test_topological_order(dependencies: dict[str, list[str]], expected: list[str]) -> None:
    assert topological_order(dependencies) == expected


def test_topological_order_rejects_a_cycle() -> None:
    with pytest.raises(DependencyCycle) as raised:
        topological_order({"ok": [], "a": ["b"], "b": ["a"]})
    assert raised.value.details == {"cycle": ["a", "b", "a"]}


@pytest.mark.parametrize(
    ("jobs", "existing_ids"),
    [
        pytest.param([], set(), id="empty"),
        pytest.param([("a", [])], set(), id="single"),
        pytest.param(
            [("c", ["b"]), ("b", ["a"]), ("a", ["stored"])], {"stored"}, id="any-order-plus-stored"
        ),
        pytest.param(
            [(f"j{i}", [f"j{i + 1}"]) for i in range(DEEP)] + [(f"j{DEEP}", [])],
            set(),
            id="deep-chain",
        ),
    ],
)
def test_validate_batch_accepts(
    jobs: Sequence[tuple[str, Sequence[str]]], existing_ids: set[str]
) -> None:
    validate_batch(jobs, existing_ids)


@pytest.mark.parametrize(
    ("jobs", "existing_ids", "error", "message", "details"),
    [
        pytest.param(
            [("a", []), ("b", []), ("a", []), ("b", []), ("a", [])],
            set(),
            DuplicateJobId,
            "duplicate job_id in batch: a, b",
            {"job_ids": ["a", "b"]},
            id="duplicate",
        ),
        pytest.param(
            [("a", ["a"]), ("a", ["missing"])],
            set(),
            DuplicateJobId,
            "duplicate job_id in batch: a",
            {"job_ids": ["a"]},
            id="duplicate-checked-first",
        ),
        pytest.param(
            [("a", ["x", "stored", "y", "x"]), ("b", ["a"]), ("c", ["z"])],
            {"stored"},
            UnknownDependency,
            "unknown dependencies: a -> x, y; c -> z",
            {"unknown": {"a": ["x", "y"], "c": ["z"]}},
            id="unknown",
        ),
        pytest.param(
            [("a", ["b"]), ("b", ["a", "missing"])],
            set(),
            UnknownDependency,
            "unknown dependencies: b -> missing",
            {"unknown": {"b": ["missing"]}},
            id="unknown-checked-before-cycle",
        ),
        pytest.param(
            [("job_a", ["job_c"]), ("job_b", ["job_a"]), ("job_c", ["job_b"])],
            set(),
            DependencyCycle,
            "dependency cycle: job_a -> job_c -> job_b -> job_a",
            {"cycle": ["job_a", "job_c", "job_b", "job_a"]},
            id="bonus-scenario-cycle",
        ),
        pytest.param(
            [("x", ["x"])],
            {"x"},
            DependencyCycle,
            "dependency cycle: x -> x",
            {"cycle": ["x", "x"]},
            id="self-dependency",
        ),
    ],
)
def test_validate_batch_rejects(
    jobs: Sequence[tuple[str, Sequence[str]]],
    existing_ids: set[str],
    error: type[Exception],
    message: str,
    details: object,
) -> None:
    with pytest.raises(error) as raised:
        validate_batch(jobs, existing_ids)
    assert str(raised.value) == message
    assert getattr(raised.value, "details", None) == details


# --- revivable: which cancelled dependents a dead-letter replay brings back ------------


def test_a_replay_revives_the_whole_cancelled_subtree() -> None:
    # A failed; B depends on A, C on B: both were cancelled by A's failure
    cancelled = {"B": {"A": "pending"}, "C": {"B": "cancelled"}}
    assert revivable(cancelled, "A") == ["B", "C"]


def test_a_dependent_with_another_dead_parent_stays_cancelled() -> None:
    # D depends on A and B, both failed; A is replayed, B is still failed
    cancelled = {"D": {"A": "pending", "B": "failed"}, "E": {"D": "cancelled"}}
    assert revivable(cancelled, "A") == []


def test_the_last_dead_parent_replayed_revives_the_dependent() -> None:
    # A was replayed (now completed), B is replayed now
    cancelled = {"D": {"A": "completed", "B": "pending"}}
    assert revivable(cancelled, "B") == ["D"]


def test_a_parent_cancelled_by_request_keeps_its_dependents_cancelled() -> None:
    cancelled = {"D": {"A": "pending", "X": "cancelled"}}
    assert revivable(cancelled, "A") == []
