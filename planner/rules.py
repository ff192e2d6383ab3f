"""The one rule table, and the checks that turn a loaded document into a `Plan` or a list of `Problem`s.

Schema errors (jsonschema, Draft 2020-12, `schemas/plan.schema.json`) are mapped onto the same rule ids, at the
line and column of the offending node. Command-line overrides are checked here too, so `--device cpu` fails
the same rule as `device: cpu` in a file.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

from planner import order
from planner.fastschema import compile_schema, ecma_regex
from planner.loader import Document
from planner.plan import Plan, Problem


@dataclass(frozen=True)
class Rule:
    id: str
    catches: str
    fix: str


RULES = {r.id: r for r in (
    Rule("PLN000", "the plan file cannot be read (missing, not a regular file, unreadable, over 1 MiB)",
         "check the path and its permissions"),
    Rule("PLN001", "an empty file", "write `version: 1`, `device` and `components`"),
    Rule("PLN002", "bytes that are not UTF-8", "save the file as UTF-8"),
    Rule("PLN003", "a YAML syntax error", "fix the YAML at the place shown"),
    Rule("PLN004", "tab indentation", "indent with spaces"),
    Rule("PLN005", "several YAML documents in one file", "keep one plan per file; remove `---`"),
    Rule("PLN006", "a duplicate key, at any depth (YAML would keep the last silently)", "keep one of them"),
    Rule("PLN007", "alias expansion bombs and absurd nesting", "write the plan out plainly"),
    Rule("PLN008", "YAML tags (`!!python/object`, `!foo`), standard tags holding what they cannot (`!!int abc`), "
         "and merge keys", "remove the tag or merge key"),
    Rule("PLN009", "a top level (or key) that is not a plain mapping", "write `key: value` lines"),
    Rule("PLN010", "a plain scalar that YAML 1.1 and YAML 1.2 read differently (`on`, `yes`, `010`, `1:30`, `1e3`)",
         "quote it to keep the text, or write the value plainly"),
    Rule("PLN101", "an unknown key", "use one of the keys the schema lists (a suggestion is given)"),
    Rule("PLN102", "a value of the wrong type", "write the type asked for"),
    Rule("PLN103", "a missing required key (`version`, `device`, `components`)", "add the key"),
    Rule("PLN104", "a value outside the allowed set (torch_dtype, an empty string)", "use an allowed value"),
    Rule("PLN201", "a `version` other than 1", "write `version: 1`"),
    Rule("PLN202", "a device that cannot be an offload target (`cpu`, `meta`, `disk`)",
         "write `device: cuda` (or xpu, mps, ...)"),
    Rule("PLN203", "a malformed device string, an unknown device type, an index above 127 or with a leading zero",
         "write a type, optionally indexed: `cuda`, `cuda:1`"),
    Rule("PLN204", "a `gpu_id` that is negative, above 127 or not an integer", "write an integer from 0 to 127"),
    Rule("PLN205", "`gpu_id` together with an indexed device (`cuda:1`)",
         "keep one: `device: cuda` + `gpu_id: 1`, or `device: cuda:1`"),
    Rule("PLN206", "a `device_map`: offloading and device maps cannot be combined", "remove `device_map`"),
    Rule("PLN207", "empty `components`", "list the components to offload, in running order"),
    Rule("PLN208", "a name listed twice (components, `after`, `exclude`)", "keep one"),
    Rule("PLN209", "`after` naming a component the plan does not have", "name a component of the plan"),
    Rule("PLN210", "a component that runs after itself", "remove it from its own `after`"),
    Rule("PLN211", "a cycle of `after` edges (reported with its path)", "break the cycle"),
    Rule("PLN212", "a component both offloaded and excluded", "keep it in one of `components` and `exclude`"),
    Rule("PLN213", "a `policy` other than `chain` (the only one in this version)",
         "write `policy: chain` or leave it out"),
    Rule("PLN214", "a `budget` (reserved for the memory-budget policy)", "remove `budget`"),
    Rule("PLN215", "a component name that is not an identifier", "use the attribute name, as in `pipe.components`"),
    Rule("PLN301", "a plan component the pipeline does not have", "name one of the pipeline's components"),
    Rule("PLN302", "a pipeline that cannot be offloaded as planned (device map, offloading already active)",
         "reset the pipeline first, as the message says"),
    Rule("PLN303", "a device that is not present (no accelerator, `gpu_id` beyond the device count)",
         "run with --dry-run, or pick a present device"),
    Rule("PLN304", "a pipeline that cannot be loaded (missing folder, unknown class)",
         "check `pipeline.source` and `pipeline.class`"),
    Rule("PLN305", "a pipeline call that failed under `planner apply`", "check the generation arguments"),
)}

# Device types torch knows as accelerators; kept here so that validating never imports torch.
ACCELERATORS = ("cuda", "xpu", "mps", "npu", "hpu", "mlu", "musa", "mtia", "xla", "ipu", "maia", "privateuseone",
                "hip", "ve", "lazy", "vulkan")
NOT_TARGETS = ("cpu", "meta", "disk")
# torch keeps a device index in 8 bits: cuda:128 wraps to -128 and 256 to 0, so 127 is the largest real index.
MAX_DEVICE_INDEX = 127
_DEVICE = re.compile(r"([a-z][a-z0-9_]*)(?::([0-9]+))?")  # fullmatch: "cuda\n" is no device
# What people write for a device type, and the torch type that means it (ROCm builds of torch use `cuda`).
_DEVICE_SYNONYMS = {"gpu": "cuda", "nvidia": "cuda", "rocm": "cuda", "amd": "cuda", "metal": "mps", "apple": "mps",
                    "intel": "xpu", "tpu": "xla", "gaudi": "hpu", "habana": "hpu", "ascend": "npu"}
_DEVICE_GUESS = re.compile(r"\s*([A-Za-z][A-Za-z_]*?)[\s:_\-]*([0-9]*)\s*")
_EXAMPLES = {"version": "version: 1", "device": "device: cuda", "components": "components: [text_encoder, unet, vae]"}
# Schema errors under these keys get the key's own rule, whatever the schema keyword (see `key_error`).
_RULE_OF_KEY = {"version": "PLN201", "policy": "PLN213", "budget": "PLN214", "device_map": "PLN206"}
# Checked by `device_problems` alone (it also serves the executor), so the schema's errors there are not repeated.
_DEVICE_KEYS = ("device", "gpu_id")
_LISTED = 8  # names shown when a message lists the possible ones
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "plan.schema.json"


def schema_text() -> str:
    """The JSON Schema as shipped (inside the package, or beside it in a source checkout)."""
    packaged = Path(__file__).resolve().parent / "plan.schema.json"
    return (packaged if packaged.exists() else SCHEMA_PATH).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(schema_text())


@lru_cache(maxsize=1)
def _fast_check():
    return compile_schema(_schema())


@lru_cache(maxsize=1)
def _validator():
    """The validator that explains an invalid plan: `_authority` handed only what the compiled predicate rejects
    (a test checks that both find the same errors)."""
    # imported here: a valid plan never needs jsonschema (see fastschema), and its import is most of a run's cost
    import jsonschema

    pruned = _validator_class(jsonschema, _pruning(jsonschema.Draft202012Validator.VALIDATORS))
    return pruned(_inlined(_schema(), _schema()))


@lru_cache(maxsize=1)
def _authority():
    """jsonschema reading the schema as check-jsonschema does (ECMA-262 patterns), with integers that are never
    floats or booleans (a gpu_id of 1.0 is no device index)."""
    import jsonschema

    return _validator_class(jsonschema, {})(_schema())


def _validator_class(jsonschema, keywords: dict):
    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))

    def pattern(validator, regex, instance, schema):
        # ECMA-262, as check-jsonschema reads patterns: `$` is the end of the string, never before a last "\n"
        if validator.is_type(instance, "string") and not ecma_regex(regex).search(instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, validators={"pattern": pattern, **keywords},
                                        type_checker=strict)


def _pruning(original: dict) -> dict:
    """jsonschema's keywords that descend into children, handed only the children that the compiled predicate
    rejects: explaining a plan then costs in proportion to what is wrong in it, not to its size."""

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            instance = {k: v for k, v in instance.items() if k in props and not _valid(props[k], v)}
        yield from original["properties"](validator, props, instance, schema)

    def additional(validator, extra, instance, schema):
        if isinstance(instance, dict) and isinstance(extra, dict) and "patternProperties" not in schema:
            known = schema.get("properties", {})
            instance = {k: v for k, v in instance.items() if k not in known and not _valid(extra, v)}
        yield from original["additionalProperties"](validator, extra, instance, schema)

    def names(validator, sub, instance, schema):
        if isinstance(instance, dict):
            instance = {k: None for k in instance if not _valid(sub, k)}
        yield from original["propertyNames"](validator, sub, instance, schema)

    def items(validator, sub, instance, schema):
        if not (isinstance(instance, list) and isinstance(sub, dict) and "prefixItems" not in schema):
            yield from original["items"](validator, sub, instance, schema)
            return
        for index, item in enumerate(instance):
            if not _valid(sub, item):
                yield from validator.descend(item, sub, path=index)

    return {"properties": properties, "additionalProperties": additional, "propertyNames": names, "items": items}


_COMPILED: dict[int, tuple[object, object]] = {}


def _valid(schema: dict, value) -> bool:
    """Whether `value` is valid under the (inlined) sub-schema, by its compiled predicate; False when unsure."""
    if id(schema) not in _COMPILED:
        _COMPILED[id(schema)] = (schema, compile_schema(schema))  # the schema is kept: its id stays its own
    check = _COMPILED[id(schema)][1]
    return check is not None and check(value)


def _inlined(schema, root: dict):
    """`schema` with each local `$ref` replaced by its target: jsonschema resolves a reference on every use
    (most of its time on a plan of thousands of names); the schema has no recursive reference."""
    if isinstance(schema, list):
        return [_inlined(item, root) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and len(schema) == 1:
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        return _inlined(target, root)
    return {key: _inlined(value, root) for key, value in schema.items()}


def _shown(key: str, value) -> str:
    return repr(value)


def device_problems(device, gpu_id, shown: Callable[[str, object], str] = _shown) -> list[tuple[str, str, str, str]]:
    """(key, rule, message, fix) for a device and gpu_id that cannot be a plan's target; `shown(key, value)`
    writes a value in a message. Shared by the rules and the executor, which re-checks a `Plan` built by hand;
    the schema's own errors on these two keys are left to this function."""
    found = [] if device is None else _device_string(device, shown)  # missing: PLN103
    found += _gpu_id(gpu_id, shown)
    match = _DEVICE.fullmatch(device) if isinstance(device, str) else None
    if match and match.group(2) is not None and _is_index(gpu_id):
        kind = match.group(1)
        found.append(("gpu_id", "PLN205", f"gpu_id {gpu_id} is given together with the indexed device {device!r}",
                      f"keep one: `device: {kind}` with `gpu_id: {gpu_id}`, or `device: {device}` alone"))
    return found


