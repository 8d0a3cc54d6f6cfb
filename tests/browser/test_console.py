"""The operator's console in a real browser (headless Chromium).

Given a running product and the console opened with a key, the jobs list shows a job
submitted through the API and follows it to completion without a reload, its job page
opens from the list, a dead letter is replayed from the console, and axe-core finds no
serious or critical accessibility violation.
"""

from __future__ import annotations

import json
from pathlib import Path

from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import AUTH, SECRET, open_console
from tests.support.product import Product, wait_until

AXE = Path(__file__).parent / "vendor" / "axe.min.js"


def test_the_key_is_asked_once_and_sent_as_a_bearer_header(
    page: Page, console_product: Product
) -> None:
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r) if "/stats/overview" in r.url else None)

    open_console(page, console_product)
    expect(page.locator("#cpu-text")).to_contain_text("/ 8 used")
    page.reload()  # the key survives a reload (sessionStorage), no form again
    expect(page.locator("#key-input")).to_be_hidden()
    expect(page.locator("#cpu-text")).to_contain_text("/ 8 used")

    assert requests
    for request in requests:
        headers = request.all_headers()
        assert headers.get("authorization") == f"Bearer {SECRET}"
        assert "cookie" not in headers


def test_jobs_list_follows_a_submitted_job_to_completion(
    page: Page, console_product: Product
) -> None:
    open_console(page, console_product, "jobs")

    job_id = console_product.submit({"type": "noop", "payload": {"duration_seconds": 1.5}})[
        "job_id"
    ]

    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("completed", timeout=20_000)  # no reload

    row.get_by_role("link", name=job_id).click()
    expect(page.locator("#job-title")).to_contain_text(job_id)
    expect(page.locator("#job-status")).to_have_text("completed")
    expect(page.locator("#job-logs")).to_contain_text("attempt 1 succeeded")


def test_job_page_links_dependencies_and_renders_text_not_html(
    page: Page, console_product: Product
) -> None:
    parent = console_product.submit({"job_id": "parent_1", "type": "noop"})["job_id"]
    child = console_product.submit(
        {
            "job_id": "child_1",
            "type": "noop",
            "depends_on": [parent],
            "payload": {"note": "<img src=x onerror=alert(1)>"},
        }
    )["job_id"]
    console_product.wait_all_terminal([parent, child])
    open_console(page, console_product, f"jobs/{child}")

    expect(page.locator("#job-status")).to_have_text("completed")
    page.locator("#depends-on").get_by_role("link", name=parent).click()
    expect(page.locator("#job-title")).to_contain_text(parent)
    expect(page.locator("#dependents").get_by_role("link", name=child)).to_be_visible()
    page.goto(f"{console_product.base_url}/#/jobs/{child}")
    expect(page.get_by_text("<img src=x onerror=alert(1)>", exact=False)).to_be_visible()
    assert page.locator("img").count() == 0


def test_a_dead_letter_is_replayed_from_the_console(page: Page, console_product: Product) -> None:
    job_id = console_product.submit({"type": "invalid_operation"})["job_id"]
    console_product.wait_for_status(job_id, "failed")
    letters = console_product.http.get("/dead-letters", headers=AUTH).json()["items"]
    (letter,) = [d for d in letters if d["job_id"] == job_id]
    open_console(page, console_product, "dead-letters")

    row = page.locator(f'tr[data-dead-letter-id="{letter["id"]}"]')
    expect(row).to_contain_text("non_retryable")
    row.get_by_role("button", name=f"Replay {job_id}").click()

    expect(row).to_have_count(0)
    replayed = console_product.http.get(f"/dead-letters/{letter['id']}", headers=AUTH).json()
    assert replayed["resolution"] == "replayed"
    # The job ran again (and, being invalid, failed again into a new dead letter).
    wait_until(
        lambda: (
            console_product.job(job_id)["attempts"] == 1
            and console_product.job(job_id)["status"] == "failed"
            and len(console_product.http.get("/dead-letters", headers=AUTH).json()["items"]) == 1
        ),
        20,
        message="the replayed job to fail again",
    )


def test_threads_running_a_handler_are_shown_beside_claimed_attempts(
    page: Page, console_product: Product
) -> None:
    # Given the console product's two workers of 8 threads, idle
    open_console(page, console_product)
    expect(page.locator("#threads-busy")).to_have_text("0 of 16")
    # Then the workers view shows each process's threads beside its running attempts
    open_console(page, console_product, "workers")
    rows = page.locator("#workers-table tbody tr")
    expect(rows).to_have_count(2)
    for index in range(2):
        expect(rows.nth(index)).to_contain_text("0 of 8")


def _serious_violations(page: Page) -> list[dict[str, object]]:
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    results = page.evaluate("async () => await axe.run(document)")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_no_serious_accessibility_violations(page: Page, console_product: Product) -> None:
    job_id = console_product.submit({"type": "noop"})["job_id"]
    failed = console_product.submit({"type": "invalid_operation"})["job_id"]
    console_product.wait_all_terminal([job_id, failed])

    page.goto(console_product.base_url)  # the key form
    assert _serious_violations(page) == []

    found: dict[str, object] = {}
    for view, ready in (
        ("dashboard", "#cpu-text"),
        ("jobs", f'tr[data-job-id="{job_id}"]'),
        (f"jobs/{failed}", "#replay-btn"),
        ("workers", "#workers-table tbody tr"),
        ("dead-letters", "#dead-table tbody tr"),
    ):
        open_console(page, console_product, view)
        page.locator(ready).first.wait_for()
        if violations := _serious_violations(page):
            found[view] = violations
    assert found == {}, json.dumps(found, indent=1)
