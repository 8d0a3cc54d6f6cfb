"""The console during scenario 4 (resource contention): the dashboard shows the pool in
use and ready jobs waiting for tokens, and its live charts fill from the stream. The
screenshot (docs/console-scenario-4.png in the README) is taken here."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import AUTH, open_console
from tests.conftest import ProductFactory
from tests.support.product import wait_until
from tests.support.scenarios import load_scenario

SCENARIO = load_scenario("4_resource_contention")


def test_dashboard_during_resource_contention(
    page: Page, start_product: ProductFactory, tmp_path: Path
) -> None:
    product = start_product(workers=2, TASKQ_DURATION_SCALE="0.4")
    open_console(page, product)
    warmup = [product.submit({"type": "noop"})["job_id"] for _ in range(10)]
    product.wait_all_terminal(warmup)

    response = product.http.post("/jobs/batch", json={"jobs": SCENARIO["jobs"]}, headers=AUTH)
    assert response.status_code == 201, response.text

    # The pool is in use and jobs wait for tokens: the dashboard says so, live.
    expect(page.locator("#cpu-text")).not_to_have_text("0 / 8 used", timeout=10_000)
    wait_until(
        lambda: page.locator("#finished-total").inner_text().split()[0] not in ("0", "10"),
        30,
        message="completions counted from the stream",
    )
    page.screenshot(path=str(tmp_path / "console-scenario-4.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'console-scenario-4.png'}")
    ids = [job["job_id"] for job in SCENARIO["jobs"]]
    product.wait_all_terminal(ids, timeout=120)
