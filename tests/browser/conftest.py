"""Headless Chromium (Debian's `chromium` package) driven by Playwright for Python.

scripts/test.sh installs the package when it is missing; Playwright's own browser
download is never used: the browser is launched from CHROMIUM.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import ProductFactory
from tests.support.product import API_KEYS, Product

CHROMIUM = Path("/usr/bin/chromium")
# The admin key the console is opened with: the test product's own (tests/support/product).
SECRET = API_KEYS["admin"]
AUTH = {"Authorization": f"Bearer {SECRET}"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture
def console_product(start_product: ProductFactory) -> Product:
    """An api and two worker processes (they accept the test product's keys)."""
    return start_product(workers=2)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def open_console(page: Page, product: Product, view: str = "dashboard") -> None:
    """Open a view of the console; give it the key through its form, as an operator
    does, when this tab does not have it yet."""
    page.goto(f"{product.base_url}/#/{view}")
    key_input, live = page.locator("#key-input"), page.locator("#stream-state", has_text="live")
    key_input.or_(live).first.wait_for()
    if key_input.is_visible():
        key_input.fill(SECRET)
        page.get_by_role("button", name="Open the console").click()
    live.wait_for()
