"""JSON: `{"files": [...], "problems": [{path, line, column, rule, message, fix, severity}, ...]}`."""

from __future__ import annotations

import json
from dataclasses import asdict

from planner.plan import Problem


def render(problems: list[Problem], files: list[str]) -> str:
    return json.dumps({"files": files, "problems": [asdict(p) for p in problems]}, indent=2) + "\n"
