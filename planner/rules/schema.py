"""The JSON Schema (`schemas/plan.schema.json`, Draft 2020-12) and its errors mapped onto located problems.

A valid plan is checked by the schema compiled into one predicate (`planner.fastschema`); jsonschema runs only
to explain a plan that predicate rejects, and its errors become problems of the same rules, at the line and
column of the offending node (a test checks that both agree). Errors on `device` and `gpu_id` are left to
`planner.rules.device`, which says why.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from planner import units
from planner.fastschema import compile_schema, ecma_regex
from planner.rules import PLN101, PLN102, PLN103, PLN104, PLN201, PLN206, PLN207, PLN213, PLN214, PLN215, PLN218
from planner.rules.context import Context, did_you_mean

SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "schemas" / "plan.schema.json"
_EXAMPLES = {"version": "version: 1", "device": "device: cuda", "components": "components: [text_encoder, unet, vae]"}
# Schema errors under these keys get the key's own rule, whatever the schema keyword (see `_key_error`).
_RULE_OF_KEY = {"version": PLN201, "policy": PLN213, "budget": PLN214, "reserve": PLN214, "device_map": PLN206}
_POLICIES = ("chain", "budget")
# Checked by `planner.rules.device` alone (it also serves the executor), so the schema's errors there are not repeated.
_DEVICE_KEYS = ("device", "gpu_id")
_TYPE_WORDS = {"integer": "an integer", "string": "a string", "array": "a list", "object": "a mapping",
               "null": "empty", "boolean": "true or false", "number": "a number"}


def schema_text() -> str:
    """The JSON Schema as shipped (inside the package, or beside it in a source checkout)."""
    packaged = Path(__file__).resolve().parent.parent / "plan.schema.json"
    return (packaged if packaged.exists() else SCHEMA_PATH).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(schema_text())


@lru_cache(maxsize=1)
def fast_check():
    """The schema as one compiled predicate (None if it uses a keyword `planner.fastschema` does not compile)."""
    return compile_schema(schema())


def check(ctx: Context) -> None:
    """The schema's verdict on the plan: nothing when the compiled predicate accepts it (the common case), else
    jsonschema's errors as problems."""
    valid = fast_check()
    if valid is not None and valid(ctx.data):
        return
    for err in validator().iter_errors(ctx.data):
        _error(ctx, err)


# -- jsonschema, imported only to explain an invalid plan (its import is most of a run's cost) -------------------
@lru_cache(maxsize=1)
def validator():
    """The validator that explains an invalid plan: `authority` handed only what the compiled predicate rejects."""
    import jsonschema

    pruned = _validator_class(jsonschema, _pruning(jsonschema.Draft202012Validator.VALIDATORS))
    return pruned(_inlined(schema(), schema()))


@lru_cache(maxsize=1)
def authority():
    """jsonschema reading the schema as check-jsonschema does (ECMA-262 patterns), with integers that are never
    floats or booleans (a gpu_id of 1.0 is no device index)."""
    import jsonschema

    return _validator_class(jsonschema, {})(schema())


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


_ANNOTATIONS = ("description", "title", "$comment")  # keywords beside a `$ref` that assert nothing


