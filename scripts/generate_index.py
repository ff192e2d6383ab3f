"""Regenerate the shipped index of diffusers pipeline classes (`planner/data/pipelines.json`).

    python scripts/generate_index.py [--out PATH] [--check]

Walks every name the installed diffusers exports, keeps the subclasses of `DiffusionPipeline` and records what
`enable_model_cpu_offload` will do with each: the class attributes as written, the components with their declared
types (diffusers' own `_get_signature_keys` / `_get_signature_types`), and the chain diffusers really hooks. Exported
pipelines that cannot be imported here (a dummy class for a missing optional backend) are listed as skipped, with
the reason. The output is deterministic, so a regenerate is a clean diff. This module imports diffusers and torch
(only when it runs); the reader, `planner.index`, never does.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import sys
import tempfile
import textwrap
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: its own `planner` is imported, whatever is installed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.index import FORMAT  # noqa: E402

DEFAULT_OUT = ROOT / "planner" / "data" / "pipelines.json"

_CLASS_HEADER = re.compile(r"^class\s+(\w+)\s*\(([^)]*)\)\s*:", re.MULTILINE)


# ----------------------------------------------------------------------------------------------- the whole index


def build() -> dict:
    """The index of the installed diffusers as a JSON-ready dict: {"diffusers_version", "format", "pipelines":
    {class name: record}, "skipped": {class name: reason}, "transformers_version"}. Imports diffusers (and with it
    torch)."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # _get_signature_types warns per odd annotation; the index records them
    try:
        classes, skipped = exported_pipelines(diffusers)
        pipelines = {name: describe(cls, diffusers.DiffusionPipeline) for name, cls in classes.items()}
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return {
        "diffusers_version": diffusers.__version__,
        "format": FORMAT,
        "pipelines": pipelines,
        "skipped": skipped,
        "transformers_version": _version("transformers"),
    }


