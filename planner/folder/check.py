"""A plan against a pipeline read from its folder (`planner validate --model`): the same mistakes `planner apply` finds
once the weights are loaded (PLN301, PLN304), and the budget's feasibility (PLN409, built in `planner.budget.problems`),
found from the folder before.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import replace

from planner import index
from planner.folder.reader import read
from planner.folder.sizes import ModelSizes
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN301, PLN304, PLN407
from planner.rules.context import did_you_mean, some


def check_plans(source: str | os.PathLike, plans: list[Plan]) -> tuple[list[ModelSizes], list[Problem]]:
    """`planner validate --model`: the pipeline at `source` read once per variant the plans load (once as it is
    when there is no plan), and each plan checked against it (`check_plan`). Returns the sizes (one per variant
    and torch_dtype the plans ask for, in their order) and the problems: the folder's own, each once, then the
    plans'. A variant that no component has is the plan's problem, located at its `pipeline.variant`."""
    reads: dict[str | None, tuple[ModelSizes | None, list[Problem]]] = {}
    tables: dict[tuple, ModelSizes] = {}
    problems: list[Problem] = []
    for plan in plans or [None]:
        variant = plan.variant if plan is not None else None
        if variant not in reads:
            reads[variant] = read(source, variant=variant)
        found, read_problems = reads[variant]
        if found is None and plan is not None and any(p.rule == PLN407.id for p in read_problems):
            problems.append(plan.problem("pipeline.variant", PLN407, f"no component of the model folder "
                                         f"{os.fsdecode(source)} has files of the variant {variant!r}"))
        if found is None:
            continue
        dtype = plan.torch_dtype if plan is not None else None
        tables.setdefault((variant, dtype), replace(found, torch_dtype=dtype))
        if plan is not None:
            problems += check_plan(plan, found)
    own = [p for _, found in reads.values() for p in found if p.rule != PLN407.id]
    return list(tables.values()), list(dict.fromkeys(own)) + problems


def check_plan(plan: Plan, model: ModelSizes) -> list[Problem]:
    """The problems of `plan` against the pipeline `model` (from `read`), located at the plan's keys, under the
    rules `planner apply` uses for the same mistakes once the weights are loaded:
    - PLN304: `pipeline.class` is neither the folder's class nor one diffusers loads from the folder (a class
      taking the same components, such as StableDiffusionImg2ImgPipeline from a StableDiffusionPipeline folder);
    - PLN301: a name offloaded, excluded or hooked apart that is not a model of the folder (a tokenizer), or no
      component at all. A component the class has and the folder leaves out is fine: it is None once loaded, and
      skipped, as diffusers skips it. A model whose weights cannot be read is the folder's problem (`read`'s);
    - PLN409: a `policy: budget` plan's budget below what one use needs: the excluded components (resident) plus
      the largest offloaded one its call order uses, at the plan's torch_dtype.
    The index of diffusers pipelines answers which components a class takes; a class it lacks is not judged."""
    found = []
    mismatch = _class_mismatch(plan, model)
    if mismatch:
        found.append(mismatch)
    declared = _declared(model.class_name if mismatch or not plan.pipeline_class else plan.pipeline_class)
    said = _said_by_the_index(plan)
    models = [*model.components, *model.unread, *model.absent]
    for key, names in (("components", plan.sequence), ("exclude", sorted(plan.exclude)),
                       ("own_hook", sorted(plan.own_hook))):
        for name in names:
            if name in models or name in said or (name not in model.others and (declared is None or
                                                                               name in declared)):
                continue  # a model of the folder, a component the class has and the folder leaves out, or PLN50x
            found.append(_component_problem(plan, model, f"{key}.{name}", name))
    short = _budget_problem(plan, model)
    return found + [short] if short else found


def _budget_problem(plan: Plan, model: ModelSizes) -> Problem | None:
    """PLN409 when the plan's budget is below the least its policy can run in on the folder's sizes, at the plan's
    torch_dtype (`planner.budget.decide`: the same answer `planner apply` gives once the weights are loaded)."""
    if plan.policy != "budget" or plan.budget is None:
        return None
    from planner.budget import decide
    from planner.budget.problems import Asker

    dtype = plan.torch_dtype or model.torch_dtype
    asker = Asker.checking(plan, of=f"the model folder {model.source} at {dtype or 'its stored dtype'}")
    used = {name: c for name, c in model.components.items() if name in plan.call_order or name in plan.exclude}
    try:  # what one call uses, beside the exclusions
        if plan.granularity == "block":
            nested = decide.nest(plan, lambda name, splits: used[name].blocks(dtype, splits), list(used),
                                 plan.budget)  # blocks too large for the budget split, as `apply` splits them
            decide.check_blocks(plan, nested.blocks, plan.budget, asker, nested=nested)
        else:
            decide.check_components(plan, {name: c.bytes_at(dtype) for name, c in used.items()}, plan.budget, asker)
    except PlanError as error:
        return error.problems[0]
    return None


def _said_by_the_index(plan: Plan) -> frozenset[str]:
    """The plan's names that validate's check of its class against the index reports already: those the class
    does not have (PLN503) or declares as no model (PLN504). The folder adds nothing to those."""
    record = _record(plan.pipeline_class)
    if record is None:
        return frozenset()
    return frozenset(name for name in (*plan.sequence, *plan.exclude, *plan.own_hook)
                     if name not in record.components or record.components[name].model is False)


def _class_mismatch(plan: Plan, model: ModelSizes) -> Problem | None:
    wanted, held = plan.pipeline_class, model.class_name
    if not wanted or wanted == held:
        return None
    ours, theirs = _declared(wanted), _declared(held)
    if ours is None or theirs is None or ours == theirs:
        return None  # the index cannot tell (apply checks the installed diffusers), or diffusers loads it from here
    only = [f"only {cls} takes {', '.join(sorted(names))}" for cls, names in ((wanted, ours - theirs),
                                                                             (held, theirs - ours)) if names]
    return plan.problem("pipeline.class", PLN304, f"{wanted!r} does not match the model folder {model.source}, "
                        f"which holds a {held} (its model_index.json): {'; '.join(only)}",
                        f"write class: {held}, or leave class out to read it from model_index.json")


def _component_problem(plan: Plan, model: ModelSizes, key: str, name: str) -> Problem:
    if name in model.others:
        return plan.problem(key, PLN301, f"{name} of the model folder {model.source} is a {model.others[name][1]}, "
                            "not a model: only torch modules are offloaded", f"remove {name!r}")
    models = [*model.components, *model.unread]
    hint = difflib.get_close_matches(name, models, n=1)
    return plan.problem(key, PLN301, f"the model folder {model.source} has no component {name!r} (its models: "
                        f"{some(models) or 'none'})", did_you_mean(hint) if hint else "remove it from the plan")


def _declared(class_name: str) -> frozenset[str] | None:
    """The components the pipeline class `class_name` takes (the index's), or None when the index lacks it."""
    record = _record(class_name)
    return frozenset(record.components) if record is not None else None


def _record(class_name: str | None) -> index.Pipeline | None:
    """The index's record of a pipeline class, or None: no class, one the index lacks, or an index that cannot
    be read (validate's own check of the class says so)."""
    try:
        return index.load().get(class_name) if class_name else None
    except (OSError, ValueError):
        return None