def _device_string(device, shown) -> list[tuple[str, str, str, str]]:
    match = _DEVICE.fullmatch(device) if isinstance(device, str) else None
    if not match:
        hint = suggest_device(device) if isinstance(device, str) else None
        fix = f"did you mean {hint!r}?" if hint else "write a device type, optionally indexed: cuda, cuda:1, xpu, mps"
        return [("device", "PLN203", f"device {shown('device', device)} is not a device string", fix)]
    found = []
    kind, index = match.groups()
    if kind in NOT_TARGETS:
        found.append(("device", "PLN202", f"device {device!r} cannot be an offload target",
                      "write device: cuda (or xpu, mps, ...)"))
    elif kind not in ACCELERATORS:
        hint = suggest_device(device)
        found.append(("device", "PLN203", f"unknown device type {kind!r}",
                      f"did you mean {hint!r}?" if hint else f"write one of {', '.join(ACCELERATORS[:8])}, ..."))
    if index is not None and int(index) > MAX_DEVICE_INDEX:
        found.append(("device", "PLN203", f"device index {index} is beyond {MAX_DEVICE_INDEX}, the largest torch "
                      "accepts (it keeps the index in 8 bits: 128 would become -128)",
                      f"write an index from 0 to {MAX_DEVICE_INDEX}, such as "
                      f"`{kind if kind in ACCELERATORS else 'cuda'}:1`"))
    elif index is not None and len(index) > 1 and index[0] == "0":
        found.append(("device", "PLN203", f"device {device!r} has an index with a leading zero, which torch refuses",
                      f"write `{kind}:{int(index)}`"))
    return found


