"""SARIF 2.1.0, as GitHub code scanning accepts it: the rule table as `tool.driver.rules`, a result per problem."""

from __future__ import annotations

import json

from planner import __version__
from planner.plan import Problem
from planner.rules import RULES

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def render(problems: list[Problem], files: list[str]) -> str:
    used = sorted({p.rule for p in problems})
    rules = [{"id": r, "shortDescription": {"text": RULES[r].catches},
              "help": {"text": RULES[r].fix}, "defaultConfiguration": {"level": "error"}} for r in used]
    results = []
    for p in problems:
        location = {"physicalLocation": {"artifactLocation": {"uri": p.path.replace("\\", "/")}}}
        if p.line:
            location["physicalLocation"]["region"] = {"startLine": p.line, "startColumn": p.column}
        results.append({"ruleId": p.rule, "ruleIndex": used.index(p.rule), "level": p.severity,
                        "message": {"text": p.text}, "locations": [location]})
    log = {"$schema": SCHEMA, "version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "offload-planner", "version": __version__, "rules": rules}},
                     "results": results}]}
    return json.dumps(log, indent=2) + "\n"
