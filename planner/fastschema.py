"""A JSON Schema compiled into one Python function, for the fast path of `planner validate`.

jsonschema stays the authority: it produces every error message. But it walks the schema anew for each document
(about a millisecond for a plan), which would make validating hundreds of plans cost far more than parsing them.
Most plans are valid, so the rules first ask this predicate; only when it says "invalid" does jsonschema run.
The schema is translated into the source of one function (a few `isinstance` tests and dict lookups per key, no
call per keyword), compiled once per process. Only the keywords our schema uses are compiled; a schema with any
other keyword makes `compile_schema` return None and every document goes to jsonschema. A test checks that both
agree on the corpus and on random data.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

Check = Callable[[object], bool]
_IGNORED = {"$schema", "$id", "$defs", "title", "description", "$comment", "default", "examples"}
# Each JSON type as a Python test of the variable `{v}`.
_TYPES = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, list)",
    "string": "isinstance({v}, str)",
    "integer": "(isinstance({v}, int) and not isinstance({v}, bool))",
    "number": "(isinstance({v}, (int, float)) and not isinstance({v}, bool))",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
}


class _Unsupported(Exception):
    pass


def compile_schema(schema: dict) -> Check | None:
    """A predicate equal to `jsonschema.Draft202012Validator(schema).is_valid` (with integers that are never
    floats or booleans), or None when the schema uses a keyword this module does not compile."""
    try:
        return _Generator(schema).compile()
    except _Unsupported:
        return None


@lru_cache(maxsize=64)
def ecma_regex(pattern: str) -> re.Pattern:
    """`pattern` compiled so that Python's `search` agrees with ECMA-262, the regex dialect of JSON Schema
    (check-jsonschema's default): `$` outside a character class matches only at the very end of the string
    (Python's also matches before a final newline, so "cuda\\n" would pass `^cuda$`). The other differences
    (`\\d`, `\\w` and `.` on non-ASCII text and line separators) do not arise in the schema's patterns."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i: i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append("\\Z" if char == "$" and not in_class else char)
        i += 1
    return re.compile("".join(out))


def _equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


class _Generator:
    """Writes the source of `check(v0)`: every keyword is an `if ...: return False` over the variable holding its
    instance (loops over items and keys nest, with fresh variables); a local `$ref` is inlined, or called as a
    function of its own when met again inside itself."""

    def __init__(self, root: dict):
        self.root = root
        self.constants: dict[str, object] = {"_equal": _equal}
        self.functions: list[str] = []
        self.refs: dict[str, str] = {}  # reference -> the function compiled for it, once it recurses
        self.expanding: set[str] = set()
        self.count = 0

    def compile(self) -> Check:
        self.define("check", self.root)
        namespace = dict(self.constants)
        exec(compile("\n\n".join(self.functions), "<fastschema>", "exec"), namespace)  # our own source, from the schema
        return namespace["check"]

    def define(self, name: str, schema) -> None:
        body = self.body(schema, "v0")
        self.functions.append("\n".join([f"def {name}(v0):", *_indent(body), "    return True"]))

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def constant(self, value) -> str:
        name = self.fresh("K")
        self.constants[name] = value
        return name

    def body(self, schema, v: str) -> list[str]:
        if schema is True:
            return []
        if schema is False:
            return ["return False"]
        if not isinstance(schema, dict):
            raise _Unsupported(repr(schema))
        # `type` first: the keywords after it test the instance without a guard when its one type is known
        keys = sorted(schema, key=lambda key: key != "type")
        lines: list[str] = []
        for key in keys:
            if key in _IGNORED or key == "additionalProperties" and "properties" in schema:
                continue
            method = getattr(self, "k_" + key.lstrip("$"), None)
            if method is None:
                raise _Unsupported(key)
            lines += method(schema[key], v, schema)
        return lines

    @staticmethod
    def known(schema: dict, *types: str) -> bool:
        """Whether the schema's own `type` (tested first) already makes the instance one of `types`."""
        return schema.get("type") in types

    def guarded(self, schema: dict, jtype: str, v: str, lines: list[str]) -> list[str]:
        """`lines`, run only when the instance is of JSON type `jtype` (as keywords apply), tested unless known."""
        if not lines or self.known(schema, jtype):
            return lines
        return [f"if {_TYPES[jtype].format(v=v)}:", *_indent(lines)]

    def k_type(self, value, v, _):
        tests = [_TYPES[t].format(v=v) for t in (value if isinstance(value, list) else [value])]
        return [f"if not ({' or '.join(tests)}): return False"]

    def k_const(self, value, v, schema):
        if self.known(schema, "integer", "string") and type(value) in (int, str):
            return [f"if {v} != {self.constant(value)}: return False"]  # what _equal does for these types
        return [f"if not _equal({v}, {self.constant(value)}): return False"]

    def k_enum(self, value, v, schema):
        if all(type(option) is str for option in value):
            if self.known(schema, "string"):
                return [f"if {v} not in {self.constant(frozenset(value))}: return False"]
            return [f"if not (isinstance({v}, str) and {v} in {self.constant(frozenset(value))}): return False"]
        return [f"if not any(_equal({v}, o) for o in {self.constant(tuple(value))}): return False"]

    def k_pattern(self, value, v, schema):
        return self.guarded(schema, "string", v, [f"if {self.constant(ecma_regex(value).search)}({v}) is None: "
                                                  "return False"])

    def k_minLength(self, value, v, schema):
        return self.guarded(schema, "string", v, [f"if len({v}) < {int(value)}: return False"])

    def k_minimum(self, value, v, schema):
        lines = [f"if {v} < {self.constant(value)}: return False"]
        return lines if self.known(schema, "integer") else self.guarded(schema, "number", v, lines)

    def k_maximum(self, value, v, schema):
        lines = [f"if {v} > {self.constant(value)}: return False"]
        return lines if self.known(schema, "integer") else self.guarded(schema, "number", v, lines)

    def k_minItems(self, value, v, schema):
        return self.guarded(schema, "array", v, [f"if len({v}) < {int(value)}: return False"])

    def k_minProperties(self, value, v, schema):
        return self.guarded(schema, "object", v, [f"if len({v}) < {int(value)}: return False"])

    def k_required(self, value, v, schema):
        if not value:
            return []
        tests = " and ".join(f"{self.constant(name)} in {v}" for name in value)
        return self.guarded(schema, "object", v, [f"if not ({tests}): return False"])

    def k_items(self, value, v, schema):
        return self.guarded(schema, "array", v, self.each(f"for {{x}} in {v}:", value))

    def k_propertyNames(self, value, v, schema):
        return self.guarded(schema, "object", v, self.each(f"for {{x}} in {v}:", value))

    def each(self, loop: str, schema) -> list[str]:
        x = self.fresh("v")
        body = self.body(schema, x)
        return [loop.format(x=x), *_indent(body)] if body else []

    def k_properties(self, value, v, schema):
        lines = []
        for name, sub in value.items():
            x = self.fresh("v")
            body = self.body(sub, x)
            if body:
                key = self.constant(name)
                lines += [f"if {key} in {v}:", f"    {x} = {v}[{key}]", *_indent(body)]
        lines += self.additional(schema.get("additionalProperties", True), v, set(value))
        return self.guarded(schema, "object", v, lines)

    def k_additionalProperties(self, value, v, schema):  # without `properties` beside it
        return self.guarded(schema, "object", v, self.additional(value, v, set()))

    def additional(self, value, v: str, known: set) -> list[str]:
        if value is False:
            return [f"if not {self.constant(frozenset(known))}.issuperset({v}): return False"]
        k, x = self.fresh("k"), self.fresh("v")
        body = self.body(value, x)
        if not body:
            return []
        return [f"for {k}, {x} in {v}.items():", f"    if {k} not in {self.constant(frozenset(known))}:",
                *_indent(_indent(body))]

    def k_patternProperties(self, value, v, _):
        raise _Unsupported("patternProperties")

    def k_not(self, value, v, _):
        name = self.fresh("f")
        self.define(name, value)
        return [f"if {name}({v}): return False"]

    def k_ref(self, value, v, _):
        if not isinstance(value, str) or not value.startswith("#/"):
            raise _Unsupported(repr(value))
        target = self.root
        for part in value[2:].split("/"):
            target = target[part]
        if value in self.expanding:  # met again inside itself: a function of its own, defined once
            if value not in self.refs:
                self.refs[value] = self.fresh("ref")
                self.define(self.refs[value], target)
            return [f"if not {self.refs[value]}({v}): return False"]
        self.expanding.add(value)
        try:
            return self.body(target, v)
        finally:
            self.expanding.discard(value)


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]
