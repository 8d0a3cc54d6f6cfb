"""The FastAPI application: `uvicorn api.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.deps import AppState
from api.errors import install_error_handlers
from api.group_commit import SubmissionGroups
from api.routes import admin, dead_letters, health, jobs, metrics, scheduler, stats, stream, workers
from api.stream import EventHub
from queue_service.broker import build_broker, process_name
from queue_service.db import make_engine
from queue_service.job_types import load_job_modules
from queue_service.logging import configure_logging
from queue_service.repository import pool as pool_repo
from queue_service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, process="api")
    load_job_modules(settings.job_modules)  # TASKQ_JOB_MODULES: registers the job types

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings, pool_size=20)
        broker = build_broker(settings, connection_name=process_name("api"))
        try:
            with engine.begin() as conn:
                pool_repo.set_capacity(conn, settings.pool_cpu_units, settings.pool_memory_mb)
        except Exception:  # PostgreSQL down at start: /readyz reports it, routes answer 503
            pass
        hub = EventHub(settings.database_url)
        hub.start()
        submissions = SubmissionGroups(engine, settings, broker)
        submissions.start()
        app.state.taskq = AppState(
            settings=settings, engine=engine, broker=broker, hub=hub, submissions=submissions
        )
        try:
            yield
        finally:
            await submissions.stop()
            await hub.stop()
            broker.close()
            engine.dispose()

    app = FastAPI(
        title="Smart Task Queue",
        version="0.1.0",
        description="Background jobs with priorities, dependency DAGs, resource tokens, "
        "retries with backoff and a dead-letter exchange. Every error is "
        '`{"error": {"code", "message", "details"}}`.\n\n'
        "Live events: WebSocket `WS /jobs/stream` (not listed below: OpenAPI has no "
        "WebSockets) sends `{event, job_id, type, status, previous_status, attempt, at}` "
        "for every status change; optional query filters `job_id` (repeatable), `type`, "
        "`status`. The first message is `{event: subscribed, listening}`.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # The console's scripts and styles (vendored libraries included: it works offline).
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    for module in (jobs, stream, dead_letters, scheduler, stats, metrics, workers, health, admin):
        app.include_router(module.router)
    return app


app = create_app()