def _gpu_id(gpu_id, shown) -> list[tuple[str, str, str, str]]:
    if gpu_id is None:
        return []
    if isinstance(gpu_id, bool) or not isinstance(gpu_id, int) or gpu_id < 0:
        return [("gpu_id", "PLN204", f"gpu_id must be a non-negative integer, not {shown('gpu_id', gpu_id)}",
                 "write `gpu_id: 0` (or 1, 2, ...)")]
    if gpu_id > MAX_DEVICE_INDEX:
        return [("gpu_id", "PLN204", f"gpu_id {gpu_id} is beyond {MAX_DEVICE_INDEX}, the largest device index "
                 "torch accepts (it keeps the index in 8 bits: 128 would become -128)",
                 f"write a gpu_id from 0 to {MAX_DEVICE_INDEX}")]
    return []


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DEVICE_INDEX


def suggest_device(device: str) -> str | None:
    """The device string `device` most likely meant (`gpu:0` -> `cuda:0`, `CUDA` -> `cuda`, `cuda0` -> `cuda:0`,
    `metal` -> `mps`), with cuda favoured among close spellings; None when nothing is close."""
    guess = _DEVICE_GUESS.fullmatch(device)
    if not guess:
        return None
    kind, index = guess.group(1).lower(), guess.group(2)
    if kind not in ACCELERATORS and kind not in NOT_TARGETS:
        close = difflib.get_close_matches(kind, ACCELERATORS, n=3, cutoff=0.5)
        kind = _DEVICE_SYNONYMS.get(kind) or ("cuda" if "cuda" in close else (close or [None])[0])
    if kind is None:
        return None
    if index and int(index) <= MAX_DEVICE_INDEX:
        kind = f"{kind}:{int(index)}"
    return kind if kind != device else None


