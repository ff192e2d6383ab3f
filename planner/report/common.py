"""What every view shares: making names printable as data, severities, grouping per file, the per-file cap.

Names and paths come from users (and from attackers: a file named `\\x1b]8;;...` or a key holding a newline), so
every human-facing string goes through `visible` before it reaches a terminal, a CI log or an XML document.
GitHub's runner reads every line of a job's output for workflow commands: `::name ...::` at the start of a line
(after leading whitespace) and the legacy `##[name]` anywhere in a line. `visible` leaves no line break and no
`##[` in its result; `shown_path` keeps a path from starting a line with `:`; the data formats (json, sarif,
junit) use `neutral_json` / character references instead, so their data stays exact.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from planner.plan import Problem

# Text and github show at most this many problems per file and count the rest; json, sarif and junit keep every
# problem (they are read by programs, and the loader's size limit already bounds a file's problems).
MAX_PROBLEMS_PER_FILE = 50
# A message longer than this (a huge key repeated in it) is cut in text and github output.
MAX_MESSAGE_CHARS = 1000

SEVERITIES = ("error", "warning", "note")
LEGACY_COMMAND = "##["  # GitHub's runner acts on it anywhere in a line

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Unicode bidi controls (Trojan Source, CVE-2021-42574) and the line/paragraph separators some terminals honour.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)


def _escape(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# C0 controls, DEL, C1 controls (CSI is 0x9b), bidi controls, lone surrogates (they cannot be encoded, and XML
# forbids them) and the BMP non-characters XML forbids: each shown as a visible escape.
_TABLE = {code: _escape(code) for code in (*range(0x20), *range(0x7F, 0xA0), *_BIDI, *range(0xD800, 0xE000),
                                           0xFFFE, 0xFFFF)}


def visible(text: str) -> str:
    """`text` with every control, bidi override, lone surrogate and newline written as a visible escape
    (`\\x1b`, `\\n`, `\\u202e`), and GitHub's legacy command marker `##[` as `\\x23#[`, so that a name is always
    shown as data and never acts on the terminal or the CI log."""
    return text.translate(_TABLE).replace(LEGACY_COMMAND, "\\x23#[")


def shown_path(path: str) -> str:
    """`visible(path)`, written `./path` when it would start a line with `:` (a workflow command's `::`)."""
    text = visible(path)
    return "./" + text if text.lstrip().startswith(":") else text


def neutral_json(text: str) -> str:
    """Serialized JSON with `##[` written `##\\u005b`: the same data, no legacy workflow command in a log."""
    return text.replace(LEGACY_COMMAND, "##\\u005b")


def escaped(char: str) -> str | None:
    """The visible escape of one character, or None when it prints as itself."""
    return _TABLE.get(ord(char))


def cells(char: str) -> int:
    """Terminal columns a printable character takes: 0 for combining and format characters, 2 for wide ones."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf") and char != "\xad":
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters with a `…` marker when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_middle(text: str, limit: int) -> str:
    """`text` cut to `limit` characters by leaving out its middle, marked `...`: a name keeps its beginning and its
    end (`down_blocks.0...attn.to_q.weight`, `'unet...x'` with both quotes), where what it is and what it ends
    with are. `limit` below 5 cuts the end alone."""
    if len(text) <= limit:
        return text
    if limit < 5:
        return text[:limit]
    kept = limit - 3
    return f"{text[:(kept + 1) // 2]}...{text[len(text) - kept // 2:]}"


def severity(problem: Problem) -> str:
    """The problem's severity as one of SEVERITIES; anything unknown counts as an error (fail safe)."""
    value = str(problem.severity).lower()
    if value in ("info", "notice", "note"):
        return "note"
    return value if value in SEVERITIES else "error"


def is_error(problem: Problem) -> bool:
    return severity(problem) == "error"


def by_file(problems: list[Problem]) -> dict[str, list[Problem]]:
    """The problems grouped by path, files in order of first appearance, problems in their given order."""
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.path, []).append(p)
    return groups


def all_files(problems: list[Problem], files: list[str]) -> list[str]:
    """Every checked file, then any path that has problems without having been listed (an unreadable entry)."""
    seen = dict.fromkeys(files)
    seen.update(dict.fromkeys(p.path for p in problems))
    return list(seen)


def tally(problems: list[Problem]) -> str:
    """`3 errors, 1 warning` (zero counts left out, errors always shown); `3 problems` when all are errors."""
    counts = Counter(severity(p) for p in problems)
    if counts["error"] == len(problems):
        return plural(len(problems), "problem")
    parts = [plural(counts["error"], "error")]
    parts += [plural(counts[s], s) for s in SEVERITIES[1:] if counts[s]]
    return ", ".join(parts)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"
