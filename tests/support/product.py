"""Start the real api and worker processes for a test, and talk to them.

Processes are started exactly as scripts/run.sh starts them (uvicorn, the dramatiq
CLI), against the test database and the test RabbitMQ vhost, with per-test settings
passed as TASKQ_* environment variables.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from taskq_client import TaskQueueClient

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# One key per scope for the whole test session; every product started by a test accepts
# them (TASKQ_API_KEYS) and its `http` client sends the admin key.
API_KEYS = {
    scope: f"test-{scope}-{secrets.token_urlsafe(24)}" for scope in ("read", "submit", "admin")
}


def api_keys_env(keys: Mapping[str, str] = API_KEYS) -> str:
    """The TASKQ_API_KEYS value that configures `keys` (scope -> secret)."""
    return ",".join(f"{scope}:{secret}" for scope, secret in keys.items())


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, message: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """SIGKILL goes to the whole process group; any other signal to the main process
        only, as an init system sends it (the dramatiq master forwards it to its worker
        processes, which treat a second SIGTERM as "kill now")."""
        if self.popen.poll() is not None:
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(self.popen.pid, sig)
            else:
                os.kill(self.popen.pid, sig)
            self.popen.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class Product:
    """A running api plus worker processes, and an HTTP client for the api."""

    env: dict[str, str]
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    client: httpx.Client | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None
        return self.client

    def __post_init__(self) -> None:
        # prometheus_client's multiprocess mode, as scripts/run.sh runs it: one empty
        # directory per product, shared by its api and workers.
        if "PROMETHEUS_MULTIPROC_DIR" not in self.env:
            metrics_dir = self.log_dir / f"metrics-{self.api_port}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    @property
    def api(self) -> TaskQueueClient:
        """The product's Python client over `http` (same headers). No idempotency keys are
        added: tests see the jobs exactly as they submitted them."""
        return TaskQueueClient(http=self.http, auto_idempotency_keys=False)

    def key(self, scope: str = "admin") -> str:
        """The secret of this product's key with `scope` (read, submit or admin)."""
        return API_KEYS[scope]

    def client_with(self, scope: str | None) -> httpx.Client:
        """A new client for the api sending the key of `scope`, or no key when None.
        The caller closes it."""
        headers = bearer(self.key(scope)) if scope is not None else {}
        return httpx.Client(base_url=self.base_url, timeout=30, headers=headers)

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] = ()) -> Process:  # type: ignore[assignment]
        log_path = self.log_dir / f"{name}.log"
        env = {
            **os.environ,
            "TASKQ_API_KEYS": api_keys_env(),
            **self.env,
            **dict(extra_env),
        }
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals all its children
        )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def start_api(self, wait_ready: bool = True) -> Process:
        """Start uvicorn; wait for /readyz 200, or only for /healthz 200 when `wait_ready`
        is false (an api whose PostgreSQL or RabbitMQ is meant to be unreachable)."""
        probe = "/readyz" if wait_ready else "/healthz"
        process = self._spawn(
            "api",
            [
                str(BIN / "uvicorn"),
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-config",
                str(ROOT / "api" / "log_config.json"),
            ],
        )
        self.client = self.client_with("admin")

        def ready() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(f"api exited:\n{process.log_tail()}")
            try:
                return self.http.get(probe).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, 0.1, f"the api to answer {probe} with 200")
        return process

    def start_worker(
        self,
        processes: int = 1,
        threads: int = 8,
        name: str = "worker",
        prefetch: int | None = None,
    ) -> Process:
        """Worker processes as scripts/run.sh starts them; prefetch (TASKQ_WORKER_PREFETCH)
        defaults to the product's, four per thread."""
        index = sum(1 for p in self.processes if p.name.startswith(name))
        process = self._spawn(
            f"{name}-{index}",
            [
                str(BIN / "python"),
                "-m",
                "actors.cli",
                "actors.worker",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
            ],
            {"TASKQ_WORKER_PREFETCH": str(prefetch)} if prefetch else {},
        )
        # The worker is up once its log says so for every process.
        wait_until(
            lambda: (
                process.log_path.exists()
                and process.log_path.read_text(errors="replace").count("ready for action")
                >= processes
            ),
            30,
            0.1,
            f"{processes} worker processes to boot",
        )
        return process

    def start_scheduler(self) -> Process:
        """periodiq with the maintenance schedule, as scripts/run.sh starts it."""
        return self._spawn(
            "scheduler",
            [str(BIN / "python"), "-m", "actors.scheduler_cli", "actors.scheduler"],
            {"TZ": "UTC"},
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.client is not None:
            self.client.close()

    # --- conveniences for tests -------------------------------------------------------

    def submit(self, body: Mapping[str, Any], **headers: str) -> dict[str, Any]:
        key = headers.pop("Idempotency-Key", None)
        assert not headers, f"unsupported headers {headers}"
        return self.api.submit(body, idempotency_key=key).model_dump(
            mode="json", exclude={"created"}
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return self.api.get_job(job_id).model_dump(mode="json")

    def wait_for_status(
        self, job_id: str, statuses: set[str] | str, timeout: float = 30
    ) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses
        job = self.api.wait_for(job_id, wanted, timeout=timeout, interval=0.05)
        return job.model_dump(mode="json")

    def wait_all_terminal(
        self, job_ids: list[str], timeout: float = 60
    ) -> dict[str, dict[str, Any]]:
        terminal = {"completed", "failed", "cancelled"}
        return {job_id: self.wait_for_status(job_id, terminal, timeout) for job_id in job_ids}
