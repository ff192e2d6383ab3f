"""A plan file -> plain data with the line and column of every key and value.

`load` turns a plan file's bytes (read by `planner.planfile.read_plan_bytes`) into a `Document`.

Only safe YAML is built, and this module builds it itself from the parser's events (no constructor ever runs
on a tag): dicts, lists and scalars, refusing duplicate keys, foreign tags, several documents, alias expansion
beyond a fixed amount of work, and plain scalars that YAML 1.1 and YAML 1.2 read differently (`on`, `010`).
Building from events rather than nodes keeps the place of every alias use, so a problem inside an aliased value
is located where the alias is written. Every way the parser can fail is a located problem, worded by PyYAML's
pure-Python parser whether or not libyaml is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from planner.plan import Problem
from planner.rules import PLN001, PLN002, PLN003, PLN004, PLN005, PLN006, PLN007, PLN008, PLN009, PLN010

# The whole expanded document may hold at most this many nodes: a plan has a few dozen, a "billion laughs"
# file has billions. Counting expanded nodes bounds the work, not only the nesting.
MAX_NODES = 20_000
MAX_DEPTH = 64

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # tests swap it to prove the results do not depend on it
_PURE = yaml.SafeLoader

# Patterns are strings, compiled on first use by `re`'s own cache: most runs never need them, and compiling them
# all at import would cost more than reading a plan.
# Where libyaml and PyYAML may disagree (found by comparing them on generated YAML, tests/test_loader.py): only a
# file holding one of these characters is looked at more closely.
_DIVERGENT = r"[\t\x85\u2028\u2029\ufeff]|(?:^|[ \r\[{,])[!|>]"
_DIVERGENT_CHARS = "\t\x85\u2028\u2029\ufeff!|>"
_BREAKS = "\r\n|[\n\r\x85\u2028\u2029]"

# The event classes, looked up once: the builder tests every event against them.
_ALIAS, _SCALAR = yaml.AliasEvent, yaml.ScalarEvent
_SEQ_START, _SEQ_END, _MAP_START, _MAP_END = (yaml.SequenceStartEvent, yaml.SequenceEndEvent, yaml.MappingStartEvent,
                                              yaml.MappingEndEvent)

_Y = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP = _Y + "str", _Y + "seq", _Y + "map"
_RESOLVER = yaml.resolver.Resolver()  # YAML 1.1 as PyYAML reads plain scalars
_CONSTRUCT = yaml.SafeLoader("")  # its construct_yaml_* methods turn scalar nodes into values


class _Special:
    """A reading that is no plan value (a YAML 1.1 date, merge key or value key; an invalid one), in words."""

    def __init__(self, words: str):
        self.words = words


_INVALID = _Special("not a valid value")
_DATE = _Special("a date")
_MERGE = _Special("the merge key `<<`")
_VALUE = _Special("the default-value key `=`")
_JSON_STRING = _Special("a string in YAML 1.2's JSON schema (a number only in its core schema)")

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), the reading of yaml-language-server,
# ruamel.yaml (check-jsonschema), Go's yaml.v3 and others.
_NULL12 = {"", "~", "null", "Null", "NULL"}
_BOOL12 = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT12 = r"[-+]?[0-9]+"
_OCT12 = r"0o[0-7]+"
_HEX12 = r"0x[0-9a-fA-F]+"
_FLOAT12 = r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
_INF12 = r"[-+]?\.(?:inf|Inf|INF)"
_NAN12 = r"\.(?:nan|NaN|NAN)"
# YAML 1.1 booleans (https://yaml.org/type/bool.html): PyYAML leaves out y/n, other YAML 1.1 readers do not.
_BOOL11 = {"y": True, "yes": True, "true": True, "on": True, "n": False, "no": False, "false": False, "off": False}
_YN11 = {"y": True, "Y": True, "n": False, "N": False}
# Plain scalars starting with a letter are strings in both versions unless they are one of these words.
_WORDS = {w for base in ("yes", "no", "on", "off", "true", "false", "null") for w in (base, base.title(), base.upper())}
_WORDS |= set(_YN11)
_MAX_DIGITS = 4000  # Python refuses to read longer decimal integers (sys.get_int_max_str_digits)
_TAG_WANTS = {"null": "null (or nothing)", "bool": "true or false", "int": "an integer", "float": "a number",
              "timestamp": "a date (YYYY-MM-DD)"}


@dataclass
class Document:
    """A loaded file: `data` as JSON-like values, or the problems that kept it from loading.

    `marks[path]` is the (line, column) of the value at that path (a tuple of keys and indexes);
    `key_marks[path]` is that of the key that names it. `raw_scalars[path]` keeps the source spelling of a
    scalar that is not a plain name, so rules can show a number as it was written. `aliases[path]` is the path
    of the anchored node that the alias at `path` repeats; nodes read through an alias are located at the alias.
    """

    path: str
    text: str = ""
    data: object = None
    problems: list[Problem] = field(default_factory=list)
    marks: dict = field(default_factory=dict)
    key_marks: dict = field(default_factory=dict)
    raw_scalars: dict = field(default_factory=dict)
    refused: set = field(default_factory=set)  # paths whose node was refused (a tag): no further errors there
    aliases: dict = field(default_factory=dict)

    def where(self, path: tuple, key: bool = False) -> tuple[int, int]:
        """The (line, column) of the node at `path` (of its key with `key`), else of its closest located parent
        (the alias use, for a node read through an alias)."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def problem(self, path: tuple, rule, message: str, fix: str | None = None, key: bool = False) -> Problem:
        """A problem of `rule` (a `planner.rules.Rule`) at the node `path` (its key with `key`)."""
        return rule.at(self, path, message, fix, key)

    def is_refused(self, path: tuple) -> bool:
        """Whether the node at `path` (or one above it, through aliases too) was refused by the loader."""
        if not self.refused:
            return False
        for i in range(len(path) + 1):
            if path[:i] in self.refused:
                return True
            if path[:i] in self.aliases:
                return self.is_refused(self.aliases[path[:i]] + path[i:])
        return False

    def raw(self, path: tuple) -> str | None:
        """The source spelling of the scalar at `path` (read through aliases), or None."""
        if path in self.raw_scalars:
            return self.raw_scalars[path]
        for i in range(1, len(path) + 1):
            if path[:i] in self.aliases:
                return self.raw(self.aliases[path[:i]] + path[i:])
        return None


