def check_document(doc: Document, overrides: Mapping[str, object] | None = None) -> tuple[Plan | None, list[Problem]]:
    """Validate a loaded document (schema, then plan rules) and build its `Plan` when nothing is wrong."""
    if doc.data is None:
        return None, _sorted(doc.problems)
    checker = _Checker(doc, overrides or {})
    plan = checker.run()
    problems = _sorted(doc.problems + checker.problems)
    return (None if problems else plan), problems


def _sorted(problems: list[Problem]) -> list[Problem]:
    """In source order; only exact duplicates are dropped (two different problems at one place are both kept)."""
    return list(dict.fromkeys(sorted(problems, key=lambda p: (p.path, p.line, p.column, p.rule))))


class _Suggester:
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
        pool = index.near(word, min(self.PER_WORD, self.left))
        self.left -= len(pool)
        hint = difflib.get_close_matches(word, pool, n=1)
        return hint[0] if hint else None


class _Index:
    """Candidate names sorted by their beginning and by their ending, for `_Suggester`."""

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


def _some(names: Sequence[str]) -> str:
    """`names` for a message, the first few only when there are many."""
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown}, ... ({len(names)} in all)"


def _reserved(schema) -> bool:
    """A property that exists only to be refused (`"not": {}`): never offered as an allowed key."""
    return isinstance(schema, dict) and schema.get("not") == {}


