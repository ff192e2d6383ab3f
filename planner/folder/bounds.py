"""What one read of a model folder may cost and print. The bounds are fixed (no flag raises them): a real pipeline
stays far below each, so a folder past one is damaged or hostile, and it is told so at once, as one located problem,
instead of being read on.

Work, per read of a folder (`Budget`):
- MAX_JSON_BYTES: one model_index.json, shard index or config.json (the index of a thousand shards is a few MB);
- MAX_HEADER_BYTES: one safetensors header, safetensors' own bound (MAX_HEADER_SIZE in its reader);
- MAX_FOLDER_BYTES: everything read from one folder, its JSON files and its headers together (a real pipeline's
  are under a MB: SDXL's 0.33 MB, FLUX.1-dev's 0.36 MB). Past it, the file that would cross it is the problem, and
  nothing more is read;
- MAX_JSON_VALUES: the JSON values of one folder's JSON files and headers together, counted before each is decoded
  (its commas, brackets and braces: an upper bound), since decoding costs per value (SDXL's files hold 20,000, a
  header 7.5 per tensor). A file holding more is refused undecoded, and nothing more is read;
- MAX_TENSORS: the tensors of one folder's headers together, so one header's too (the largest published model
  holds 1,933 in one file, Qwen-Image's transformer; a whole pipeline under 10,000). A header declaring more is
  refused before a tensor of it is built, and nothing more is read;
- MAX_COMPONENTS: the components model_index.json names (real pipelines name at most a few dozen);
- MAX_NAME_CHARS: a name model_index.json gives (component, library, class), longer is PLN402.

Output, per read: every name a message quotes is cut to MAX_NAME_CHARS around its middle (`shown`), lists show
LISTED names and count the rest (`listed`), a message is at most MAX_MESSAGE_CHARS, and past MAX_PROBLEMS problems
one last problem counts the rest (`capped`), so every command and format prints a bounded report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable, Sequence

from planner.plan import Problem
from planner.report.common import clip_middle
from planner.rules.context import LISTED, some

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 100_000_000
MAX_FOLDER_BYTES = 512 * 1024 * 1024
MAX_JSON_VALUES = 2_000_000
MAX_TENSORS = 200_000
MAX_COMPONENTS = 1_000
MAX_NAME_CHARS = 200
MAX_MESSAGE_CHARS = 1_000
MAX_PROBLEMS = 50

__all__ = ["LISTED", "MAX_COMPONENTS", "MAX_FOLDER_BYTES", "MAX_HEADER_BYTES", "MAX_JSON_BYTES", "MAX_JSON_VALUES",
           "MAX_MESSAGE_CHARS",
           "MAX_NAME_CHARS", "MAX_PROBLEMS", "MAX_TENSORS", "PAST_A_BOUND", "Budget", "Past", "capped", "cut", "listed",
           "shown"]

# The fix of a problem past a bound: no flag raises them, and no real model comes near them.
PAST_A_BOUND = "no published model comes near this bound: the folder is damaged or not a model's (the bound is fixed)"


def cut(name: str) -> str:
    """A name for a message, cut to MAX_NAME_CHARS around its middle (`a...z`), unquoted."""
    return clip_middle(name, MAX_NAME_CHARS)


def shown(value) -> str:
    """`repr(value)` for a message, cut to MAX_NAME_CHARS around its middle: both quotes stay."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * MAX_NAME_CHARS:  # repr of a huge name would cost its length again: cut it first
        text = clip_middle(text, 4 * MAX_NAME_CHARS)
    return clip_middle(repr(text) if isinstance(value, str) else text, MAX_NAME_CHARS)


def listed(names: Sequence[str], show: Callable[[str], str] = cut) -> str:
    """`names` for a message: the first LISTED, each through `show`, then how many there are in all."""
    # some() counts the names it is given: placeholders stand for those it does not show
    return some([show(n) for n in names[:LISTED]] + [""] * max(0, len(names) - LISTED))