class _Stop(Exception):
    """The document cannot be read further; args[0] is the problem that says why."""


def load(raw: bytes, path: str) -> Document:
    """Load one plan file; problems come back in the document, never as an exception."""
    doc = Document(path)
    try:
        doc.text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _line_col(raw[: exc.start].decode("utf-8", "replace").removeprefix("\ufeff"))
        doc.problems.append(PLN002.problem(path, f"byte 0x{raw[exc.start]:02x} is not UTF-8", None, line, column))
        return doc
    return _read(doc, _Loader)


def _read(doc: Document, loader: type) -> Document:
    """Build `doc` with `loader`'s parser. libyaml words its errors differently from PyYAML, and accepts a few
    things PyYAML refuses (tabs after a value, some tags, block scalar headers, odd line breaks): when the file
    is not YAML to libyaml, or holds one of those characters, PyYAML's pure parser reads it again and its result
    is the one returned, so results never depend on whether libyaml is installed. Anything else is read once."""
    try:
        _Builder(doc, loader(doc.text)).document()
    except yaml.YAMLError as exc:
        if loader is not _PURE:
            return _read(Document(doc.path, doc.text), _PURE)
        doc.data = None
        doc.problems.append(_yaml_problem(doc, exc))
    except _Stop as stop:
        doc.data = None
        doc.problems.append(stop.args[0])
    if loader is not _PURE and _may_diverge(doc.text):
        return _read(Document(doc.path, doc.text), _PURE)
    return doc


class _Anchor:
    """An anchored node: its value, its path (None for an anchored key), the nodes and levels it expands to,
    and its source text when it is a scalar (usable as a key)."""

    __slots__ = ("value", "path", "size", "height", "text")

    def __init__(self, value, path: tuple | None, size: int, height: int, text: str | None):
        self.value, self.path, self.size, self.height, self.text = value, path, size, height, text


