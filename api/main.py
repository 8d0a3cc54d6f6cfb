"""The FastAPI application: `uvicorn api.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.auth import KeyRing
from api.body_limit import BodySizeLimit
from api.deps import AppState
from api.errors import install_error_handlers
from api.group_commit import SubmissionGroups
from api.routes import admin, dead_letters, health, jobs, metrics, scheduler, stats, stream, workers
from api.stream import EventHub
from queue_service.db import make_engine
from queue_service.job_types import load_job_modules
from queue_service.logging import configure_logging, get_logger
from queue_service.rabbitmq.broker import build_broker, process_name
from queue_service.repository import pool as pool_repo
from queue_service.settings import Settings, get_settings

log = get_logger(__name__)


# Every router of the API, in the order they are matched.
ROUTERS = [
    jobs.submissions,
    jobs.reads,
    *(m.router for m in (stream, dead_letters, scheduler, stats, metrics, workers, health, admin)),
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, process="api")
    load_job_modules(settings.job_modules)  # TASKQ_JOB_MODULES: registers the job types
    # A malformed TASKQ_API_KEYS stops the start (the message names no secret). No key at
    # all is allowed but loud: every protected route then answers 401, never runs open.
    api_keys = KeyRing.parse(settings.api_keys.get_secret_value())
    if api_keys:
        log.info("api_keys_loaded", keys=len(api_keys.entries))
    else:
        log.warning(
            "api_keys_missing",
            message="TASKQ_API_KEYS is empty: every route but /, /healthz, /readyz and "
            "/metrics answers 401. Set it (scope:secret,...) or start with scripts/run.sh, "
            "which generates an admin key into .taskq/api-key.",
        )

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
        "`status`. Authenticate with the `Authorization: Bearer <key>` header, or (from a "
        'browser) send `{"token": "<key>"}` as the first message; nothing is streamed before '
        "the key is accepted, and a missing or bad key gets an `error` message and close "
        "code 1008. The first message after that is `{event: subscribed, listening}`.\n\n"
        "Authentication: every route but `/healthz`, `/readyz`, `/metrics` and the admin "
        "page `/` needs `Authorization: Bearer <key>`. Scopes: `read` (GET routes, the "
        "stream) < `submit` (also POST /jobs, /jobs/batch, cancel) < `admin` (also dead "
        "letters' replay and discard, scheduler pause and resume).",
        lifespan=lifespan,
    )
    app.state.api_keys = api_keys
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    # The console's scripts and styles (vendored libraries included: it works offline).
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app


app = create_app()
