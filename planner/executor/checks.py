"""The checks `apply` makes before anything changes: every reason a plan cannot be put on a pipeline as it is now
(a component the pipeline lacks or that is no model, connected pipelines the plan does not describe, a device map,
another kind of offload already on it, a device this machine lacks), and how a plan's hooks are told from others.
Each problem is a located `Problem` (PLN301, PLN302, PLN303, PLN306); nothing here changes the pipeline.
"""

from __future__ import annotations

import difflib

import torch
from accelerate.hooks import CpuOffload

from planner.executor import compat, devices
from planner.executor.chain import owned
from planner.executor.hooks import BlockHook, BudgetHook
from planner.executor.modules import connected_pipes, model_components
from planner.plan import Plan, Problem
from planner.rules import PLN301, PLN302, PLN306


def is_model_offload(hook) -> bool:
    """A model offload hook (diffusers' chain, or a plan's own): what the plan replaces when it re-installs; any
    other accelerate hook is another kind of offload, which it never replaces silently."""
    return isinstance(hook, (CpuOffload, BudgetHook, BlockHook)) or owned(hook)


def preflight(pipe, plan: Plan, target: torch.device, dry_run: bool, applied: bool = False) -> list[Problem]:
    """Every reason `plan` cannot be applied to `pipe` as it is now; empty when it can. `applied`: a plan of ours
    is on the pipeline now (its hooks are replaced, not a conflict)."""
    problems = _component_problems(pipe, plan)
    state = _state_problem(pipe, plan, applied)
    if state:
        problems.append(state)
    if not dry_run:
        problems += devices.problems(plan, target)
    return problems


def _component_problems(pipe, plan: Plan) -> list[Problem]:
    components = pipe.components
    problems = _connected_problems(pipe, plan)
    for key, names in (("components", plan.sequence), ("exclude", sorted(plan.exclude)),
                       ("own_hook", sorted(plan.own_hook))):
        for name in names:
            if name not in components:
                hint = difflib.get_close_matches(name, list(components), n=1)
                fix = f"did you mean {hint[0]!r}?" if hint else "remove it from the plan"
                problems.append(plan.problem(f"{key}.{name}", PLN301,
                                             f"{type(pipe).__name__} has no component {name!r} (it has: "
                                             f"{', '.join(components)})", fix))
            elif components[name] is not None and not isinstance(components[name], torch.nn.Module):
                problems.append(plan.problem(f"{key}.{name}", PLN301,
                                             f"component {name!r} is a {type(components[name]).__name__}, not a "
                                             f"model: only torch modules are offloaded", f"remove {name!r}"))
    return problems


def _connected_problems(pipe, plan: Plan) -> list[Problem]:
    """PLN306 when the plan's `pipe` entries do not say how the pipeline hooks its connected pipelines."""
    cls = type(pipe).__name__
    connected = connected_pipes(pipe)
    if not connected:
        return [plan.problem(f"components.{name}", PLN306, f"{cls} hooks one chain of its own, not one per "
                             f"connected pipeline (pipe: {attribute})", f"remove `pipe` from {name!r}")
                for name, attribute in plan.pipes.items()]
    if not plan.pipes:
        return [plan.problem("components", PLN306, f"{cls} hooks each connected pipeline "
                             f"({', '.join(connected)}) with a chain of its own: the plan must say which holds each "
                             "component", "write components as a mapping, each with `pipe:`")]
    modules = model_components(pipe)
    owner = {id(m): attribute for attribute, sub in connected.items() for m in model_components(sub).values()}
    problems = []
    for name in plan.sequence:
        attribute = plan.pipes.get(name)
        wanted = owner.get(id(modules[name])) if name in modules else None
        if attribute not in connected:
            problems.append(plan.problem(f"components.{name}", PLN306, f"{cls} has no connected pipeline "
                                         f"{attribute!r} (it has: {', '.join(connected)})",
                                         f"write `pipe: {wanted}`" if wanted else "name one of them"))
        elif wanted is not None and wanted != attribute:
            problems.append(plan.problem(f"components.{name}", PLN306, f"{cls} hooks {name!r} in the chain of "
                                         f"{wanted}, not {attribute}", f"write `pipe: {wanted}`"))
    return problems


def _state_problem(pipe, plan: Plan, applied: bool) -> Problem | None:
    where = "device"
    if compat.pipe_device_mapped(pipe):
        return plan.problem(where, PLN302, "the pipeline was loaded with a device_map: offloading and device "
                            "maps cannot be combined", "call pipe.reset_device_map() first, or load it without one")
    for name, module in model_components(pipe).items():
        spread = {str(d) for d in compat.device_map_of(module).values()}
        if len(spread) > 1:
            return plan.problem(where, PLN302, f"component {name!r} is dispatched over several devices "
                                f"({', '.join(sorted(spread))})", "load it without a device_map")
    if compat.pipe_group_offloaded(pipe):
        return plan.problem(where, PLN302, "group offloading is active on this pipeline",
                            "disable group offloading on its components first")
    for name, module in model_components(pipe).items():
        for sub in module.modules():
            hook = getattr(sub, compat.HF_HOOK, None)
            if hook is None or owned(hook) or isinstance(hook, (BudgetHook, BlockHook)):  # a plan's own
                continue
            if sub is module and isinstance(hook, CpuOffload) and not applied:
                return plan.problem(where, PLN302, "model CPU offload is already enabled on this pipeline "
                                    "by diffusers", "call pipe.remove_all_hooks() first; the plan replaces it")
            if not isinstance(hook, CpuOffload):
                return plan.problem(where, PLN302, f"sequential CPU offload (or another accelerate hook: "
                                    f"{type(hook).__name__}) is active on {name!r}",
                                    "call pipe.remove_all_hooks() first")
    return None


def group_hooks_near_the_top(module) -> bool:
    """A cheap sign of diffusers' group offloading: its block-level hooks sit on the module or its direct children
    (leaf-level ones on leaves, direct children included in diffusers' models). The end of a call checks fully."""
    return any(compat.has_group_offloading(sub) for sub in (module, *module.children()))
