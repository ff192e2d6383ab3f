"""The one rule table, and the checks that turn a loaded document into a `Plan` or a list of `Problem`s.

Schema errors (jsonschema, Draft 2020-12, `schemas/plan.schema.json`) are mapped onto the same rule ids, at the
line and column of the offending node. Command-line overrides are checked here too, so `--device cpu` fails
the same rule as `device: cpu` in a file.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from planner import order
from planner.fastschema import compile_schema
from planner.loader import Document
from planner.plan import Plan, Problem


@dataclass(frozen=True)
class Rule:
    id: str
    catches: str
    fix: str


RULES = {r.id: r for r in (
    Rule("PLN000", "the plan file cannot be read", "check the path and its permissions"),
    Rule("PLN001", "an empty file", "write `version: 1`, `device` and `components`"),
    Rule("PLN002", "bytes that are not UTF-8", "save the file as UTF-8"),
    Rule("PLN003", "a YAML syntax error", "fix the YAML at the place shown"),
    Rule("PLN004", "tab indentation", "indent with spaces"),
    Rule("PLN005", "several YAML documents in one file", "keep one plan per file; remove `---`"),
    Rule("PLN006", "a duplicate key, at any depth (YAML would keep the last silently)", "keep one of them"),
    Rule("PLN007", "alias expansion bombs and absurd nesting", "write the plan out plainly"),
    Rule("PLN008", "YAML tags (`!!python/object`, `!foo`) and merge keys", "remove the tag or merge key"),
    Rule("PLN009", "a top level (or key) that is not a plain mapping", "write `key: value` lines"),
    Rule("PLN101", "an unknown key", "use one of the keys the schema lists (a suggestion is given)"),
    Rule("PLN102", "a value of the wrong type, YAML 1.1 booleans (`yes`, `on`) included", "write the type asked for"),
    Rule("PLN103", "a missing required key (`version`, `device`, `components`)", "add the key"),
    Rule("PLN104", "a value outside the allowed set (torch_dtype, an empty string)", "use an allowed value"),
    Rule("PLN201", "a `version` other than 1", "write `version: 1`"),
    Rule("PLN202", "a device that cannot be an offload target (`cpu`, `meta`, `disk`)", "write `device: cuda` (or xpu, mps, ...)"),
    Rule("PLN203", "a malformed device string or an unknown device type", "write a type, optionally indexed: `cuda`, `cuda:1`"),
    Rule("PLN204", "a `gpu_id` that is negative or not an integer", "write a non-negative integer"),
    Rule("PLN205", "`gpu_id` together with an indexed device (`cuda:1`)", "keep one: `device: cuda` + `gpu_id: 1`, or `device: cuda:1`"),
    Rule("PLN206", "a `device_map`: offloading and device maps cannot be combined", "remove `device_map`"),
    Rule("PLN207", "empty `components`", "list the components to offload, in running order"),
    Rule("PLN208", "a name listed twice (components, `after`, `exclude`)", "keep one"),
    Rule("PLN209", "`after` naming a component the plan does not have", "name a component of the plan"),
    Rule("PLN210", "a component that runs after itself", "remove it from its own `after`"),
    Rule("PLN211", "a cycle of `after` edges (reported with its path)", "break the cycle"),
    Rule("PLN212", "a component both offloaded and excluded", "keep it in one of `components` and `exclude`"),
    Rule("PLN213", "a `policy` other than `chain` (the only one in this version)", "write `policy: chain` or leave it out"),
    Rule("PLN214", "a `budget` (reserved for the memory-budget policy)", "remove `budget`"),
    Rule("PLN215", "a component name that is not an identifier", "use the attribute name, as in `pipe.components`"),
    Rule("PLN301", "a plan component the pipeline does not have", "name one of the pipeline's components"),
    Rule("PLN302", "a pipeline that cannot be offloaded as planned (device map, offloading already active)", "reset the pipeline first, as the message says"),
    Rule("PLN303", "a device that is not present (no accelerator, `gpu_id` beyond the device count)", "run with --dry-run, or pick a present device"),
    Rule("PLN304", "a pipeline that cannot be loaded (missing folder, unknown class)", "check `pipeline.source` and `pipeline.class`"),
    Rule("PLN305", "a pipeline call that failed under `planner apply`", "check the generation arguments"),
)}

# Device types torch knows as accelerators; kept here so that validating never imports torch.
ACCELERATORS = ("cuda", "xpu", "mps", "npu", "hpu", "mlu", "musa", "mtia", "xla", "ipu", "maia", "privateuseone",
                "hip", "ve", "lazy", "vulkan")
NOT_TARGETS = ("cpu", "meta", "disk")
_DEVICE = re.compile(r"^([a-z][a-z0-9_]*)(?::([0-9]+))?$")
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}
_EXAMPLES = {"version": "version: 1", "device": "device: cuda", "components": "components: [text_encoder, unet, vae]"}
# Schema errors under these keys get the key's own rule, whatever the schema keyword.
_RULE_OF_KEY = {"version": "PLN201", "device": "PLN203", "gpu_id": "PLN204", "policy": "PLN213",
                "budget": "PLN214", "device_map": "PLN206"}
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
    # imported here: a valid plan never needs jsonschema (see fastschema), and its import is most of a run's cost
    import jsonschema

    # JSON Schema counts 1.0 as an integer; a plan must not (a gpu_id of 1.0 is no device index).
    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(_schema())


def device_problems(device, gpu_id) -> list[tuple[str, str, str, str]]:
    """(key, rule, message, fix) for a device and gpu_id that cannot be a plan's target. A malformed device
    string is PLN203, as in the schema. Shared by the rules and the executor, which
    re-checks a `Plan` built by hand."""
    if device is None:
        return []  # missing: PLN103
    match = _DEVICE.match(device) if isinstance(device, str) else None
    if not match:  # in a file the schema says so too, at the same place: the two are reported once
        return [("device", "PLN203", f"device {device!r} is not a device string",
                 "write a device type, optionally indexed: cuda, cuda:1, xpu, mps")]
    found = []
    kind, index = match.groups()
    if kind in NOT_TARGETS:
        found.append(("device", "PLN202", f"device {device!r} cannot be an offload target",
                      "write device: cuda (or xpu, mps, ...)"))
    elif kind not in ACCELERATORS:
        hint = difflib.get_close_matches(kind, ACCELERATORS, n=1)
        found.append(("device", "PLN203", f"unknown device type {kind!r}",
                      f"did you mean {hint[0]!r}?" if hint else f"write one of {', '.join(ACCELERATORS[:8])}, ..."))
    if index is not None and isinstance(gpu_id, int) and not isinstance(gpu_id, bool):
        found.append(("gpu_id", "PLN205", f"gpu_id {gpu_id} is given together with the indexed device {device!r}",
                      f"keep one: `device: {kind}` with `gpu_id: {gpu_id}`, or `device: {device}` alone"))
    return found


def check_document(doc: Document, overrides: Mapping[str, object] | None = None) -> tuple[Plan | None, list[Problem]]:
    """Validate a loaded document (schema, then plan rules) and build its `Plan` when nothing is wrong."""
    if doc.data is None:
        return None, _sorted(doc.problems)
    checker = _Checker(doc, overrides or {})
    plan = checker.run()
    problems = _sorted(doc.problems + checker.problems)
    return (None if problems else plan), problems


def _sorted(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in sorted(problems, key=lambda p: (p.path, p.line, p.column, p.rule)):
        if (p.path, p.line, p.column, p.rule) not in seen:
            seen.add((p.path, p.line, p.column, p.rule))
            out.append(p)
    return out


class _Checker:
    def __init__(self, doc: Document, overrides: Mapping[str, object]):
        self.doc = doc
        self.data = dict(doc.data)
        self.data.update(overrides)
        self.overridden = set(overrides)
        self.problems: list[Problem] = []

    # -- locating ---------------------------------------------------------------------------------------------
    def add(self, path: tuple, rule: str, message: str, fix: str = "", key: bool = False) -> None:
        if any(path[: len(r)] == r for r in self.doc.refused):
            return  # the loader already said why this node has no value
        if path and path[0] in self.overridden:
            flag = "--" + str(path[0]).replace("_", "-")
            self.problems.append(Problem(flag, 0, 0, rule, message, fix))
        else:
            self.problems.append(self.doc.problem(path, rule, message, fix, key))

    def describe(self, path: tuple, value) -> str:
        raw = None if (path and path[0] in self.overridden) else self.doc.raw_scalars.get(path)
        if isinstance(value, bool) and raw is not None and raw.lower() in _YAML11_BOOLS:
            return f"`{raw}` (YAML reads it as the boolean {str(value).lower()})"
        if isinstance(value, (dict, list)) or value is None:
            return {dict: "a mapping", list: "a list", type(None): "nothing (null)"}[type(value)]
        return f"`{raw}`" if raw is not None and not isinstance(value, str) else repr(value)

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
            allowed = sorted(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(allowed)):
                hint = difflib.get_close_matches(extra, allowed, n=1)
                fix = f"did you mean {hint[0]!r}?" if hint else f"allowed keys: {', '.join(allowed)}"
                self.add(path + (extra,), "PLN101", f"unknown key {extra!r} in {name}", fix, key=True)
            return
        if err.validator == "required":
            for missing in err.validator_value:
                if missing not in err.instance:
                    example = _EXAMPLES.get(missing, f"{missing}: ...")
                    self.add(path, "PLN103", f"{name} has no {missing!r}", f"add `{example}`")
            return
        value = err.instance
        top = path[0] if path else None
        if top in _RULE_OF_KEY and len(path) == 1:
            self.key_error(top, path, value)
        elif top == "components" and len(path) == 1 and err.validator in ("minItems", "minProperties"):
            self.add(path, "PLN207", "components is empty", "list the components to offload, in running order")
        elif err.validator == "pattern" or (err.validator == "type" and "propertyNames" in err.schema_path):
            self.add(path, "PLN215", f"{self.describe(path, value)} is not a component name",
                     "use the attribute name, as in pipe.components (letters, digits, _)")
        elif err.validator == "type":
            expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
            self.add(path, "PLN102", f"{name} must be {wanted}, not {self.describe(path, value)}",
                     f"write {wanted}" + (" (quote it to keep a string)" if isinstance(value, bool) else ""))
        else:
            allowed = err.validator_value if err.validator == "enum" else None
            fix = f"write one of {', '.join(map(str, allowed))}" if allowed else "see schemas/plan.schema.json"
            self.add(path, "PLN104", f"{name} {self.describe(path, value)} is not allowed ({err.message})", fix)

    def key_error(self, key: str, path: tuple, value) -> None:
        shown = self.describe(path, value)
        if key == "version":
            self.add(path, "PLN201", f"version {shown} is not supported", "write `version: 1` (the only version)")
        elif key == "device":
            self.add(path, "PLN203", f"device {shown} is not a device string",
                     "write a device type, optionally indexed: cuda, cuda:1, xpu, mps")
        elif key == "gpu_id":
            self.add(path, "PLN204", f"gpu_id must be a non-negative integer, not {shown}", "write `gpu_id: 0` (or 1, 2, ...)")
        elif key == "policy":
            self.add(path, "PLN213", f"policy {shown} is not available in this version",
                     "write `policy: chain` or leave it out")
        elif key == "budget":
            self.add(path, "PLN214", "budget is reserved for the memory-budget policy, which this version does not have",
                     "remove budget", key=True)
        else:
            self.add(path, "PLN206", "a plan cannot have a device_map: model offloading and device maps cannot be combined",
                     "remove device_map; the plan offloads whole components", key=True)

    def device(self) -> None:
        for key, rule, message, fix in device_problems(self.data.get("device"), self.data.get("gpu_id")):
            self.add((key,), rule, message, fix)

    def components(self) -> tuple[list[str], list[tuple[str, str]]]:
        comps = self.data.get("components")
        names: list[str] = []
        edges: list[tuple[str, str]] = []
        if isinstance(comps, list):
            for i, name in enumerate(comps):
                if not isinstance(name, str):
                    continue
                if name in names:
                    self.add(("components", i), "PLN208", f"component {name!r} is listed twice", "keep one")
                    continue
                if names:
                    edges.append((names[-1], name))
                names.append(name)
        elif isinstance(comps, dict):
            names = [n for n in comps if isinstance(n, str)]
            for name, spec in comps.items():
                after = spec.get("after") if isinstance(spec, dict) else None
                edges += self.after_edges(name, after if isinstance(after, list) else [], names)
        return names, edges

    def sequence(self, names: list[str], edges: list[tuple[str, str]]) -> tuple[str, ...] | None:
        sequence, cycles = order.resolve(names, edges)
        comps = self.data.get("components")
        for cycle in cycles:
            at = ("components", cycle[0], "after", comps[cycle[0]]["after"].index(cycle[-2]))
            self.add(at, "PLN211", f"components form a cycle: {' -> '.join(cycle)}",
                     "remove one of these `after` entries")
        return sequence

    def after_edges(self, name: str, after: list, names: list[str]) -> list[tuple[str, str]]:
        edges, seen = [], set()
        for i, before in enumerate(after):
            at = ("components", name, "after", i)
            if not isinstance(before, str):
                continue
            if before in seen:
                self.add(at, "PLN208", f"{before!r} is listed twice in the `after` of {name!r}", "keep one")
            elif before == name:
                self.add(at, "PLN210", f"component {name!r} runs after itself", f"remove {name!r} from its `after`")
            elif before not in names:
                hint = difflib.get_close_matches(before, names, n=1)
                self.add(at, "PLN209", f"{name!r} runs after {before!r}, which is not a component of this plan",
                         f"did you mean {hint[0]!r}?" if hint else f"name one of {', '.join(names)}")
            else:
                edges.append((before, name))
            seen.add(before)
        return edges

    def exclude(self, names: list[str]) -> None:
        excluded = self.data.get("exclude")
        seen: set = set()
        for i, name in enumerate(excluded if isinstance(excluded, list) else []):
            if not isinstance(name, str):
                continue
            if name in seen:
                self.add(("exclude", i), "PLN208", f"{name!r} is listed twice in exclude", "keep one")
            elif name in names:
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
            locations[f"exclude.{name}"] = self.doc.marks.get(("exclude", i), (0, 0))
        if isinstance(data["components"], list):
            for i, name in enumerate(data["components"]):
                locations[f"components.{name}"] = self.doc.marks.get(("components", i), (0, 0))
        return Plan(
            path=self.doc.path, version=data["version"], device=data["device"], gpu_id=data.get("gpu_id"),
            sequence=sequence, exclude=frozenset(data.get("exclude") or ()),
            edges=tuple(edges), policy=data.get("policy", "chain"),
            pipeline_class=pipeline.get("class"), pipeline_source=pipeline.get("source"),
            torch_dtype=pipeline.get("torch_dtype"), variant=pipeline.get("variant"), locations=locations,
        )


_TYPE_WORDS = {"integer": "an integer", "string": "a string", "array": "a list", "object": "a mapping",
               "null": "empty", "boolean": "true or false", "number": "a number"}
