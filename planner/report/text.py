"""actionlint-style text: `path:line:col: RULE message: fix`, then the source line and a caret under the node.

A warning reads `path:line:col: warning: RULE ...` (a note `note: `); errors keep the plain form. The last line
counts the problems per severity; with warnings alone it says the plans are valid (they fail only --strict).
Paths, messages and source lines are shown through `visible` (a name is data, never a terminal control). Source
lines are cut to about SOURCE_WIDTH columns around the caret, and read again from the file only by a bounded,
non-blocking read of a regular file. Past MAX_PROBLEMS_PER_FILE problems, the rest of a file's problems are
counted, not printed.
"""

from __future__ import annotations

import os
import re
import stat

from planner.plan import Problem
from planner.planfile import read_bounded
from planner.report.common import (
    LEGACY_COMMAND,
    MAX_PROBLEMS_PER_FILE,
    all_files,
    by_file,
    cells,
    clip,
    escaped,
    plural,
    severity,
    shown_path,
    tally,
    visible,
)

SOURCE_LIMIT = 1 << 20  # bytes of a file read to show its source lines; problems further in show no line
SOURCE_WIDTH = 100  # columns of a source line shown around the caret
_LEFT = 40  # of which, at most this many before the caret while there is more to show after it
# The line breaks YAML counts (pyyaml's reader and libyaml alike), so line numbers agree with the loader's.
_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def render(problems: list[Problem], files: list[str]) -> str:
    sources = _Sources()
    out = []
    groups = by_file(problems)
    for path, group in groups.items():
        for p in group[:MAX_PROBLEMS_PER_FILE]:
            out += _problem(p, sources)
        if len(group) > MAX_PROBLEMS_PER_FILE:
            rest = plural(len(group) - MAX_PROBLEMS_PER_FILE, "more problem")
            out.append(f"{shown_path(path)}: ... and {rest} in this file (not shown; --format json lists them all)")
    out.append(summary(problems, len(all_files(problems, files)), len(groups)))
    return "\n".join(out) + "\n"


def summary(problems: list[Problem], checked: int, with_problems: int) -> str:
    """The last line: `3 problems in 2 of 5 files`, `1 error, 2 warnings in ...`; with warnings (or notes) alone
    the plans are valid, and it says so: `5 plans valid; 2 warnings in 1 file` (--strict fails them anyway)."""
    if not problems:
        return f"{plural(checked, 'plan')} valid"
    if any(severity(p) == "error" for p in problems):
        return f"{tally(problems)} in {with_problems} of {plural(checked, 'file')}"
    counted = tally(problems).split(", ", 1)[1]  # "0 errors, 2 warnings" -> "2 warnings"
    return f"{plural(checked, 'plan')} valid; {counted} in {plural(with_problems, 'file')}"


def headline(p: Problem) -> str:
    """The one-line form of a problem, every part of it escaped: `path:line:col: [warning: ]RULE message: fix`."""
    where = shown_path(p.path) + (f":{p.line}:{p.column}" if p.line else "")
    kind = severity(p)
    prefix = "" if kind == "error" else f"{kind}: "
    return f"{where}: {prefix}{visible(p.rule)} {clip(visible(p.text))}"


def _problem(p: Problem, sources: _Sources) -> list[str]:
    lines = [headline(p)]
    source = sources.line(p.path, p.line)
    if source is not None:
        shown, offset = excerpt(source, p.column - 1)
        lines.append(f"  {p.line} | {shown}")
        lines.append(" " * (len(str(p.line)) + 5 + offset) + "^")
    return lines


def excerpt(line: str, index: int, width: int = SOURCE_WIDTH) -> tuple[str, int]:
    """The part of `line` shown around character `index` (0-based) in about `width` columns, with `…` where it
    is cut, and the column of the caret in it. Controls show as escapes, tabs as one space, wide characters take
    two columns and combining ones none (never split from their base)."""
    index = max(0, min(index, len(line)))
    lo, hi = max(0, index - width), min(len(line), index + width + 1)  # no more characters than that can show
    segment = line[lo:hi]
    pieces = [_piece(char) for char in segment]
    at = segment.find(LEGACY_COMMAND)
    while at >= 0:  # GitHub's runner acts on `##[` anywhere in a line: show its first `#` escaped
        pieces[at] = ("\\x23", 4)
        at = segment.find(LEGACY_COMMAND, at + 1)
    widths = [w for _, w in pieces]
    caret = start = end = index - lo
    used = 0
    while start > 0 and used + widths[start - 1] <= _LEFT:
        start, used = start - 1, used + widths[start - 1]
    while end < len(pieces) and used + widths[end] <= width:
        end, used = end + 1, used + widths[end]
    while start > 0 and used + widths[start - 1] <= width:  # room left over after the end of the line
        start, used = start - 1, used + widths[start - 1]
    while lo + start > 0 and start < caret and widths[start] == 0:  # a combining mark whose base was cut off
        start += 1
    while end < len(pieces) and widths[end] == 0:  # marks belonging to the last character shown
        end += 1
    left = "…" if lo + start > 0 else ""
    right = "…" if lo + end < len(line) else ""
    shown = left + "".join(text for text, _ in pieces[start:end]) + right
    return shown, len(left) + sum(widths[start:caret])


def _piece(char: str) -> tuple[str, int]:
    if char == "\t":  # one column, as the loader counts it, so the caret stays under its node
        return " ", 1
    escape = escaped(char)
    return (escape, len(escape)) if escape else (char, cells(char))


class _Sources:
    """The lines of each file, read once per rendering (a file may have changed since it was checked)."""

    def __init__(self):
        self._lines: dict[str, list[str]] = {}

    def line(self, path: str, number: int) -> str | None:
        if not isinstance(number, int) or number < 1:
            return None
        if path not in self._lines:
            self._lines[path] = read_lines(path)
        lines = self._lines[path]
        return lines[number - 1] if number <= len(lines) else None


def read_lines(path: str, limit: int = SOURCE_LIMIT) -> list[str]:
    """The lines of the regular file at `path` among its first `limit` bytes; [] for anything else (a FIFO, a
    device, a folder, a missing or unreadable file). Never blocks: the file is opened non-blocking and checked
    to be a regular file both before and after opening."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return []
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return []
    try:
        raw = read_bounded(fd, limit)
    except OSError:  # NotRegular included: a FIFO put where the file was
        return []
    finally:
        os.close(fd)
    lines = _BREAKS.split(raw[:limit].decode("utf-8-sig", "replace"))
    if len(raw) > limit:
        lines.pop()  # the last line may be cut short: show none rather than a wrong one
    return lines

