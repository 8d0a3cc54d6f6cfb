"""The `taskq` console script, run as a user runs it, against the running product."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from taskq_client.render import SCENARIOS_HEADING
from tests.support.product import BIN, ROOT, Product

SCENARIO_3 = ROOT / "tests" / "scenarios" / "3_complex_dag.json"


def taskq(
    product: Product, cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `taskq ARGS` in `cwd`, pointed at the product by the environment."""
    env = {**os.environ, "TASKQ_URL": product.base_url, "COLUMNS": "200"}
    key = product.http.headers.get("Authorization", "").removeprefix("Bearer ")
    if key:
        env["TASKQ_API_KEY"] = key
    return subprocess.run(
        [str(BIN / "taskq"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_submit_scenario_3_as_it_is_then_watch_exits_0(product: Product, tmp_path: Path) -> None:
    # When scenario 3's file is submitted as it is
    submitted = taskq(product, tmp_path, "submit", str(SCENARIO_3))
    assert submitted.returncode == 0, submitted.stderr

    # Then its six jobs went as one batch, and `taskq watch` follows them to the end
    assert "6 job(s) submitted" in submitted.stdout
    watched = taskq(product, tmp_path, "watch", "--interval", "0.2")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "all 6 job(s) finished" in watched.stdout
    assert product.job("send_notifications")["status"] == "completed"

    # and `taskq job` shows one of them with its logs
    shown = taskq(product, tmp_path, "job", "analyze_market")
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout and "tokens_released" in shown.stdout


def test_watch_exits_1_when_a_job_fails(product: Product, tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text('[{"type": "invalid_operation"}, {"type": "noop"}]')
    assert taskq(product, tmp_path, "submit", "jobs.json").returncode == 0
    watched = taskq(product, tmp_path, "watch", "--interval", "0.2")
    assert watched.returncode == 1
    assert "1 job(s) did not complete" in watched.stderr
    listed = taskq(product, tmp_path, "dlq", "list")
    assert listed.returncode == 0 and "non_retryable_error" in listed.stdout


def test_an_api_error_is_a_message_and_exit_code_3(product: Product, tmp_path: Path) -> None:
    shown = taskq(product, tmp_path, "job", "no_such_job")
    assert shown.returncode == 3
    assert "404" in shown.stderr and "Traceback" not in shown.stderr


@pytest.mark.timeout(240)
def test_scenarios_run_passes_every_scenario_and_writes_its_table(
    product: Product, tmp_path: Path
) -> None:
    # Given a results file with another section
    results = tmp_path / "evaluation_results.md"
    results.write_text("# Evaluation results\n\n## Other\n\nkept\n")

    # When every scenario runs (scenario 5's time limit shrunk with --quick)
    run = taskq(
        product, tmp_path, "scenarios", "run", "--quick", "--write", str(results), timeout=200
    )

    # Then every expectation holds and the table is written into its section
    assert run.returncode == 0, run.stdout + run.stderr
    text = results.read_text()
    assert "## Other\n\nkept" in text
    assert text.count(SCENARIOS_HEADING) == 1
    assert "FAIL" not in text and text.count("| pass |") == 18

    # and a second run replaces the section instead of adding one
    again = taskq(product, tmp_path, "scenarios", "run", "bonus", "--write", str(results))
    assert again.returncode == 0, again.stdout
    assert results.read_text().count(SCENARIOS_HEADING) == 1
