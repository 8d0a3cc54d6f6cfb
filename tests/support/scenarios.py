"""The case study's scenarios, kept verbatim in tests/scenarios/."""

from __future__ import annotations

import json
from typing import Any

from tests.support.product import ROOT


def load_scenario(name: str) -> dict[str, Any]:
    path = ROOT / "tests" / "scenarios" / f"{name}.json"
    return dict(json.loads(path.read_text()))