class _Builder:
    """Builds one document from the parser's events, depth first, with a budget of expanded nodes."""

    def __init__(self, doc: Document, parser):
        self.doc, self.parser = doc, parser
        self.budget = MAX_NODES
        self.reach = 0  # the deepest level reached, aliases expanded
        self.anchors: dict[str, _Anchor] = {}
        self.open: set[str] = set()  # anchors whose node is being built

    def document(self) -> None:
        self.parser.get_event()  # stream start
        start = self.parser.get_event()
        if isinstance(start, yaml.StreamEndEvent):
            self.doc.problems.append(_empty(self.doc.path))
            return
        event = self.parser.get_event()
        value = self.node(event, ())
        self.parser.get_event()  # document end
        after = self.parser.get_event()
        if isinstance(after, yaml.DocumentStartEvent):
            raise _Stop(self.located(after, PLN005, "the file holds several YAML documents"))
        if isinstance(value, dict):
            self.doc.data = value
        elif () in self.doc.refused:
            return
        elif value is None and isinstance(event, yaml.ScalarEvent) and event.implicit[0]:
            self.doc.problems.append(_empty(self.doc.path))
        else:
            kind = "list" if isinstance(value, list) else "scalar"
            self.doc.problems.append(self.located(event, PLN009, f"the top level is a {kind}, not a mapping"))

    # -- nodes --------------------------------------------------------------------------------------------------
    def node(self, event, path: tuple):
        # the hot path of every load: spend() and _mark() written out, a plain scalar read at once
        kind = type(event)
        if kind is _ALIAS:
            return self.alias(event, path)
        depth = len(path)
        self.budget -= 1
        if depth > self.reach:
            self.reach = depth
        if self.budget < 0 or depth > MAX_DEPTH:
            self.spend(0, event, depth)
        mark = event.start_mark
        self.doc.marks[path] = (mark.line + 1, mark.column + 1)
        name = event.anchor
        if name is None:
            return self.scalar(event, path) if kind is _SCALAR else self.content(event, path)
        if name in self.anchors or name in self.open:
            raise _Stop(self.located(event, PLN003, f"anchor &{name} is defined twice",
                                     "give each anchor its own name"))
        self.open.add(name)
        budget, reach, self.reach = self.budget, self.reach, len(path)
        value = self.content(event, path)
        self.anchors[name] = _Anchor(value, path, budget - self.budget, self.reach - len(path),
                                     event.value if isinstance(event, yaml.ScalarEvent) else None)
        self.open.discard(name)
        self.reach = max(reach, self.reach)
        return value

    def content(self, event, path: tuple):
        kind = type(event)
        if kind is _SCALAR:
            return self.scalar(event, path)
        if kind is _SEQ_START:
            items = self.sequence(path)
            return items if _untagged(event.tag, _SEQ) else self.refuse(event, path, "a list")
        if kind is _MAP_START:
            mapping = self.mapping(path)
            return mapping if _untagged(event.tag, _MAP) else self.refuse(event, path, "a mapping")
        raise _Stop(self.located(event, PLN003, f"YAML syntax error: unexpected {type(event).__name__}"))

    def alias(self, event, path: tuple):
        anchor = self.anchor(event)
        self.spend(anchor.size, event, len(path) + anchor.height)
        self.doc.marks[path] = _mark(event)
        if anchor.path is not None:
            self.doc.aliases[path] = anchor.path
        return anchor.value

    def anchor(self, event) -> _Anchor:
        name = event.anchor
        if name in self.open:
            raise _Stop(self.located(event, PLN007, f"alias *{name} is used inside the node it names, "
                                     "so the document would nest without end"))
        if name not in self.anchors:
            raise _Stop(self.located(event, PLN003, f"alias *{name} names no anchor &{name} written before it",
                                     f"define &{name} before using *{name}, or write the value out"))
        return self.anchors[name]

    def spend(self, nodes: int, event, depth: int) -> None:
        self.budget -= nodes
        self.reach = max(self.reach, depth)
        if self.budget < 0 or depth > MAX_DEPTH:
            what = "expands to too many nodes" if self.budget < 0 else "nests too deeply"
            raise _Stop(self.located(event, PLN007, f"the document {what} (aliases or nesting beyond "
                                     f"{MAX_NODES} nodes / {MAX_DEPTH} levels)"))

    def sequence(self, path: tuple) -> list:
        items: list = []
        next_event, node = self.parser.get_event, self.node
        event = next_event()
        while type(event) is not _SEQ_END:
            items.append(node(event, path + (len(items),)))
            event = next_event()
        return items

    def mapping(self, path: tuple) -> dict:
        out: dict = {}
        next_event, node, key_marks = self.parser.get_event, self.node, self.doc.key_marks
        event = next_event()
        while type(event) is not _MAP_END:
            text = event.value if type(event) is _SCALAR and event.anchor is None and event.tag is None else None
            if text and (text[0].isalpha() or text[0] == "_") and text not in _WORDS and event.implicit[0]:
                key = text  # a plain name: the common case, what `key` would find
            else:
                key = self.key(event, path)
            value_event = next_event()
            if key is not None and key in out:
                first = key_marks[path + (key,)]
                self.doc.problems.append(self.located(event, PLN006,
                                                      f"duplicate key {key!r} (first at line {first[0]})"))
                key = None
            if key is None:
                node(value_event, path + (_Discarded(),))  # read for its anchors and its own problems
            else:
                child, mark = path + (key,), event.start_mark
                key_marks[child] = (mark.line + 1, mark.column + 1)
                out[key] = node(value_event, child)
                if type(value_event) is _SCALAR and not value_event.value and _nothing(value_event):
                    self.doc.marks[child] = key_marks[child]  # `key:` alone: libyaml and PyYAML place it apart
            event = next_event()
        return out

    def key(self, event, path: tuple) -> str | None:
        """The text of a key, or None (and a problem) for a key no plan can have."""
        if isinstance(event, yaml.AliasEvent):
            text = self.anchor(event).text
            if text is None:
                self.doc.problems.append(self.located(event, PLN009, "a list or mapping cannot be a key",
                                                      "use a plain name as the key"))
            return text
        if not isinstance(event, yaml.ScalarEvent):
            kind = "list" if isinstance(event, yaml.SequenceStartEvent) else "mapping"
            self.node(event, path + (_Discarded(),))
            self.doc.problems.append(self.located(event, PLN009, f"a {kind} cannot be a key",
                                                  "use a plain name as the key"))
            return None
        if event.anchor is not None:  # an anchored key: its alias can only be a key (or its text)
            if event.anchor in self.anchors or event.anchor in self.open:
                raise _Stop(self.located(event, PLN003, f"anchor &{event.anchor} is defined twice",
                                         "give each anchor its own name"))
            self.anchors[event.anchor] = _Anchor(event.value, None, 1, 0, event.value)
        if event.tag is None and event.implicit[0]:
            if event.value == "<<":
                self.doc.problems.append(self.located(event, PLN008, "merge keys (`<<`) are not allowed in a plan",
                                                      "write the keys out"))
                return None
            read = _read_plain(event.value)[1]
            if read is not None:
                self.doc.problems.append(self.ambiguous(event, *read))
        elif not _untagged(event.tag, _STR):
            self.doc.problems.append(self.located(event, PLN008, f"tag {_short(event.tag)!r} is not allowed on "
                                                  "a key", "remove the tag: keys are plain names"))
            return None
        return event.value

    # -- scalars ------------------------------------------------------------------------------------------------
    def scalar(self, event, path: tuple):
        text = event.value
        plain = event.tag is None and event.implicit[0]
        if plain and text and (text[0].isalpha() or text[0] == "_") and text not in _WORDS:
            return text  # a name, as `_read_plain` reads it, without the call (its own text: no raw spelling kept)
        self.doc.raw_scalars[path] = text
        if plain:  # read by YAML 1.1 and 1.2 rules alike, or refused
            value, read = _read_plain(text)
            if read is None:
                return value
            if read[0] is _INVALID and read[1] is _INVALID:
                return self.refuse(event, path, problem=self.located(
                    event, PLN007, f"the number `{text[:20]}...` has {len(text)} digits",
                    "write a number a plan can use"))
            return self.refuse(event, path, problem=self.ambiguous(event, *read))
        if _untagged(event.tag, _STR):  # quoted, `!` or `!!str`
            return text
        kind = event.tag[len(_Y):] if event.tag.startswith(_Y) else None
        if kind not in _TAG_WANTS:
            return self.refuse(event, path, "a scalar")
        r11, r12 = _tagged11(kind, text), _tagged12(kind, text)
        if r11 is _INVALID and r12 is _INVALID:
            return self.refuse(event, path, problem=self.located(
                event, PLN008, f"tag {_short(event.tag)!r} cannot hold {text!r}",
                f"write {_TAG_WANTS[kind]}, or remove the tag"))
        if not _same(r11, r12):
            return self.refuse(event, path, problem=self.ambiguous(event, r11, r12))
        return text if kind == "timestamp" else r11  # a date is no plan value: its text gets a clear type error

    def ambiguous(self, event, r11, r12) -> Problem:
        tag = "" if event.tag is None else f"{_short(event.tag)} "
        shown = f"`{tag}{event.value}`"
        options = []
        for value in (r11, r12):
            written = _spelling(value)
            if written is not None and written not in options:
                options.append(written)
        quote = f"quote it ({event.value!r}) to keep the text"
        if not options:
            fix = quote
        elif len(options) == 1:
            fix = f"write {options[0]}, or {quote}"
        else:
            fix = f"write {' or '.join(options)}, whichever you mean, or {quote}"
        invalid = f"no valid {tag.strip()}" if tag else _INVALID.words
        words = [invalid if value is _INVALID else _words(value) for value in (r11, r12)]
        second = words[1] if r12 is _JSON_STRING else f"{words[1]} in YAML 1.2"
        return self.located(event, PLN010, f"{shown} is {words[0]} in YAML 1.1 but {second}", fix)

    def refuse(self, event, path: tuple, holds: str = "", problem: Problem | None = None) -> None:
        """Record that the node at `path` has no value, with `problem` (default: its tag is not allowed)."""
        if problem is None:
            tag = _short(event.tag)
            standard = tag.startswith("!!") and tag[2:] in (*_TAG_WANTS, "str", "seq", "map")
            problem = self.located(event, PLN008, f"tag {tag!r} cannot hold {holds}" if standard
                                   else f"tag {tag!r} is not allowed in a plan")
        self.doc.refused.add(path)
        self.doc.problems.append(problem)
        return None

    def located(self, event, rule, message: str, fix: str | None = None) -> Problem:
        line, column = _mark(event)
        return rule.problem(self.doc.path, message, fix, line, column)


