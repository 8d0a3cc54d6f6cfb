"""One log format: every line an api or worker process writes is a JSON object.

Given a running api and worker (started as scripts/run.sh starts them: uvicorn with its
log config, the worker command), when jobs complete, fail and dead-letter and the
processes stop, then every line of both logs parses as JSON with the common fields, and
the lines of an attempt carry its job_id and attempt.
"""

from __future__ import annotations

import json

from tests.conftest import ProductFactory

COMMON_FIELDS = {"event", "level", "timestamp", "logger", "process", "pid"}


def test_every_line_is_json_with_the_same_fields(start_product: ProductFactory) -> None:
    product = start_product(workers=1)
    ok = product.submit({"type": "noop"})["job_id"]
    bad = product.submit({"type": "invalid_operation"})["job_id"]
    product.wait_all_terminal([ok, bad])
    assert product.http.get("/jobs/missing").status_code == 404

    product.stop()  # shutdown lines too

    lines_by_process: dict[str, list[dict[str, object]]] = {}
    for process in ("api", "worker-0"):
        text = (product.log_dir / f"{process}.log").read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert lines, f"{process} wrote nothing"
        for line in lines:
            assert line.keys() >= COMMON_FIELDS, line
        lines_by_process[process] = lines
    api, worker = lines_by_process["api"], lines_by_process["worker-0"]
    assert {line["process"] for line in api} == {"api"}
    assert {line["process"] for line in worker} == {"worker"}
    assert any(str(line["logger"]).startswith("uvicorn.access") for line in api)
    assert any(str(line["logger"]).startswith("dramatiq") for line in worker)
    # the attempt that failed has its line at INFO, with its job and attempt; a success is
    # DEBUG (the job's event log records it)
    finished = [line for line in worker if line["event"] == "attempt_finished"]
    assert [(line["job_id"], line["attempt"], line["level"]) for line in finished] == [
        (bad, 1, "info")
    ]
    assert ok not in {line.get("job_id") for line in worker}