def _inlined(schema, root: dict):
    """`schema` with each local `$ref` replaced by its target: jsonschema resolves a reference on every use
    (most of its time on a plan of thousands of names); the schema has no recursive reference."""
    if isinstance(schema, list):
        return [_inlined(item, root) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and set(schema) <= {"$ref", *_ANNOTATIONS}:
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        return {**_inlined(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}
    return {key: _inlined(value, root) for key, value in schema.items()}


# -- errors -> problems ------------------------------------------------------------------------------------------
def _error(ctx: Context, err) -> None:
    path = tuple(err.absolute_path)
    name = ".".join(str(p) for p in path) or "the plan"
    if err.validator == "additionalProperties":
        _unknown_keys(ctx, path, name, err)
    elif err.validator == "required":
        for missing in err.validator_value:
            if missing not in err.instance:
                example = _EXAMPLES.get(missing, f"{missing}: ...")
                ctx.add(path, PLN103, f"{name} has no {missing!r}", f"add `{example}`")
    elif path[:1] and path[0] in _DEVICE_KEYS and len(path) == 1:
        return  # planner.rules.device says it, with the reason
    elif path[:1] and path[0] in _RULE_OF_KEY and len(path) == 1:
        _key_error(ctx, path[0], path, err.instance)
    elif path == ("components",) and err.validator in ("minItems", "minProperties"):
        ctx.add(path, PLN207, "components is empty")
    elif path == ("uses",) and err.validator == "minItems":
        ctx.add(path, PLN218, "uses is empty", "list the components in the order one pipeline call uses them, or "
                "leave uses out (the sequence is the order)")
    elif "propertyNames" in err.schema_path:  # a key (a component name): located at the key itself
        at = path + (err.instance,)
        ctx.add(at, PLN215, f"{ctx.describe(at, err.instance)} is not a component name", key=True)
    elif err.validator == "pattern" and path[:1] in (("components",), ("exclude",), ("own_hook",), ("uses",)):
        ctx.add(path, PLN215, f"{ctx.describe(path, err.instance)} is not a component name")
    elif err.validator == "type":
        _type_error(ctx, path, name, err)
    else:
        _value_error(ctx, path, name, err)


def _unknown_keys(ctx: Context, path: tuple, name: str, err) -> None:
    properties = err.schema.get("properties", {})
    allowed = sorted(k for k, sub in properties.items() if not _reserved(sub))
    for extra in err.instance:
        if extra in properties:
            continue
        at = path + (extra,)
        fix = _misplaced(at)
        if fix is None:
            hint = ctx.suggest.closest(extra, allowed) if isinstance(extra, str) else None
            fix = did_you_mean([hint]) if hint else f"allowed keys: {', '.join(allowed)}"
        ctx.add(at, PLN101, f"unknown key {extra!r} in {name}", fix, key=True)


def _type_error(ctx: Context, path: tuple, name: str, err) -> None:
    value = err.instance
    expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
    wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
    fix = _misplaced(path) or (f"write {wanted}" + (" (quote it to keep a string)" if isinstance(value, bool) else ""))
    ctx.add(path, PLN102, f"{name} must be {wanted}, not {ctx.describe(path, value)}", fix)


def _value_error(ctx: Context, path: tuple, name: str, err) -> None:
    shown = ctx.describe(path, err.instance)
    if err.validator == "enum":
        # as YAML spells them, each once: `pin` takes true and "true" alike
        choices = dict.fromkeys(str(v).lower() if isinstance(v, bool) else str(v) for v in err.validator_value)
        options = list(choices)
        hint = ctx.suggest.closest(str(err.instance), options) if isinstance(err.instance, str) else None
        ctx.add(path, PLN104, f"{name} {shown} is not allowed", f"{did_you_mean([hint])} (one of "
                f"{', '.join(options)})" if hint else f"write one of {', '.join(options)}")
    elif err.validator == "pattern":
        ctx.add(path, PLN104, f"{name} {shown} is not allowed (it must match {err.validator_value})",
                "write a name of letters, digits and _, not starting with a digit")
    else:
        ctx.add(path, PLN104, f"{name} {shown} is not allowed ({err.message})", "see schemas/plan.schema.json")


def _key_error(ctx: Context, key: str, path: tuple, value) -> None:
    shown = ctx.describe(path, value)
    if key == "version":
        ctx.add(path, PLN201, f"version {shown} is not supported")
    elif key == "policy":
        hint = ctx.suggest.closest(value, _POLICIES) if isinstance(value, str) else None
        ctx.add(path, PLN213, f"policy {shown} is not a policy", did_you_mean([hint]) if hint else None)
    elif key in ("budget", "reserve"):
        hint = units.suggest(value)
        negative = isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0
        why = " (a size is never negative)" if negative else ""
        ctx.add(path, PLN214, f"{key} must be a size, not {shown}{why}", did_you_mean([hint]) if hint else None)
    else:
        ctx.add(path, PLN206, "a plan cannot have a device_map: model offloading and device maps cannot be combined",
                key=True)


# -- where a key belongs, for "looks mis-indented" ------------------------------------------------------------------
def _reserved(schema) -> bool:
    """A property that exists only to be refused (`"not": {}`): never offered as an allowed key."""
    return isinstance(schema, dict) and schema.get("not") == {}


@lru_cache(maxsize=1)
def _homes() -> dict[str, tuple]:
    """Each key the schema accepts -> its place (a tuple of keys; "*" for any name, as under components)."""
    homes: dict[str, tuple] = {}

    def walk(sub_schema, place: tuple) -> None:
        for key, sub in sub_schema.get("properties", {}).items():
            if not _reserved(sub):
                homes.setdefault(key, place)
                walk(sub, place + (key,))
        extra = sub_schema.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, place + ("*",))

    walk(schema(), ())
    return homes


def _place(path: tuple) -> tuple | None:
    """The schema place of the mapping at `path` (("components", "unet") -> ("components", "*"))."""
    sub, place = schema(), ()
    for part in path:
        props = sub.get("properties", {}) if isinstance(sub, dict) else {}
        if part in props:
            sub, place = props[part], place + (part,)
        elif isinstance(sub, dict) and isinstance(sub.get("additionalProperties"), dict):
            sub, place = sub["additionalProperties"], place + ("*",)
        else:
            return None
    return place


def _place_words(place: tuple, key: str) -> str:
    if not place:
        return "at the top level (not indented)"
    if place[-1] == "*":
        return f"in an entry of `{place[-2]}:` (`NAME: {{{key}: ...}}`)"
    return f"under `{place[-1]}:`"


def _misplaced(path: tuple) -> str | None:
    """"looks mis-indented" when the last key of `path` is no key here but one the schema has elsewhere."""
    key = path[-1] if path else None
    home = _homes().get(key) if isinstance(key, str) else None
    here = _place(path[:-1])
    if home is None or here is None or home == here:
        return None
    return f"`{key}` belongs {_place_words(home, key)}: it looks mis-indented"
