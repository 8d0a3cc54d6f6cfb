"""GET /: the admin page. Static HTML that reads /stats, /jobs, /dead-letters and the stream."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["operations"])

_PAGE = (Path(__file__).parent.parent / "admin.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=True)
def admin_page() -> HTMLResponse:
    """Queues, tokens, running and recent jobs, dead letters, live events."""
    return HTMLResponse(_PAGE)
