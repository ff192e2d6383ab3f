"""`pipeline.class` against the shipped index of diffusers pipeline classes (PLN501-507), with no torch and no
diffusers import: the index (`planner.index`) is read once per process, and each class's facts are computed once.

What `planner apply` does decides each verdict: it shadows `model_cpu_offload_seq` and `_exclude_from_cpu_offload`
with the plan's and calls the class's `enable_model_cpu_offload`. So a class whose override ignores the sequence
(`offload: custom`) cannot take a plan (error); a class with no sequence of its own (`offload: none`) takes the
plan's as written (warning: nothing checks it); a model the class requires that the plan leaves out gets a hook of
its own (warning; optional models such as `image_encoder` are not asked for: most model folders lack them).
Combined classes (`offload: connected`) are accepted: their names are checked against the combined class's
components, and diffusers hooks each connected pipeline with its own chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from planner import index
from planner.rules import PLN501, PLN502, PLN503, PLN504, PLN505, PLN506, PLN507, PLN508
from planner.rules.context import Context, did_you_mean, some

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # the schema's pattern: anything else is a PLN104 already
_CLASS = ("pipeline", "class")
# The hook a model the plan leaves out gets from diffusers' enable_model_cpu_offload (cpu_offload_with_hook with
# no previous module), in words.
OWN_HOOK = "it gets its own hook, loaded at first use and kept on the device until the call ends"


@dataclass(frozen=True)
class _Facts:
    """What the checks need of one class: each component's kind (True: a model, False: not, None: undetermined),
    the components a plan may name (class order: its chains first), the models a plan should cover, and the
    declared types of the others."""

    kinds: dict[str, bool | None]
    plannable: tuple[str, ...]
    allowed: frozenset[str]
    required: tuple[str, ...]
    types: dict[str, str]


def check(ctx: Context, names: list[str], excluded: list[str], own_hook: list[str] = (),
          pipes: dict[str, str] | None = None) -> None:
    """Check the plan's `pipeline.class`, its component `names`, its `excluded` and `own_hook` names and each
    component's connected pipeline (`pipes`) against the index."""
    pipe = ctx.data.get("pipeline")
    cls = pipe.get("class") if isinstance(pipe, dict) else None
    if not isinstance(cls, str) or not _NAME.fullmatch(cls):
        return
    try:
        known = index.load()
    except (OSError, ValueError) as exc:  # a broken install: said, never a traceback
        ctx.add(_CLASS, PLN502, f"the pipeline index cannot be read ({exc}), so {cls} is not checked",
                "reinstall offload-planner")
        return
    record = known.get(cls)
    if record is None:
        _unknown(ctx, known, cls)
        return
    facts = _facts(record)
    if record.offload == "custom":
        ctx.add(_CLASS, PLN506, f"{cls} replaces enable_model_cpu_offload with a fixed order of its own: "
                "planner apply cannot put a plan in force on it")
    elif record.offload == "none":
        ctx.add(_CLASS, PLN507, f"{cls} has no model_cpu_offload_seq: diffusers refuses model offload for it, so "
                "the plan's order is used as written and nothing checks it against the pipeline's calls")
    if not (facts.allowed.issuperset(names) and facts.allowed.issuperset(excluded)
            and facts.allowed.issuperset(own_hook)):
        _names(ctx, cls, facts)  # not in the common case, where every name is a component the class may offload
    if record.offload in ("chain", "none", "connected"):
        _coverage(ctx, facts, [*names, *excluded, *own_hook])
    if pipes or record.offload == "connected":
        _pipes(ctx, record, names, pipes or {})


def _unknown(ctx: Context, known: index.Index, cls: str) -> None:
    reason = known.skipped.get(cls)
    if reason is not None:
        ctx.add(_CLASS, PLN502, f"{cls} is not in the index of diffusers {known.diffusers_version}, so its "
                f"components are not checked ({reason})")
        return
    hints = known.close(cls)
    ctx.add(_CLASS, PLN501, f"{cls!r} is not a pipeline class of diffusers {known.diffusers_version}",
            did_you_mean(hints) if hints else None)


