"""What every check of one plan shares: the document, its data with the command-line overrides applied, the
problems found so far, and a bounded "did you mean"."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Mapping, Sequence

from planner.plan import Problem

if TYPE_CHECKING:
    from planner.loader import Document
    from planner.rules import Rule

LISTED = 8  # names shown when a message lists the possible ones
# The flags that set a key inside `pipeline` (`planner apply --dtype float16`); a top-level key such as `gpu_id`
# is set by `--gpu-id`.
NESTED_FLAGS = {("pipeline", "torch_dtype"): "--dtype", ("pipeline", "variant"): "--variant"}


class Context:
    """One plan being checked: `data` is the document's data with `overrides` applied; `add` locates a problem
    at a node of the file, or at its flag (`--device`) when the value came from the command line. `overrides`
    maps a top-level key (`device`) or a key inside `pipeline` (`pipeline.torch_dtype`) to its value;
    `overridden` holds the top-level keys among them."""

    def __init__(self, doc: Document, overrides: Mapping[str, object]):
        self.doc = doc
        self.data = dict(doc.data)
        self.flags: dict[tuple, str] = {}  # node the command line set -> its flag
        for key, value in overrides.items():
            node = tuple(key.split(".", 1))
            parent = self.data.get(node[0])
            if len(node) == 1:
                self.data[key] = value
            elif parent is None or isinstance(parent, dict):  # else the file's own error on the parent stands
                self.data[node[0]] = {**(parent or {}), node[1]: value}
            else:
                continue
            self.flags[node] = NESTED_FLAGS.get(node, "--" + node[-1].replace("_", "-"))
        self.overridden = {node[0] for node in self.flags if len(node) == 1}
        self.problems: list[Problem] = []
        self.suggest = Suggester()

    def flag(self, path: tuple) -> str | None:
        """The flag that set the node `path` (or the node holding it), or None when its value is the file's."""
        return self.flags.get(tuple(path[:1])) or self.flags.get(tuple(path[:2])) if path else None

    def add(self, path: tuple, rule: Rule, message: str, fix: str | None = None, key: bool = False) -> None:
        """Record a problem of `rule` at the node `path` (at its key with `key`); `fix` defaults to the rule's."""
        flag = self.flag(path)
        if flag:
            self.problems.append(rule.problem(flag, message, fix))
        elif not self.doc.is_refused(path):  # else the loader already said why this node has no value
            self.problems.append(rule.at(self.doc, path, message, fix, key))

    def describe(self, path: tuple, value) -> str:
        """`value` (at `path`) for a message: as written in the file when it is no string, else its repr."""
        raw = None if self.flag(path) else self.doc.raw(path)
        if isinstance(value, (dict, list)) or value is None:
            return {dict: "a mapping", list: "a list", type(None): "nothing (null)"}[type(value)]
        return f"`{raw}`" if raw is not None and not isinstance(value, str) else repr(value)


def some(names: Sequence[str], limit: int = LISTED) -> str:
    """`names` for a message, the first few only when there are many."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def did_you_mean(hints: Sequence[str]) -> str:
    """"did you mean 'a'?", or "did you mean 'a', 'b' or 'c'?" for several."""
    shown = [repr(hint) for hint in hints]
    return f"did you mean {' or '.join(filter(None, (', '.join(shown[:-1]), shown[-1])))}?"


class Suggester:
    """Bounded "did you mean" (difflib): at most PER_WORD candidates are compared for one word and TOTAL for
    one plan, so a plan of thousands of names and problems still costs milliseconds. Among many candidates,
    those sharing the longest beginnings or endings with the word (its neighbours in two sorted lists: a typo
    rarely touches both ends) are the ones compared."""

    PER_WORD = 200
    TOTAL = 5_000

    def __init__(self):
        self.left = self.TOTAL
        self.indexes: dict[int, _Index] = {}

    def closest(self, word: str, candidates: Sequence[str]) -> str | None:
        if not candidates or self.left <= 0:
            return None
        index = self.indexes.get(id(candidates))
        if index is None or index.candidates is not candidates:
            index = self.indexes[id(candidates)] = _Index(candidates)
        if word.lower() in index.lowered:
            return index.lowered[word.lower()]
        import difflib  # only a plan with a mistake needs it

        pool = index.near(word, min(self.PER_WORD, self.left))
        self.left -= len(pool)
        hint = difflib.get_close_matches(word, pool, n=1)
        return hint[0] if hint else None


class _Index:
    """Candidate names sorted by their beginning and by their ending, for `Suggester`."""

    def __init__(self, candidates: Sequence[str]):
        self.candidates = candidates
        self.lowered: dict[str, str] = {}
        for name in candidates:
            self.lowered.setdefault(name.lower(), name)
        self.forward = sorted(candidates)
        self.backward = sorted((name[::-1], name) for name in candidates)

    def near(self, word: str, limit: int) -> list[str]:
        if len(self.candidates) <= limit:
            return list(self.candidates)
        side = max(1, limit // 4)
        i = bisect.bisect(self.forward, word)
        j = bisect.bisect(self.backward, (word[::-1],))
        pool = self.forward[max(0, i - side): i + side] + [n for _, n in self.backward[max(0, j - side): j + side]]
        return list(dict.fromkeys(pool))[:limit]
