"""Dependency-graph checks for a submission: duplicate ids, unknown dependencies, cycles.

Pure functions over plain data. Every walk is iterative and linear in jobs plus edges, so a
10,000-job batch shaped as one long chain is as cheap as a flat one and never hits Python's
recursion limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence

from queue_service.errors import DependencyCycle, DuplicateJobId, UnknownDependency


def find_cycle(dependencies: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one dependency cycle, or None when the graph is acyclic.

    `dependencies` maps a job id to the ids it depends on. Ids that are not keys of the
    mapping are external (already stored jobs, which cannot depend on new ones) and ignored.

    The cycle is listed in dependency order and closes on its first id: `a` depends on `c`,
    `c` on `b`, `b` on `a` gives `["a", "c", "b", "a"]`. The search is a depth-first walk
    from each key in the mapping's insertion order, following each job's dependencies in
    their given order; the cycle starts at the first of its ids that walk entered. A job that
    depends on itself gives `["x", "x"]`.
    """
    # Position of each id on the current walk's path; ids fully explored are in `done`.
    on_path: dict[str, int] = {}
    done: set[str] = set()
    for root in dependencies:
        if root in done:
            continue
        path: list[str] = [root]
        pending: list[Iterator[str]] = [iter(dependencies[root])]
        on_path[root] = 0
        while path:
            for dependency in pending[-1]:
                if dependency not in dependencies or dependency in done:
                    continue
                start = on_path.get(dependency)
                if start is not None:
                    return [*path[start:], dependency]
                on_path[dependency] = len(path)
                path.append(dependency)
                pending.append(iter(dependencies[dependency]))
                break
            else:
                # Every dependency of the top id is explored: it is not on any cycle.
                finished = path.pop()
                pending.pop()
                del on_path[finished]
                done.add(finished)
    return None


def topological_order(dependencies: Mapping[str, Sequence[str]]) -> list[str]:
    """Order the mapping's keys so that every job comes after the jobs it depends on.

    Kahn's algorithm: ids outside the mapping's keys are ignored, repeated dependencies
    count once, and among jobs that become ready together the mapping's order is kept.
    Raises `DependencyCycle` when no such order exists.
    """
    dependents: dict[str, list[str]] = {job_id: [] for job_id in dependencies}
    unmet: dict[str, int] = {}
    for job_id, depends_on in dependencies.items():
        internal = [d for d in dict.fromkeys(depends_on) if d in dependents]
        unmet[job_id] = len(internal)
        for dependency in internal:
            dependents[dependency].append(job_id)

    ready = deque(job_id for job_id, count in unmet.items() if count == 0)
    order: list[str] = []
    while ready:
        job_id = ready.popleft()
        order.append(job_id)
        for dependent in dependents[job_id]:
            unmet[dependent] -= 1
            if unmet[dependent] == 0:
                ready.append(dependent)

    if len(order) < len(dependencies):
        cycle = find_cycle(dependencies)
        # Kahn leaves jobs unordered only when a cycle exists, so find_cycle finds one.
        assert cycle is not None
        raise _cycle_error(cycle)
    return order


def validate_batch(
    jobs: Sequence[tuple[str, Sequence[str]]], existing_ids: Collection[str]
) -> None:
    """Check the dependency graph of one submission before anything is stored.

    `jobs` holds `(job_id, depends_on)` pairs; a dependency may name a job of the same
    batch (in any order) or one in `existing_ids` (pass a set: it is probed once per
    dependency). Stored jobs cannot depend on new ones, so only the batch can hold a cycle.

    Raises, in this order of checks:
    - `DuplicateJobId` if an id appears twice in the batch (details `{"job_ids": [...]}`);
    - `UnknownDependency` if a dependency is neither in the batch nor stored
      (details `{"unknown": {job_id: [missing ids]}}`);
    - `DependencyCycle` naming one cycle, e.g. `dependency cycle: a -> c -> b -> a`
      (details `{"cycle": [...]}`).
    """
    dependencies: dict[str, Sequence[str]] = {}
    duplicates: dict[str, None] = {}  # a dict keeps first-seen order and counts each id once
    for job_id, depends_on in jobs:
        if job_id in dependencies:
            duplicates[job_id] = None
        else:
            dependencies[job_id] = depends_on
    if duplicates:
        duplicate_ids = list(duplicates)
        raise DuplicateJobId(
            f"duplicate job_id in batch: {', '.join(duplicate_ids)}",
            {"job_ids": duplicate_ids},
        )

    unknown: dict[str, list[str]] = {}
    for job_id, depends_on in dependencies.items():
        missing = [
            d for d in dict.fromkeys(depends_on) if d not in dependencies and d not in existing_ids
        ]
        if missing:
            unknown[job_id] = missing
    if unknown:
        named = "; ".join(f"{job_id} -> {', '.join(ids)}" for job_id, ids in unknown.items())
        raise UnknownDependency(f"unknown dependencies: {named}", {"unknown": unknown})

    cycle = find_cycle(dependencies)
    if cycle is not None:
        raise _cycle_error(cycle)


def _cycle_error(cycle: list[str]) -> DependencyCycle:
    return DependencyCycle(f"dependency cycle: {' -> '.join(cycle)}", {"cycle": cycle})


def revivable(cancelled: Mapping[str, Mapping[str, str]], revived_root: str) -> list[str]:
    """Which jobs cancelled by an upstream failure come back when `revived_root` is replayed.

    `cancelled` maps each such descendant of the root to its parents and their statuses.
    A job comes back only when every parent is back in play: not failed or cancelled, or
    the replayed root, or itself coming back. A job with another parent still dead stays
    cancelled (it comes back when that parent is replayed). Returned in id order.
    """
    dead = {"failed", "cancelled"}
    back: set[str] = set()
    changed = True
    while changed:
        changed = False
        for job_id, parents in cancelled.items():
            if job_id in back:
                continue
            if all(
                parent == revived_root or parent in back or status not in dead
                for parent, status in parents.items()
            ):
                back.add(job_id)
                changed = True
    return sorted(back)