class _Discarded:
    """A path element for a value read only for its side effects (after a refused key): unique, never looked up."""

    def __repr__(self) -> str:
        return "<discarded>"


def _may_diverge(text: str) -> bool:
    return any(char in text for char in _DIVERGENT_CHARS) and re.search(_DIVERGENT, text, re.MULTILINE) is not None


def _nothing(event) -> bool:
    return (isinstance(event, yaml.ScalarEvent) and event.value == "" and event.implicit[0] and event.tag is None
            and event.anchor is None)


def _untagged(tag: str | None, own: str) -> bool:
    return tag is None or tag == "!" or tag == own


def _short(tag: str) -> str:
    return "!!" + tag[len(_Y):] if tag.startswith(_Y) else tag


def _read_plain(text: str) -> tuple[object, tuple[object, object] | None]:
    """(value, None) when YAML 1.1 and 1.2 read the plain scalar `text` alike, else (None, (1.1's, 1.2's))."""
    first = text[:1]
    if (first.isalpha() or first == "_") and text not in _WORDS:
        return text, None  # a name: a string in both (the common case, kept cheap)
    if text.isdigit() and text.isascii() and (first != "0" or text == "0") and len(text) <= _MAX_DIGITS:
        return int(text), None
    r11, r12 = _read11(text), _read12(text)
    if re.fullmatch(_HEX12, text) and _same(r11, r12):
        return None, (r11, _JSON_STRING)  # 16 in YAML 1.1 and 1.2's core schema, a string in 1.2's JSON schema
    return (r11, None) if _same(r11, r12) and r11 is not _INVALID else (None, (r11, r12))


