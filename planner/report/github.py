"""GitHub Actions workflow commands: one `::error file=...,line=...,col=...,title=RULE::text` per problem."""

from __future__ import annotations

from planner.plan import Problem


def _data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(s: str) -> str:
    return _data(s).replace(":", "%3A").replace(",", "%2C")


def render(problems: list[Problem], files: list[str]) -> str:
    out = []
    for p in problems:
        where = f"file={_prop(p.path)}" + (f",line={p.line},col={p.column}" if p.line else "")
        out.append(f"::{p.severity} {where},title={p.rule}::{_data(p.rule + ' ' + p.text)}")
    return "".join(line + "\n" for line in out)
