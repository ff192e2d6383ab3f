"""`planner.offload_strategy(plan_or_budget)`: the budget policy for modular diffusers, as the `offload_strategy` of
`ComponentsManager.enable_auto_cpu_offload(device, offload_strategy=...)`.

diffusers' `CustomOffloadHook.pre_forward` calls the strategy as `strategy(hooks=..., model_id=..., model=...,
execution_device=...)` when `model` is not on the execution device: `hooks` are the other models' hooks whose
model is on that device now, and it offloads each hook the strategy returns (`hook.offload()`) before it moves
`model` there. The decisions are `planner.budget.follow.Follower`'s: the schedule of the known call order (the
plan's `uses`, else the order the components first ran), never above the budget, the furthest next use for
what it did not predict. A component's name is the manager's id without its `_<id(component)>` suffix.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from planner import units
from planner.budget.follow import Follower
from planner.executor.modules import module_bytes
from planner.plan import Plan


def offload_strategy(plan_or_budget: Plan | str | int, manager=None, *, sizes: Mapping[str, int] | None = None,
                     uses: Sequence[str] | None = None, calls: int | None = None) -> "OffloadStrategy":
    """The strategy for `plan_or_budget`: a budget plan (its budget, its call order, its exclusions), a plan file,
    or a budget (8GiB, bytes) alone, the call order then learned from the first call (or given as `uses`).
    `manager` (the ComponentsManager, or a mapping of names to modules) gives every model's size up front, so the
    first call is planned too; `sizes` (name -> bytes) instead fixes them; without either each model is measured
    (parameters and buffers) when it is first seen. `calls` is how many calls the schedule is planned for before
    it repeats its steady cycle."""
    fixed: frozenset[str] = frozenset()
    if manager is not None and sizes is None:
        modules = getattr(manager, "components", manager)
        sizes = {component_name(key, module): module_bytes(module) for key, module in modules.items()
                 if hasattr(module, "parameters")}
    if isinstance(plan_or_budget, str) and not _looks_like_size(plan_or_budget):
        from planner.validate import load_plan

        plan_or_budget = load_plan(plan_or_budget)
    if isinstance(plan_or_budget, Plan):
        plan = plan_or_budget
        if plan.budget is None:
            raise ValueError(f"{plan.path}: the plan has no budget: write `budget: SIZE` (and `policy: budget`)")
        budget, uses, fixed = plan.budget, uses or plan.call_order, plan.exclude
    elif isinstance(plan_or_budget, int) and not isinstance(plan_or_budget, bool):
        budget = plan_or_budget
    else:
        budget = units.parse_size(plan_or_budget)  # ValueError names what a size is
    from planner.budget.decide import HORIZON

    given = sizes if manager is None else None  # measured from the manager: measured again at each load
    return OffloadStrategy(Follower(budget, uses, sizes, fixed, calls or HORIZON), given)


class OffloadStrategy:
    """A callable `(hooks, model_id, model, execution_device) -> hooks to offload`; `follower` holds its decisions
    (`follower.evictions`: (incoming, evicted) per load)."""

    def __init__(self, follower: Follower, sizes: Mapping[str, int] | None = None):
        self.follower = follower
        self.sizes = dict(sizes or {})  # given: used as they are; else measured at every load (a LoRA grows one)

    def __call__(self, hooks, model_id, model, execution_device):
        by_name = {component_name(hook.model_id, hook.model): hook for hook in hooks}
        resident = {name: self._size(name, hook.model) for name, hook in by_name.items()}
        incoming = component_name(model_id, model)
        victims = self.follower.evict(incoming, self._size(incoming, model), resident)
        return [by_name[name] for name in victims]

    def _size(self, name: str, model) -> int:
        known = self.sizes.get(name)
        return known if known is not None else module_bytes(model)


def component_name(model_id: str | None, model) -> str:
    """The ComponentsManager's `{name}_{id(component)}` without its suffix; any other id as it is."""
    model_id = model_id or type(model).__name__
    name, _, suffix = model_id.rpartition("_")
    return name if name and suffix == str(id(model)) else model_id


def _looks_like_size(text: str) -> bool:
    try:
        units.parse_size(text)
    except ValueError:
        return False
    return True
