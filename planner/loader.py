"""Bytes -> plain data with the line and column of every key and value.

Only safe YAML is built: the composer gives nodes (no constructor ever runs on a tag), and this module turns
them into dicts, lists and scalars itself, refusing duplicate keys, foreign tags, several documents, and alias
expansion beyond a fixed amount of work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from planner.plan import Problem

# The whole expanded document may hold at most this many nodes: a plan has a few dozen, a "billion laughs"
# file has billions. Counting expanded nodes bounds the work, not only the nesting.
MAX_NODES = 20_000
MAX_DEPTH = 64

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_scalars = yaml.SafeLoader("")  # its construct_yaml_* methods turn plain scalar nodes into values
_SCALAR_TAGS = {
    "tag:yaml.org,2002:null": _scalars.construct_yaml_null,
    "tag:yaml.org,2002:bool": _scalars.construct_yaml_bool,
    "tag:yaml.org,2002:int": _scalars.construct_yaml_int,
    "tag:yaml.org,2002:float": _scalars.construct_yaml_float,
    "tag:yaml.org,2002:str": _scalars.construct_scalar,
    # a date is not a plan value; keep its text so that the schema reports a wrong type, not a crash
    "tag:yaml.org,2002:timestamp": _scalars.construct_scalar,
}
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


@dataclass
class Document:
    """A loaded file: `data` as JSON-like values, or the problems that kept it from loading.

    `marks[path]` is the (line, column) of the value at that path (a tuple of keys and indexes);
    `key_marks[path]` is that of the key that names it. `raw_scalars[path]` keeps the source spelling of a
    scalar, so rules can explain YAML 1.1 surprises (`yes` read as a boolean).
    """

    path: str
    text: str = ""
    data: object = None
    problems: list[Problem] = field(default_factory=list)
    marks: dict = field(default_factory=dict)
    key_marks: dict = field(default_factory=dict)
    raw_scalars: dict = field(default_factory=dict)
    refused: set = field(default_factory=set)  # paths whose node was refused (a tag): no further errors there

    def where(self, path: tuple, key: bool = False) -> tuple[int, int]:
        """The (line, column) of the node at `path`, falling back to its closest located parent."""
        table = self.key_marks if key else self.marks
        while path not in table and path:
            path = path[:-1]
        return table.get(path, (1, 1))

    def problem(self, path: tuple, rule: str, message: str, fix: str = "", key: bool = False) -> Problem:
        line, column = self.where(path, key)
        return Problem(self.path, line, column, rule, message, fix)


class _TooLarge(Exception):
    pass


def load(raw: bytes, path: str) -> Document:
    """Load one plan file; problems come back in the document, never as an exception."""
    doc = Document(path)
    try:
        doc.text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _line_col(raw[: exc.start].decode("utf-8", "replace"))
        doc.problems.append(Problem(path, line, column, "PLN002",
                                    f"byte 0x{raw[exc.start]:02x} is not UTF-8",
                                    "save the plan as UTF-8"))
        return doc
    try:
        node = _Loader(doc.text).get_single_node()
    except yaml.MarkedYAMLError as exc:
        doc.problems.append(_yaml_problem(doc, exc))
        return doc
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        mark = getattr(exc, "position", None)
        line, column = _line_col(doc.text[:mark]) if isinstance(mark, int) else (1, 1)
        doc.problems.append(Problem(path, line, column, "PLN003", f"not YAML: {exc}", "remove the character"))
        return doc
    except RecursionError:
        doc.problems.append(Problem(path, 1, 1, "PLN007", "the document nests too deeply",
                                    f"a plan needs no more than {MAX_DEPTH} levels"))
        return doc
    if node is None:
        doc.problems.append(Problem(path, 1, 1, "PLN001", "the plan is empty",
                                    "write at least `version: 1`, `device` and `components`"))
        return doc
    if not isinstance(node, yaml.MappingNode):
        line, column = _mark(node)
        doc.problems.append(Problem(path, line, column, "PLN009",
                                    f"the top level is a {_kind(node)}, not a mapping",
                                    "write the plan as `key: value` lines (version, device, components, ...)"))
        return doc
    try:
        doc.data = _Builder(doc).build(node, ())
    except _TooLarge as exc:
        doc.data = None
        doc.problems.append(Problem(path, *exc.args))
    return doc


class _Builder:
    def __init__(self, doc: Document):
        self.doc = doc
        self.budget = MAX_NODES

    def build(self, node, path: tuple):
        self.budget -= 1
        if self.budget < 0 or len(path) > MAX_DEPTH:
            what = "expands to too many nodes" if self.budget < 0 else "nests too deeply"
            line, column = _mark(node)
            raise _TooLarge(line, column, "PLN007",
                            f"the document {what} (aliases or nesting beyond {MAX_NODES} nodes / {MAX_DEPTH} levels)",
                            "write the plan out plainly, without alias chains")
        self.doc.marks[path] = _mark(node)
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and node.tag in _SCALAR_TAGS:
            self.doc.raw_scalars[path] = node.value
            try:
                return _SCALAR_TAGS[node.tag](node)
            except (ValueError, yaml.YAMLError):
                return node.value
        self.doc.refused.add(path)
        self.doc.problems.append(self.doc.problem(path, "PLN008", f"tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed in a plan",
                                                  "remove the tag: plans hold plain strings, numbers, lists and mappings"))
        return None

    def _mapping(self, node, path: tuple) -> dict:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.doc.problems.append(self.doc.problem(path, "PLN008", "merge keys (`<<`) are not allowed in a plan",
                                                          "write the keys out"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                line, column = _mark(key_node)
                self.doc.problems.append(Problem(self.doc.path, line, column, "PLN009",
                                                 f"a {_kind(key_node)} cannot be a key", "use a plain name as the key"))
                continue
            key = key_node.value
            if key in out:
                first = self.doc.key_marks[path + (key,)]
                line, column = _mark(key_node)
                self.doc.problems.append(Problem(self.doc.path, line, column, "PLN006",
                                                 f"duplicate key {key!r} (first at line {first[0]})",
                                                 "keep one; YAML would silently use the last"))
                continue
            self.doc.key_marks[path + (key,)] = _mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        return out


def _yaml_problem(doc: Document, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or str(exc)
    lines = doc.text.splitlines()
    char = lines[line - 1][column - 1: column] if 0 < line <= len(lines) else ""
    if char == "\t" or (problem and "\\t" in problem):
        return Problem(doc.path, line, column, "PLN004", "a tab is used for indentation",
                       "indent with spaces; YAML does not allow tabs there")
    if "expected a single document" in problem or "but found another document" in str(exc):
        return Problem(doc.path, line, column, "PLN005", "the file holds several YAML documents",
                       "keep one plan per file and remove the `---` separator")
    if "nesting depth" in problem:  # libyaml's own limit, far above ours
        return Problem(doc.path, line, column, "PLN007", "the document nests too deeply",
                       f"a plan needs no more than {MAX_DEPTH} levels")
    context = f" {exc.context}" if exc.context else ""
    return Problem(doc.path, line, column, "PLN003", f"YAML syntax error:{context} {problem}".replace("  ", " "),
                   "fix the YAML at this place")


def _mark(node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _kind(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "scalar"


def _line_col(prefix: str) -> tuple[int, int]:
    line = prefix.count("\n") + 1
    return line, len(prefix) - (prefix.rfind("\n") + 1) + 1
