"""actionlint-style text: `path:line:col: RULE message: fix`, then the source line and a caret under the node."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from planner.plan import Problem


@lru_cache(maxsize=64)
def _lines(path: str) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text(encoding="utf-8-sig").splitlines())
    except (OSError, UnicodeDecodeError):
        return ()


def render(problems: list[Problem], files: list[str]) -> str:
    out = []
    for p in problems:
        out.append(str(p))
        lines = _lines(p.path) if p.line else ()
        if 0 < p.line <= len(lines):
            source = lines[p.line - 1].replace("\t", " ")
            out.append(f"  {p.line} | {source}")
            out.append(" " * (len(str(p.line)) + 5 + p.column - 1) + "^")
    count = len(problems)
    bad = len({p.path for p in problems})
    out.append(f"{count} problem{'s' * (count != 1)} in {bad} of {len(files)} file{'s' * (len(files) != 1)}"
               if count else f"{len(files)} plan{'s' * (len(files) != 1)} valid")
    return "\n".join(out) + "\n"