def _read11(text: str):
    """A plain scalar as YAML 1.1 reads it: PyYAML's resolver, plus y/n booleans (other YAML 1.1 readers)."""
    if text in _YN11:
        return _YN11[text]
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
    if tag == _STR:
        return text
    if tag == _Y + "timestamp":
        return _DATE
    if tag == _Y + "merge":
        return _MERGE
    if tag == _Y + "value":
        return _VALUE
    return _construct(tag, text)


def _read12(text: str):
    """A plain scalar as the YAML 1.2 core schema reads it."""
    if text in _NULL12:
        return None
    if text in _BOOL12:
        return _BOOL12[text]
    if re.fullmatch(_INT12, text):
        return int(text) if len(text) <= _MAX_DIGITS else _INVALID
    if re.fullmatch(_OCT12, text):
        return int(text[2:], 8)
    if re.fullmatch(_HEX12, text):
        return int(text[2:], 16)
    if re.fullmatch(_FLOAT12, text):
        return float(text)
    if re.fullmatch(_INF12, text):
        return float("-inf") if text[0] == "-" else float("inf")
    if re.fullmatch(_NAN12, text):
        return float("nan")
    return text


def _tagged11(kind: str, text: str):
    """The value YAML 1.1 (PyYAML) gives `!!kind text`, or _INVALID."""
    if kind == "null":
        return None if text in _NULL12 else _INVALID
    if kind == "bool":
        return _BOOL11.get(text.lower(), _INVALID)
    if kind == "timestamp":
        return text if _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == _Y + "timestamp" else _INVALID
    return _construct(_Y + kind, text)