def _names(ctx: Context, cls: str, facts: _Facts) -> None:
    """PLN503 for a name the class does not have, PLN504 for one it declares as no model, each at its first place."""
    for node, name, key in _placed_names(ctx):
        kind = facts.kinds.get(name, "absent")
        if kind == "absent":
            hint = ctx.suggest.closest(name, facts.plannable)
            what = {"exclude": "to exclude", "own_hook": "to give a hook of its own"}.get(node[0], "to offload")
            ctx.add(node, PLN503, f"{cls} has no component {name!r} {what} (its models: {some(facts.plannable)})",
                    did_you_mean([hint]) if hint else None, key)
        elif kind is False:
            ctx.add(node, PLN504, f"component {name!r} of {cls} is declared as {facts.types[name]}, not a model",
                    None, key)


def _placed_names(ctx: Context):
    """(node, name, at its key) for each component and exclusion name, at its first place; names that are no
    identifier are left out (PLN215 says so)."""
    seen = set()
    comps = ctx.data.get("components")
    placed = [(("components", i), n, False) for i, n in enumerate(comps)] if isinstance(comps, list) else \
        [(("components", n), n, True) for n in comps] if isinstance(comps, dict) else []
    for key in ("exclude", "own_hook"):
        listed = ctx.data.get(key)
        placed += [((key, i), n, False) for i, n in enumerate(listed)] if isinstance(listed, list) else []
    for node, name, key in placed:
        if isinstance(name, str) and name not in seen and _NAME.fullmatch(name):
            seen.add(name)
            yield node, name, key


def _pipes(ctx: Context, record: index.Pipeline, names: list[str], pipes: dict[str, str]) -> None:
    """PLN508 for a `pipe` that is not the connected pipeline diffusers hooks the component in, or one given to a
    class that hooks a single chain of its own."""
    cls = record.name
    if record.offload != "connected":
        for name in pipes:
            ctx.add(("components", name, "pipe"), PLN508, f"{cls} hooks its models in one chain of its own, not "
                    "per connected pipeline", f"remove `pipe` from {name!r}")
        return
    owner = {combined: part.attribute for part in record.connected for combined in part.components.values()}
    if not pipes and isinstance(ctx.data.get("components"), list):
        ctx.add(("components",), PLN508, f"{cls} hooks each connected pipeline "
                f"({', '.join(p.attribute for p in record.connected)}) with a chain of its own: the plan must say "
                "which holds each component", "write components as a mapping, each with `pipe:`", key=True)
        return
    for name in names:
        given, wanted = pipes.get(name), owner.get(name)
        if given is None or wanted is None or given == wanted:
            continue  # PLN216 says a missing one; a name the class lacks is PLN503
        ctx.add(("components", name, "pipe"), PLN508, f"{cls} hooks {name!r} in the chain of {wanted}, not {given}",
                f"write `pipe: {wanted}`")


def _coverage(ctx: Context, facts: _Facts, named: list[str]) -> None:
    """PLN505 for each model the class requires that the plan does not name."""
    if not facts.required:
        return
    covered = set(named)
    for name in facts.required:
        if name not in covered:
            ctx.add(("components",), PLN505, f"{name} is not in the plan: {OWN_HOOK}", key=True)


@lru_cache(maxsize=None)  # records are built once per index and hashed by identity
def _facts(record: index.Pipeline) -> _Facts:
    kinds = {name: c.model for name, c in record.components.items()}
    chained = [name for chain in record.chains for name in (*chain.sequence, *chain.exclude)]
    in_order = list(dict.fromkeys([*chained, *sorted(kinds)]))
    plannable = tuple(name for name in in_order if name in kinds and kinds[name] is not False)
    optional = set(record.optional)
    required = tuple(name for name in plannable if kinds[name] is True and name not in optional)
    types = {name: " or ".join(t.rsplit(".", 1)[-1] for t in c.types if t != "None") or "nothing"
             for name, c in record.components.items() if c.model is False}
    return _Facts(kinds, plannable, frozenset(plannable), required, types)