def _version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None: type names come from transformers' classes, so the
    index depends on its version too."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def dumps(index: dict) -> str:
    """The file text for `index`: sorted keys, one-space indent, UTF-8 characters kept, a final newline."""
    return json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write(index: dict, path: Path) -> None:
    """Write `index` to `path` atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pipelines.", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
        out.write(dumps(index))
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the shipped file is an ordinary readable file
    os.replace(tmp, path)


def summary(index: dict) -> str:
    """One line: the diffusers version, how many classes, how many with a sequence, how many skipped."""
    records = index["pipelines"].values()
    with_seq = sum(1 for r in records if r["sequence"])
    return (
        f"diffusers {index['diffusers_version']}: {len(index['pipelines'])} pipeline classes, {with_seq} with a "
        f"model_cpu_offload_seq, {len(index['skipped'])} skipped"
    )


# ------------------------------------------------------------------------------------------- walking the exports


def exported_pipelines(diffusers) -> tuple[dict[str, type], dict[str, str]]:
    """Every `DiffusionPipeline` subclass `diffusers` exports by name (the base class itself left out), sorted by
    name; and the exported pipeline names that cannot be used here (a dummy for a missing backend, a failing
    import), each with its reason. Never raises for one bad name."""
    base = diffusers.DiffusionPipeline
    classes: dict[str, type] = {}
    unusable: dict[str, str] = {}
    for name in sorted(set(diffusers.__all__)):
        obj, reason = _resolve(diffusers, name)
        if reason is not None:
            unusable[name] = reason
        elif inspect.isclass(obj) and issubclass(obj, base) and obj is not base:
            classes[name] = obj
    if not unusable:
        return classes, {}
    pipeline_names = pipeline_names_in_source(Path(diffusers.__file__).parent / "pipelines")
    return classes, {name: reason for name, reason in unusable.items() if name in pipeline_names}


def _resolve(module, name: str) -> tuple[object, str | None]:
    """(the exported object, None), or (None, why it cannot be used): a dummy raises on any public attribute."""
    from diffusers.utils.import_utils import DummyObject

    try:
        obj = getattr(module, name)
    except Exception as error:  # an export whose import fails must not stop the walk
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return None, f"import failed: {type(error).__name__}: {first_line}"
    if isinstance(obj, DummyObject):
        return None, missing_backend_reason(obj)
    return obj, None


def missing_backend_reason(dummy) -> str:
    """Why a diffusers dummy class stands in for the real one: the backends it needs that are not installed."""
    from diffusers.utils.import_utils import BACKENDS_MAPPING

    needed = list(dummy._backends)  # a class attribute: the dummy raises only for missing ones
    missing = [b for b in needed if b not in BACKENDS_MAPPING or not BACKENDS_MAPPING[b][0]()]
    return f"optional backend not installed: {', '.join(missing or needed)} (the class needs {', '.join(needed)})"


def pipeline_names_in_source(root: Path) -> frozenset[str]:
    """Names of the classes defined under `root` whose bases lead to `DiffusionPipeline`, read from the source
    text: the only way to tell a pipeline from a scheduler or a model when all we hold is a dummy."""
    bases: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for name, args in _CLASS_HEADER.findall(path.read_text(encoding="utf-8", errors="replace")):
            bases.setdefault(name, set()).update(re.findall(r"\w+", args))
    found = {"DiffusionPipeline"}
    grown = True
    while grown:
        more = {name for name, parents in bases.items() if name not in found and parents & found}
        found |= more
        grown = bool(more)
    return frozenset(found - {"DiffusionPipeline"})


# ------------------------------------------------------------------------------------------------- one record


def describe(cls: type, base: type) -> dict:
    """The index record of one pipeline class (schema in `planner.index`)."""
    comps = components(cls)
    offload = offload_kind(cls, base)
    chain = {"effective_exclude": None, "effective_sequence": None}
    if offload == "chain":
        chain = effective_chain(cls.model_cpu_offload_seq, cls._exclude_from_cpu_offload, comps)
    return {
        "components": comps,
        "connected_pipes": connected_pipes(cls, offload, base) if cls._load_connected_pipes else None,
        "exclude": list(cls._exclude_from_cpu_offload),
        "offload": offload,
        "optional": list(cls._optional_components),
        "sequence": cls.model_cpu_offload_seq,
        **chain,
    }


def components(cls: type) -> dict[str, dict]:
    """The components diffusers' `components` property holds (the `__init__` parameters without a default, plus
    the defaulted ones named in `_optional_components`: `_get_signature_keys`), each with its declared types
    (`_get_signature_types`) and whether one of them is a torch module."""
    names, _ = cls._get_signature_keys(cls)
    declared = cls._get_signature_types()
    return {name: _component(declared.get(name, ())) for name in names}


def _component(declared: tuple) -> dict:
    return {"model": is_model(declared), "types": type_names(declared)}


def is_model(declared: tuple) -> bool | None:
    """Whether a component declared with these types is a torch module: True when one of them (inside unions,
    list[...] and tuple[...]) is a `torch.nn.Module` subclass or a transformers AutoModel factory; False when
    the others are all known non-modules (tokenizers, schedulers, processors); None when nothing tells: no
    annotation, `Any`, or only diffusers' placeholders for an optional dependency that is not installed (a dummy
    class, or a bare stand-in like CosmosSafetyChecker without cosmos_guardrail). Placeholders beside known types
    are ignored: a union of schedulers stays a scheduler when one of them is a dummy."""
    classes = [t for t in _classes_in(declared) if t not in (type(None), inspect.Signature.empty)]
    known = [t for t in classes if not _is_placeholder(t)]
    if any(_makes_a_module(t) for t in known):
        return True
    return False if known else None


def _makes_a_module(t: type) -> bool:
    import torch

    return issubclass(t, torch.nn.Module) or any(b.__name__ == "_BaseAutoModelClass" for b in t.__mro__)


def _is_placeholder(t: type) -> bool:
    from diffusers.utils.import_utils import DummyObject

    if t is typing.Any or isinstance(t, DummyObject):
        return True
    return t.__module__.startswith("diffusers.") and t.__bases__ == (object,)


def _classes_in(declared) -> list[type]:
    found = []
    for t in declared:
        if inspect.isclass(t) and typing.get_origin(t) is None:
            found.append(t)
        elif typing.get_args(t):
            found.extend(_classes_in(typing.get_args(t)))
    return found


def type_names(declared: tuple) -> list[str]:
    """Each declared type as a stable string: `library.ClassName` for a class (as model_index.json names it),
    `None`, builtins bare, generics as `list[diffusers.ControlNetModel]`; an empty annotation gives nothing."""
    return [_type_name(t) for t in declared if t is not inspect.Signature.empty]


def _type_name(t) -> str:
    if t is type(None):
        return "None"
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(t))
    if origin is not None:
        args = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in typing.get_args(t))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if inspect.isclass(t):
        library = t.__module__.split(".")[0]
        return t.__qualname__ if library == "builtins" else f"{library}.{t.__qualname__}"
    return getattr(t, "__forward_arg__", None) or repr(t)


# ------------------------------------------------------------------------------------- what diffusers hooks


def effective_chain(sequence: str | None, exclude, comps: dict[str, dict]) -> dict:
    """What `DiffusionPipeline.enable_model_cpu_offload` does with `sequence` when every component is present:
    it pops each name of `sequence.split("->")` from the pipeline's torch-module components and hooks what it got,
    so a repeated name is hooked once, at its first place, and a name that is not a component is skipped; then the
    remaining modules are moved to the device when excluded, else hooked alone. An exclusion that is in the chain
    is therefore chained, not honoured. Returns {"effective_sequence": [...], "effective_exclude": [...]}."""
    chain: list[str] = []
    for name in sequence.split("->") if sequence else ():
        if name in comps and comps[name]["model"] is not False and name not in chain:
            chain.append(name)
    honoured = [n for n in exclude if n in comps and comps[n]["model"] is not False and n not in chain]
    return {"effective_exclude": honoured, "effective_sequence": chain}


def offload_kind(cls: type, base: type) -> str:
    """How `cls.enable_model_cpu_offload` works: "chain" (diffusers' own method over `model_cpu_offload_seq`),
    "none" (diffusers' own method with no sequence: it raises ValueError), "connected" (an override that only
    calls `self.<pipe>.enable_model_cpu_offload(...)` on connected pipelines), "custom" (any other override)."""
    if cls.enable_model_cpu_offload is base.enable_model_cpu_offload:
        return "chain" if cls.model_cpu_offload_seq is not None else "none"
    if cls._load_connected_pipes and delegated_pipes(cls) is not None:
        return "connected"
    return "custom"


def delegated_pipes(cls: type) -> list[str] | None:
    """The attributes X, in call order, of an `enable_model_cpu_offload` override whose body (after its docstring)
    is nothing but `self.X.enable_model_cpu_offload(...)` calls; None for any other override."""
    body = _function_node(cls.enable_model_cpu_offload).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    targets = [_delegate_target(statement) for statement in body]
    return targets if targets and None not in targets else None


def _delegate_target(statement: ast.stmt) -> str | None:
    call = statement.value if isinstance(statement, ast.Expr) else None
    func = call.func if isinstance(call, ast.Call) else None
    if not (isinstance(func, ast.Attribute) and func.attr == "enable_model_cpu_offload"):
        return None
    owner = func.value
    if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) and owner.value.id == "self":
        return owner.attr
    return None


def _function_node(function) -> ast.FunctionDef:
    return ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]


# ------------------------------------------------------------------------------------------ combined pipelines


def connected_pipes(cls: type, offload: str, base: type) -> list[dict]:
    """The pipelines a combined class (`_load_connected_pipes = True`) builds in `__init__`, as
    `self.prior_pipe = KandinskyPriorPipeline(prior=prior_prior, ...)`: each one's class, its components' names in
    the combined class, its own attributes and the chain it hooks, in combined names. Ordered as the override calls
    them when `offload` is "connected", else as `__init__` builds them. Raises ValueError on a shape not seen yet."""
    built = built_pipes(cls, base)
    order = delegated_pipes(cls) if offload == "connected" else list(built)
    unknown = [attr for attr in order if attr not in built]
    if unknown:
        raise ValueError(f"{cls.__name__}.enable_model_cpu_offload calls {unknown}, which __init__ does not build")
    return [_connected(attr, *built[attr], base) for attr in order]


def built_pipes(cls: type, base: type) -> dict[str, tuple[type, dict[str, str]]]:
    """{attribute: (pipeline class, {its component: the combined class's parameter})} for every
    `self.X = SomePipeline(name=param, ...)` statement of `cls.__init__`, in source order."""
    scope = vars(sys.modules[cls.__module__])
    built = {}
    for node in _function_node(cls.__init__).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        call = node.value if target is not None else None
        if not (_is_self_attribute(target) and isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            continue
        sub = scope.get(call.func.id)
        if inspect.isclass(sub) and issubclass(sub, base):
            names = {kw.arg: kw.value.id for kw in call.keywords if kw.arg and isinstance(kw.value, ast.Name)}
            built[target.attr] = (sub, names)
    return built


def _is_self_attribute(node) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def _connected(attr: str, sub: type, names: dict[str, str], base: type) -> dict:
    if offload_kind(sub, base) != "chain":
        raise ValueError(f"connected pipeline {sub.__name__} does not use diffusers' own chain offload")
    chain = effective_chain(sub.model_cpu_offload_seq, sub._exclude_from_cpu_offload, components(sub))
    return {
        "attribute": attr,
        "class": sub.__name__,
        "components": dict(sorted(names.items())),
        "effective_exclude": [names[n] for n in chain["effective_exclude"] if n in names],
        "effective_sequence": [names[n] for n in chain["effective_sequence"] if n in names],
        "exclude": list(sub._exclude_from_cpu_offload),
        "sequence": sub.model_cpu_offload_seq,
    }


# ------------------------------------------------------------------------------------------ comparing two indexes


def differences(old: dict, new: dict) -> list[str]:
    """Every difference between two indexes, one line each, in a stable order: the versions, then per class
    `added`, `removed` or `changed` (with the fields that changed), for indexed and for skipped classes."""
    lines = []
    for key in ("diffusers_version", "transformers_version"):
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    for section in ("pipelines", "skipped"):
        lines += _section_differences(section, old.get(section, {}), new.get(section, {}))
    return lines


def _section_differences(section: str, old: dict, new: dict) -> list[str]:
    lines = []
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            lines.append(f"{section}: removed {name}")
        elif name not in old:
            lines.append(f"{section}: added {name}")
        elif old[name] != new[name]:
            lines.append(f"{section}: changed {name}: {_changed_fields(old[name], new[name])}")
    return lines


def _changed_fields(old, new) -> str:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{old!r} -> {new!r}"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {_json(old.get(k))} -> {_json(new.get(k))}" for k in keys)


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def drift(old: dict, new: dict) -> dict[str, int]:
    """How many indexed classes were added, removed and changed from `old` to `new`."""
    a, b = old.get("pipelines", {}), new.get("pipelines", {})
    return {
        "added": len(b.keys() - a.keys()),
        "removed": len(a.keys() - b.keys()),
        "changed": sum(1 for name in a.keys() & b.keys() if a[name] != b[name]),
    }


# ---------------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    """Regenerate the index into --out (default: the shipped file); with --check, compare instead and exit 1 on
    any difference, printing each."""
    parser = argparse.ArgumentParser(prog="python scripts/generate_index.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    index = build()
    if args.check:
        return _check(args.out, index)
    write(index, args.out)
    print(f"{args.out}: {summary(index)}")
    return 0


def _check(path: Path, index: dict) -> int:
    lines = differences(json.loads(path.read_text(encoding="utf-8")), index)
    for line in lines:
        print(line)
    print(f"{path}: {'differs from' if lines else 'matches'} {summary(index)}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