def _tagged12(kind: str, text: str):
    """The value the YAML 1.2 core schema gives `!!kind text`, or _INVALID."""
    if kind == "bool":
        return _BOOL12.get(text, _INVALID)
    if kind in ("null", "timestamp"):
        return _tagged11(kind, text)  # read alike; 1.2 keeps !!timestamp in its tag repository
    value = _read12(text)
    if kind == "int":
        return value if type(value) is int else _INVALID
    return float(value) if type(value) in (int, float) else _INVALID


def _construct(tag: str, text: str):
    try:
        return _CONSTRUCT.yaml_constructors[tag](_CONSTRUCT, yaml.ScalarNode(tag, text))
    except (ValueError, IndexError, KeyError, OverflowError):  # `!!int ""`, `!!bool maybe`, a 5000-digit number
        return _INVALID


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    return a is b or a == b or (isinstance(a, float) and a != a and b != b)


def _words(value) -> str:
    if isinstance(value, _Special):
        return value.words
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {_spelling(value)}"
    return f"the string {value!r}"


def _spelling(value) -> str | None:
    """How to write `value` so that both YAML versions read it alike (None for text and non-values)."""
    if isinstance(value, (_Special, str)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return ".nan" if value != value else ("-.inf" if value < 0 else ".inf")
    return repr(value)


def _empty(path: str) -> Problem:
    return PLN001.problem(path, "the plan is empty", line=1, column=1)


def _yaml_problem(doc: Document, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line, column = _line_col(doc.text[: exc.position])
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return PLN003.problem(doc.path, f"not YAML: the character U+{ord(char):04X} is not allowed",
                              "remove the character", line, column)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = getattr(exc, "problem", None) or str(exc)
    lines = doc.text.splitlines()
    char = lines[line - 1][column - 1: column] if 0 < line <= len(lines) else ""
    if char == "\t" or "\\t" in problem:
        return PLN004.problem(doc.path, "a tab is used for indentation", None, line, column)
    context = f" {exc.context}" if getattr(exc, "context", None) else ""
    return PLN003.problem(doc.path, f"YAML syntax error:{context} {problem}".replace("  ", " "), None, line, column)


def _mark(event) -> tuple[int, int]:
    return event.start_mark.line + 1, event.start_mark.column + 1


def _line_col(prefix: str) -> tuple[int, int]:
    """The (line, column) just after `prefix`, counting line breaks as YAML does (\\r\\n, \\r, \\x85, ...)."""
    lines = re.split(_BREAKS, prefix)
    return len(lines), len(lines[-1]) + 1