@lru_cache(maxsize=1)
def _homes() -> dict[str, tuple]:
    """Each key the schema accepts -> its place (a tuple of keys; "*" for any name, as under components)."""
    homes: dict[str, tuple] = {}

    def walk(schema, place: tuple) -> None:
        for key, sub in schema.get("properties", {}).items():
            if not _reserved(sub):
                homes.setdefault(key, place)
                walk(sub, place + (key,))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, place + ("*",))

    walk(_schema(), ())
    return homes


def _place(path: tuple) -> tuple | None:
    """The schema place of the mapping at `path` (("components", "unet") -> ("components", "*"))."""
    schema, place = _schema(), ()
    for part in path:
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        if part in props:
            schema, place = props[part], place + (part,)
        elif isinstance(schema, dict) and isinstance(schema.get("additionalProperties"), dict):
            schema, place = schema["additionalProperties"], place + ("*",)
        else:
            return None
    return place


def _place_words(place: tuple, key: str) -> str:
    if not place:
        return "at the top level (not indented)"
    if place[-1] == "*":
        return f"in an entry of `{place[-2]}:` (`NAME: {{{key}: ...}}`)"
    return f"under `{place[-1]}:`"


class _Checker:
    def __init__(self, doc: Document, overrides: Mapping[str, object]):
        self.doc = doc
        self.data = dict(doc.data)
        self.data.update(overrides)
        self.overridden = set(overrides)
        self.problems: list[Problem] = []
        self.suggest = _Suggester()

    # -- locating ---------------------------------------------------------------------------------------------
    def add(self, path: tuple, rule: str, message: str, fix: str = "", key: bool = False) -> None:
        if path and path[0] in self.overridden:
            flag = "--" + str(path[0]).replace("_", "-")
            self.problems.append(Problem(flag, 0, 0, rule, message, fix))
        elif not self.doc.is_refused(path):  # else the loader already said why this node has no value
            self.problems.append(self.doc.problem(path, rule, message, fix, key))

    def describe(self, path: tuple, value) -> str:
        raw = None if (path and path[0] in self.overridden) else self.doc.raw(path)
        if isinstance(value, (dict, list)) or value is None:
            return {dict: "a mapping", list: "a list", type(None): "nothing (null)"}[type(value)]
        return f"`{raw}`" if raw is not None and not isinstance(value, str) else repr(value)

    def misplaced(self, path: tuple) -> str | None:
        """"looks mis-indented" when the last key of `path` is no key here but one the schema has elsewhere."""
        key = path[-1] if path else None
        home = _homes().get(key) if isinstance(key, str) else None
        here = _place(path[:-1])
        if home is None or here is None or home == here:
            return None
        return f"`{key}` belongs {_place_words(home, key)}: it looks mis-indented"

    # -- the checks -------------------------------------------------------------------------------------------
    def run(self) -> Plan | None:
        self.schema()
        self.device()
        names, edges = self.components()
        self.exclude(names)
        sequence = self.sequence(names, edges)
        if self.problems or sequence is None:
            return None
        return self.plan(sequence, edges)

    def schema(self) -> None:
        valid = _fast_check()
        if valid is not None and valid(self.data):
            return  # the common case; jsonschema runs only to explain what is wrong
        for err in _validator().iter_errors(self.data):
            self.schema_error(err)

    def schema_error(self, err) -> None:
        path = tuple(err.absolute_path)
        name = ".".join(str(p) for p in path) or "the plan"
        if err.validator == "additionalProperties":
            self.unknown_keys(path, name, err)
        elif err.validator == "required":
            for missing in err.validator_value:
                if missing not in err.instance:
                    example = _EXAMPLES.get(missing, f"{missing}: ...")
                    self.add(path, "PLN103", f"{name} has no {missing!r}", f"add `{example}`")
        elif path[:1] and path[0] in _DEVICE_KEYS and len(path) == 1:
            return  # device_problems says it, with the reason
        elif path[:1] and path[0] in _RULE_OF_KEY and len(path) == 1:
            self.key_error(path[0], path, err.instance)
        elif path == ("components",) and err.validator in ("minItems", "minProperties"):
            self.add(path, "PLN207", "components is empty", "list the components to offload, in running order")
        elif "propertyNames" in err.schema_path:  # a key (a component name): located at the key itself
            at = path + (err.instance,)
            self.add(at, "PLN215", f"{self.describe(at, err.instance)} is not a component name",
                     "use the attribute name, as in pipe.components (letters, digits, _)", key=True)
        elif err.validator == "pattern" and path[:1] in (("components",), ("exclude",)):
            self.add(path, "PLN215", f"{self.describe(path, err.instance)} is not a component name",
                     "use the attribute name, as in pipe.components (letters, digits, _)")
        elif err.validator == "type":
            self.type_error(path, name, err)
        else:
            self.value_error(path, name, err)

    def unknown_keys(self, path: tuple, name: str, err) -> None:
        properties = err.schema.get("properties", {})
        allowed = sorted(k for k, sub in properties.items() if not _reserved(sub))
        for extra in err.instance:
            if extra in properties:
                continue
            at = path + (extra,)
            fix = self.misplaced(at)
            if fix is None:
                hint = self.suggest.closest(extra, allowed) if isinstance(extra, str) else None
                fix = f"did you mean {hint!r}?" if hint else f"allowed keys: {', '.join(allowed)}"
            self.add(at, "PLN101", f"unknown key {extra!r} in {name}", fix, key=True)

    def type_error(self, path: tuple, name: str, err) -> None:
        value = err.instance
        expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        fix = self.misplaced(path) or (f"write {wanted}"
                                       + (" (quote it to keep a string)" if isinstance(value, bool) else ""))
        self.add(path, "PLN102", f"{name} must be {wanted}, not {self.describe(path, value)}", fix)

    def value_error(self, path: tuple, name: str, err) -> None:
        shown = self.describe(path, err.instance)
        if err.validator == "enum":
            self.add(path, "PLN104", f"{name} {shown} is not allowed ({err.message})",
                     f"write one of {', '.join(map(str, err.validator_value))}")
        elif err.validator == "pattern":
            self.add(path, "PLN104", f"{name} {shown} is not allowed (it must match {err.validator_value})",
                     "write a name of letters, digits and _, not starting with a digit")
        else:
            self.add(path, "PLN104", f"{name} {shown} is not allowed ({err.message})", "see schemas/plan.schema.json")

    def key_error(self, key: str, path: tuple, value) -> None:
        shown = self.describe(path, value)
        if key == "version":
            self.add(path, "PLN201", f"version {shown} is not supported", "write `version: 1` (the only version)")
        elif key == "policy":
            self.add(path, "PLN213", f"policy {shown} is not available in this version",
                     "write `policy: chain` or leave it out")
        elif key == "budget":
            self.add(path, "PLN214", "budget is reserved for the memory-budget policy, which this version does "
                     "not have", "remove budget", key=True)
        else:
            self.add(path, "PLN206", "a plan cannot have a device_map: model offloading and device maps cannot be "
                     "combined", "remove device_map; the plan offloads whole components", key=True)

    def device(self) -> None:
        found = device_problems(self.data.get("device"), self.data.get("gpu_id"),
                                lambda key, value: self.describe((key,), value))
        for key, rule, message, fix in found:
            self.add((key,), rule, message, fix)

    def components(self) -> tuple[list[str], list[tuple[str, str]]]:
        comps = self.data.get("components")
        names: list[str] = []
        edges: list[tuple[str, str]] = []
        if isinstance(comps, list):
            seen: set[str] = set()
            for i, name in enumerate(comps):
                if not isinstance(name, str):
                    continue
                if name in seen:
                    self.add(("components", i), "PLN208", f"component {name!r} is listed twice", "keep one")
                    continue
                if names:
                    edges.append((names[-1], name))
                names.append(name)
                seen.add(name)
        elif isinstance(comps, dict):
            names = [n for n in comps if isinstance(n, str)]
            known = set(names)
            for name, spec in comps.items():
                after = spec.get("after") if isinstance(spec, dict) else None
                edges += self.after_edges(name, after if isinstance(after, list) else [], names, known)
        return names, edges

    def sequence(self, names: list[str], edges: list[tuple[str, str]]) -> tuple[str, ...] | None:
        sequence, cycles = order.resolve(names, edges)
        comps = self.data.get("components")
        for cycle in cycles:
            at = ("components", cycle[0], "after", comps[cycle[0]]["after"].index(cycle[-2]))
            self.add(at, "PLN211", f"components form a cycle: {' -> '.join(cycle)}",
                     "remove one of these `after` entries")
        return sequence

    def after_edges(self, name: str, after: list, names: list[str], known: set[str]) -> list[tuple[str, str]]:
        edges, seen = [], set()
        for i, before in enumerate(after):
            at = ("components", name, "after", i)
            if not isinstance(before, str):
                continue
            if before in seen:
                self.add(at, "PLN208", f"{before!r} is listed twice in the `after` of {name!r}", "keep one")
            elif before == name:
                self.add(at, "PLN210", f"component {name!r} runs after itself", f"remove {name!r} from its `after`")
            elif before not in known:
                hint = self.suggest.closest(before, names)
                self.add(at, "PLN209", f"{name!r} runs after {before!r}, which is not a component of this plan",
                         f"did you mean {hint!r}?" if hint else f"name one of {_some(names)}")
            else:
                edges.append((before, name))
            seen.add(before)
        return edges

    def exclude(self, names: list[str]) -> None:
        excluded = self.data.get("exclude")
        known, seen = set(names), set()
        for i, name in enumerate(excluded if isinstance(excluded, list) else []):
            if not isinstance(name, str):
                continue
            if name in seen:
                self.add(("exclude", i), "PLN208", f"{name!r} is listed twice in exclude", "keep one")
            elif name in known:
                self.add(("exclude", i), "PLN212", f"component {name!r} is both offloaded and excluded",
                         f"keep {name!r} in components (offloaded) or in exclude (kept on the device), not both")
            seen.add(name)

    def plan(self, sequence: tuple[str, ...], edges: list[tuple[str, str]]) -> Plan:
        data, pipeline = self.data, self.data.get("pipeline") or {}
        locations = {}
        for path, mark in self.doc.key_marks.items():
            if path and path[0] not in self.overridden and len(path) <= 2:
                locations[".".join(map(str, path))] = mark
        for i, name in enumerate(data.get("exclude") or []):
            locations[f"exclude.{name}"] = self.doc.where(("exclude", i))
        if isinstance(data["components"], list):
            for i, name in enumerate(data["components"]):
                locations[f"components.{name}"] = self.doc.where(("components", i))
        return Plan(
            path=self.doc.path, version=data["version"], device=data["device"], gpu_id=data.get("gpu_id"),
            sequence=sequence, exclude=frozenset(data.get("exclude") or ()),
            edges=tuple(edges), policy=data.get("policy", "chain"),
            pipeline_class=pipeline.get("class"), pipeline_source=pipeline.get("source"),
            torch_dtype=pipeline.get("torch_dtype"), variant=pipeline.get("variant"), locations=locations,
        )


_TYPE_WORDS = {"integer": "an integer", "string": "a string", "array": "a list", "object": "a mapping",
               "null": "empty", "boolean": "true or false", "number": "a number"}
