"""A JSON Schema compiled into one Python predicate, for the fast path of `planner validate`.

jsonschema stays the authority: it produces every error message. But it walks the schema anew for each document
(about a millisecond for a plan), which would make validating hundreds of plans cost far more than parsing them.
Most plans are valid, so `rules` first asks this predicate; only when it says "invalid" does jsonschema run.
Only the keywords our schema uses are compiled; a schema with any other keyword makes `compile_schema` return
None and every document goes to jsonschema. A test checks that both agree on the corpus and on random data.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

Check = Callable[[object], bool]
_IGNORED = {"$schema", "$id", "$defs", "title", "description", "$comment", "default", "examples"}
_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class _Unsupported(Exception):
    pass


def compile_schema(schema: dict) -> Check | None:
    """A predicate equal to `jsonschema.Draft202012Validator(schema).is_valid` (with integers that are never
    floats or booleans), or None when the schema uses a keyword this module does not compile."""
    try:
        return _Compiler(schema).compile(schema)
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


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.refs: dict[str, Check] = {}

    def compile(self, schema) -> Check:
        if schema is True:
            return lambda v: True
        if schema is False:
            return lambda v: False
        checks = [self.keyword(key, value, schema) for key, value in schema.items() if key not in _IGNORED]
        checks = tuple(c for c in checks if c is not None)
        if len(checks) == 1:
            return checks[0]

        def every(v, checks=checks):
            for check in checks:
                if not check(v):
                    return False
            return True

        return every

    def keyword(self, key: str, value, schema: dict) -> Check | None:
        method = getattr(self, "k_" + key.lstrip("$"), None)
        if method is None:
            raise _Unsupported(key)
        return method(value, schema)

    def k_type(self, value, _):
        tests = [_TYPES[t] for t in (value if isinstance(value, list) else [value])]
        return tests[0] if len(tests) == 1 else lambda v: any(t(v) for t in tests)

    def k_const(self, value, _):
        return lambda v: _equal(v, value)

    def k_enum(self, value, _):
        return lambda v: any(_equal(v, option) for option in value)

    def k_pattern(self, value, _):
        search = ecma_regex(value).search
        return lambda v: not isinstance(v, str) or search(v) is not None

    def k_minLength(self, value, _):
        return lambda v: not isinstance(v, str) or len(v) >= value

    def k_minimum(self, value, _):
        return lambda v: not _TYPES["number"](v) or v >= value

    def k_maximum(self, value, _):
        return lambda v: not _TYPES["number"](v) or v <= value

    def k_minItems(self, value, _):
        return lambda v: not isinstance(v, list) or len(v) >= value

    def k_minProperties(self, value, _):
        return lambda v: not isinstance(v, dict) or len(v) >= value

    def k_required(self, value, _):
        return lambda v: not isinstance(v, dict) or all(name in v for name in value)

    def k_items(self, value, _):
        item = self.compile(value)
        return lambda v: not isinstance(v, list) or all(map(item, v))

    def k_propertyNames(self, value, _):
        name = self.compile(value)
        return lambda v: not isinstance(v, dict) or all(map(name, v))

    def k_properties(self, value, _):
        props = {name: self.compile(sub) for name, sub in value.items()}

        def properties(v):
            if isinstance(v, dict):
                for key, sub in v.items():
                    check = props.get(key)
                    if check is not None and not check(sub):
                        return False
            return True

        return properties

    def k_additionalProperties(self, value, schema):
        known = set(schema.get("properties", {}))
        if schema.get("patternProperties"):
            raise _Unsupported("patternProperties")
        extra = self.compile(value)

        def additional(v):
            if isinstance(v, dict):
                for key, sub in v.items():
                    if key not in known and not extra(sub):
                        return False
            return True

        return additional

    def k_not(self, value, _):
        inner = self.compile(value)
        return lambda v: not inner(v)

    def k_ref(self, value, _):
        if not value.startswith("#/"):
            raise _Unsupported(value)
        if value not in self.refs:
            target = self.root
            for part in value[2:].split("/"):
                target = target[part]
            self.refs[value] = None  # a reference met again while compiling itself is resolved late
            self.refs[value] = self.compile(target)
        compiled = self.refs[value]
        if compiled is not None:
            return compiled
        refs = self.refs
        return lambda v: refs[value](v)
