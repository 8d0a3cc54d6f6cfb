"""Group commit for `POST /jobs`: concurrent submissions share one transaction.

Each request puts its job on a queue and awaits its answer. One task per api process
takes whatever is queued (at once when idle, so a lone request waits for nobody), stores
the group in one transaction in a worker thread (`submission.submit_jobs`), commits and
answers every request. While one group commits the next one gathers, so under load many
requests share each commit. The durability promise is unchanged: a request is answered
only after the transaction holding its job committed.

Admission of what was stored runs beside that loop, not before the answer (the answer
never showed it: `accepted_jobs` is read before the commit): one admitter task per api
process runs `admit_after_commit` when a group or a batch stored a ready job, once for
all that were stored while it ran. A crash between the commit and the admission loses
nothing: the next worker batch or the maintenance ticker admits the job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import sqlalchemy as sa

from api.schemas import POSITION_CAP, JobAccepted
from queue_service import errors
from queue_service.db import in_transaction, relaxed_commit
from queue_service.logging import get_logger
from queue_service.model import JobStatus
from queue_service.rabbitmq.broker import TaskQueueBroker
from queue_service.rabbitmq.publishing import commit_then_publish
from queue_service.repository import jobs as jobs_repo
from queue_service.scheduling import admit_ready_jobs
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_jobs

log = get_logger(__name__)

MAX_GROUP = 256


@dataclass(frozen=True)
class Answer:
    accepted: JobAccepted
    created: bool


def accepted_jobs(
    conn: sa.Connection, jobs: Sequence[Any], ranked: jobs_repo.RankedAhead | None = None
) -> list[JobAccepted]:
    """The answers to submissions; `position_in_queue` only while a job waits for tokens.
    One count for all of them: the walk taken with the insert (`ranked`) when it covers
    them, else `positions_in_queue`."""
    waiting = [
        (job.rank, job.seq)
        for job in jobs
        if job.status == JobStatus.PENDING and job.queued_at is None
    ]
    if ranked is not None and ranked.covers(waiting):
        places = ranked.places(waiting)
    else:
        places = jobs_repo.positions_in_queue(conn, waiting, POSITION_CAP)
    positions = dict(zip(waiting, places, strict=True))
    return [
        JobAccepted(
            job_id=job.id,
            status=job.status,
            created_at=job.created_at,
            priority=job.priority,
            position_in_queue=positions.get((job.rank, job.seq)),
        )
        for job in jobs
    ]


class SubmissionGroups:
    def __init__(self, engine: sa.Engine, settings: Settings, broker: TaskQueueBroker) -> None:
        self._engine = engine
        self._settings = settings
        self._broker = broker
        self._queue: asyncio.Queue[tuple[JobSpec, asyncio.Future[Answer]]] = asyncio.Queue()
        self._admission_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._admit())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def admit_soon(self) -> None:
        """Ask the admitter for a pass (ready jobs were committed). Safe from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._admission_wanted.set)

    async def _admit(self) -> None:
        """One admission pass at a time; a request for one while it runs makes one more."""
        while True:
            await self._admission_wanted.wait()
            self._admission_wanted.clear()
            try:
                await anyio.to_thread.run_sync(
                    admit_after_commit,
                    self._engine,
                    self._settings,
                    self._broker,
                    datetime.now(UTC),
                )
            except Exception as error:  # the jobs are stored: a worker or the ticker admits
                log.warning("admission_after_submit_failed", error=type(error).__name__)

    async def submit(self, spec: JobSpec) -> Answer:
        """Store `spec` (which carries its job id) with whatever else is being submitted."""
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self._queue.put((spec, answer))
        return await answer

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                answers = await anyio.to_thread.run_sync(self._store, [spec for spec, _ in group])
            except Exception as error:  # PostgreSQL unreachable: every request learns it
                answers = [error] * len(group)
            for (_, future), answer in zip(group, answers, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
            if any(
                isinstance(a, Answer) and a.created and a.accepted.status == JobStatus.PENDING
                for a in answers
            ):
                self._admission_wanted.set()

    def _store(self, specs: Sequence[JobSpec]) -> list[Answer | Exception]:
        """One transaction for the group; if it fails as a whole (a constraint a spec
        broke), each spec is stored on its own so one bad request fails alone."""
        try:
            return self._store_together(specs)
        except sa.exc.DBAPIError as error:
            if len(specs) == 1 or error.connection_invalidated:
                raise
            log.warning("group_commit_split", size=len(specs), error=type(error.orig).__name__)
            answers: list[Answer | Exception] = []
            for spec in specs:
                try:
                    answers += self._store_together([spec])
                except Exception as alone:
                    answers.append(alone)
            return answers

    def _store_together(self, specs: Sequence[JobSpec]) -> list[Answer | Exception]:
        now = datetime.now(UTC)

        def store(conn: sa.Connection) -> list[Answer | Exception]:
            results, ranked = submit_jobs(conn, self._settings, specs, now, POSITION_CAP)
            submitted = [r for r in results if not isinstance(r, errors.TaskQueueError)]
            accepted = iter(accepted_jobs(conn, [r.job for r in submitted], ranked))
            return [
                result
                if isinstance(result, errors.TaskQueueError)
                else Answer(next(accepted), result.created)
                for result in results
            ]

        return in_transaction(self._engine, store)


def admit_after_commit(
    engine: sa.Engine, settings: Settings, broker: TaskQueueBroker, now: datetime
) -> None:
    """Admit what was just committed, in a transaction of its own that neither waits for
    a busy pool row (SKIP LOCKED: the admitter holding it, the next worker batch or the
    ticker admits these jobs) nor holds it across a disk sync (admission is re-derived)."""
    commit_then_publish(
        engine,
        broker,
        lambda conn: admit_ready_jobs(relaxed_commit(conn), settings, now, wait=False),
    )