class Past(str):
    """Why something is not read because a bound is met (not because it is invalid): nothing more is read after."""


class Budget:
    """What is left of one folder read's work: bytes to read and JSON values to decode (its JSON files and headers
    together), tensors to accept. Once a bound is met the budget is `spent`, and nothing more is read; `first` is
    the problem that met it (`note`), which the reader reports wherever it arose."""

    def __init__(self):
        self.bytes = MAX_FOLDER_BYTES
        self.values = MAX_JSON_VALUES
        self.tensors = MAX_TENSORS
        self.spent = False
        self.first: Problem | None = None

    @property
    def read(self) -> int:
        """The bytes taken so far."""
        return MAX_FOLDER_BYTES - self.bytes

    def take(self, count: int, what: str) -> Past | None:
        """Take `count` bytes for reading `what` (`its header`, `model_index.json`); or, when they would take the
        folder past MAX_FOLDER_BYTES, why not: then the budget is spent."""
        if self.spent:
            return Past(f"{what} is not read: a bound of this folder was met before it")
        if count <= self.bytes:
            self.bytes -= count
            return None
        self.spent = True
        return Past(f"reading {what} ({count:,} bytes) would take this folder past {MAX_FOLDER_BYTES:,} bytes "
                    f"({MAX_FOLDER_BYTES / 2**20:g} MiB), the most read from one model folder's JSON files and headers "
                    f"together ({self.read:,} bytes read before it): nothing more is read")

    def decode(self, raw: bytes, what: str) -> Past | None:
        """Take the JSON values `raw` may hold (its commas, brackets and braces, counted without decoding it: an
        upper bound) for decoding `what`; or, when they are more than are left, why not: then it is spent."""
        if self.spent:
            return Past(f"{what} is not decoded: a bound of this folder was met before it")
        count = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
        if count <= self.values:
            self.values -= count
            return None
        self.spent = True
        before = MAX_JSON_VALUES - self.values
        bound = (f"the {self.values:,} left of the {MAX_JSON_VALUES:,} decoded from one model folder's JSON files "
                 f"and headers together ({before:,} in the files read before it)" if before else
                 f"the {MAX_JSON_VALUES:,} decoded from one model folder's JSON files and headers together (a real "
                 "pipeline's hold a few tens of thousands)")
        return Past(f"{what} may hold {count:,} JSON values (its commas, brackets and braces, counted before it is "
                    f"decoded), more than {bound}: nothing more is read")

    def note(self, problem: Problem) -> Problem:
        """Record `problem` as the one that met a bound (the first such is kept), and return it."""
        self.spent = True
        if self.first is None:
            self.first = problem
        return problem


def capped(problems: list[Problem], where: str) -> list[Problem]:
    """At most MAX_PROBLEMS problems, each message and fix at most MAX_MESSAGE_CHARS (cut around the middle), and
    past them one last problem at `where` (the folder) counting the rest by rule."""
    kept = [_cut_problem(p) for p in problems[:MAX_PROBLEMS]]
    rest = problems[MAX_PROBLEMS:]
    if not rest:
        return kept
    counts = ", ".join(f"{n:,} {rule}" for rule, n in Counter(p.rule for p in rest).most_common())
    severity = "error" if any(p.severity == "error" for p in rest) else rest[0].severity
    return kept + [Problem(where, 0, 0, rest[0].rule, f"... and {len(rest):,} more problems ({counts}), not listed: "
                           f"one read of a model folder lists at most {MAX_PROBLEMS}",
                           "fix those listed, then read the folder again", severity)]


def _cut_problem(p: Problem) -> Problem:
    if len(p.message) <= MAX_MESSAGE_CHARS and len(p.fix) <= MAX_MESSAGE_CHARS:
        return p
    return replace(p, message=clip_middle(p.message, MAX_MESSAGE_CHARS), fix=clip_middle(p.fix, MAX_MESSAGE_CHARS))
