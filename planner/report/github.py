"""GitHub Actions workflow commands: `::error file=...,line=...,col=...,title=RULE::RULE message: fix` per problem,
`::warning` and `::notice` for the other severities.

A file name gets GitHub's own escaping (`%`, CR and LF everywhere; `:` and `,` in properties too), so the runner
decodes it to the exact name; every other control is shown through `visible`. Messages are shown through
`visible` entirely. So no name or message can end our line and start a workflow command of its own. Past
MAX_PROBLEMS_PER_FILE problems in a file, one notice counts the rest (GitHub shows few annotations per step anyway).
"""

from __future__ import annotations

import re

from planner.plan import Problem
from planner.report.common import MAX_PROBLEMS_PER_FILE, by_file, clip, plural, severity, visible

_COMMAND = {"error": "error", "warning": "warning", "note": "notice"}
_NOT_BREAKS = re.compile(r"[^\r\n]+")


def render(problems: list[Problem], files: list[str]) -> str:
    out = []
    for path, group in by_file(problems).items():
        out += [_annotation(p) for p in group[:MAX_PROBLEMS_PER_FILE]]
        if len(group) > MAX_PROBLEMS_PER_FILE:
            rest = plural(len(group) - MAX_PROBLEMS_PER_FILE, "more problem")
            out.append(f"::notice file={_file(path)},title=planner::"
                       + _data(f"... and {rest} in this file (not shown; --format json lists them all)"))
    return "".join(line + "\n" for line in out)


def _annotation(p: Problem) -> str:
    where = f"file={_file(p.path)}" + (f",line={int(p.line)},col={int(p.column)}" if p.line else "")
    title = _prop(visible(p.rule))
    return f"::{_COMMAND[severity(p)]} {where},title={title}::{_data(clip(visible(f'{p.rule} {p.text}')))}"


def _file(path: str) -> str:
    """The file property: CR and LF left to GitHub's escaping (decoded back to the name), other controls visible."""
    return _prop(_NOT_BREAKS.sub(lambda m: visible(m.group()), path))


def _data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(s: str) -> str:
    return _data(s).replace(":", "%3A").replace(",", "%2C")
