"""JSON: `{"files": [...], "problems": [{path, line, column, rule, message, fix, severity}, ...], "summary": {...}}`.

The data is exact (names are not escaped beyond JSON's own escaping) and every problem is listed, uncapped;
`summary` counts the files (`checked`, `with_problems`) and the problems per severity (`errors`, `warnings`,
`notes`). `##[` is written `##\\u005b`, the same string, so that printing the
report in a GitHub Actions log cannot run a legacy workflow command.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

from planner.plan import Problem
from planner.report.common import SEVERITIES, all_files, neutral_json, severity


def render(problems: list[Problem], files: list[str]) -> str:
    counts = Counter(severity(p) for p in problems)
    summary = {"checked": len(all_files(problems, files)), "with_problems": len({p.path for p in problems}),
               **{f"{s}s": counts[s] for s in SEVERITIES}}
    report = {"files": files, "problems": [asdict(p) for p in problems], "summary": summary}
    return neutral_json(json.dumps(report, indent=2)) + "\n"
