"""The budget policy's installers: whole components (`ComponentInstaller`) or block by block (`BlockInstaller`),
each carrying out a `planner.budget.decide.Decision` through a residency, and the device budget read here.

Every model component gets a `hooks.BudgetHook`, which makes it resident before it runs (the residency's `use`); at
block granularity every block submodule of a moved component also gets a `hooks.BlockHook`. The installers never
solve or check a budget: `apply` asks `decide` before anything changes, and a residency asks it again when the
components change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.hooks import add_hook_to_module

from planner.budget import decide
from planner.budget.blocks import BlockSchedule
from planner.executor import compat, devices
from planner.executor.blocks import BlockResidency, Partition
from planner.executor.copiers import copier_for
from planner.executor.hooks import BlockHook, BlockHookConfig, BudgetHook, BudgetHookConfig, key_of
from planner.executor.installer import InstallContext
from planner.executor.modules import connected_pipes, model_components
from planner.executor.reasons import OFFLOAD_ALL
from planner.executor.residency import ComponentResidency
from planner.executor.shadows import Shadowed
from planner.plan import Plan
from planner.units import human


def budget_for(plan: Plan, target: torch.device, dry_run: bool, at=None) -> int:
    """The plan's `budget`, else the device's free memory now minus `reserve` (`decide.device_budget`). Raises
    `PlanError` (PLN307) where there is no memory to read: a dry run, a backend that cannot say. `at(key, rule,
    message, fix)` locates the problem (default `plan.problem`; the CLI points at its flags)."""
    free = None if dry_run or plan.budget is not None else devices.free_memory(target)
    return decide.device_budget(plan, free, dry_run=dry_run, device_type=target.type, at=at)


@dataclass(frozen=True)
class HostUse:
    """The host's side of a budget plan: `held` bytes of host copies of what moves, `pinned` bytes of them pinned
    (never above the host's spare memory, `planner.budget.host`), `note` says what was pinned, or why nothing was."""

    held: int
    pinned: int
    note: str

    def to_json(self) -> dict:
        return {"host_bytes": self.held, "pinned_bytes": self.pinned, "note": self.note}


def budget_shadows(context: InstallContext) -> list[Shadowed]:
    """The pipeline with its exclusions (diffusers' `_execution_device` skips them) and both methods routed to the
    handle; each connected pipeline of a combined class likewise, its own end of call a no-op for the trace (the
    combined pipeline's ends the call)."""
    plan = context.plan
    found = [Shadowed(context.pipe, {compat.EXCLUDE: sorted(plan.exclude), compat.ENABLE: context.enable,
                                     compat.FREE: context.maybe_free})]
    combined = model_components(context.pipe)
    for sub in connected_pipes(context.pipe).values():
        own = {id(module): name for name, module in model_components(sub).items()}
        excluded = sorted(own[id(combined[n])] for n in plan.exclude if n in combined and id(combined[n]) in own)
        found.append(Shadowed(sub, {compat.EXCLUDE: excluded,
                                    compat.ENABLE: lambda gpu_id=None, device=None: context.enable(),
                                    compat.FREE: lambda sub=sub: getattr(type(sub), compat.FREE)(sub)}))
    return found


def hook_components(modules: dict, hooks: dict[str, BudgetHook], device: torch.device, action) -> dict:
    """A `BudgetHook` (the one `hooks` has for it, else a new one calling `action`) on every model component that
    lacks it; returns {name: (module, hook)}."""
    hooked = {}
    for name, module in modules.items():
        hook = hooks.get(name) or BudgetHook(BudgetHookConfig(name, device), action)
        if compat.hook_of(module) is not hook:
            add_hook_to_module(module, hook)
        hooked[name] = (module, hook)
    return hooked


class ComponentInstaller:
    """The budget policy on whole components: a `BudgetHook` on every model component, all of them driving one
    `ComponentResidency` for the plan's device, which follows the decided schedule over `calls` calls."""

    policy = "budget"

    def __init__(self, context: InstallContext, decision: decide.Decision, asker, calls: int | None):
        self.context, self.budget = context, decision.budget
        self.residency = ComponentResidency(context.trace, context.execution_device, decision, asker, calls)
        self.hooked: dict = {}

    @property
    def schedule(self):
        return self.residency.course.schedule

    @property
    def copied_back(self) -> dict[int, int]:
        return self.residency.copied_back

    @property
    def host(self) -> HostUse:
        """Host bytes held by the moved components' host copies, bytes pinned now, and the pin note."""
        residency = self.residency
        moved = {n: w for n, w in residency.weights.items() if n not in residency.fixed}
        held = sum(residency.sizes.get(name, 0) for name in moved)
        pinned = sum(t.numel() * t.element_size() for w in moved.values() for t in w.host_tensors() if t.is_pinned())
        if residency.pinning is not None:
            note = residency.pinning.note
        elif not residency.keep_host:
            note = "nothing pinned: keep_host_copy: false keeps no host copies"
        else:
            note = f"nothing pinned: pinned memory speeds up CUDA copies only, not {residency.device.type}"
        return HostUse(held, pinned, note)

    def shadows(self) -> list[Shadowed]:
        return budget_shadows(self.context)

    def end_call(self, now: float) -> None:
        self.residency.end_call(now)

    def install(self, modules: dict, ending: bool) -> None:
        """Our hooks on the pipeline as it is now (the residency carries on: what is resident stays)."""
        first = not self.residency.weights
        self.residency.sync(modules)
        hooks = {name: hook for name, (_, hook) in self.hooked.items()}
        self.hooked = hook_components(modules, hooks, self.context.execution_device, self.residency.use)
        self.residency.settle(first)

    def offload_all(self) -> None:
        self.residency.offload_all(OFFLOAD_ALL)

    def release(self) -> None:
        self.residency.release()


class BlockInstaller:
    """The budget policy block by block: a `BudgetHook` on every model component (its action starts a forward) and
    a `BlockHook` on every block submodule of the moved components, all driving one `BlockResidency`. Host copies
    are pinned only for the blocks the decision chose, and only where pinning helps (`pinning_here`)."""

    policy = "budget"

    def __init__(self, context: InstallContext, decision: decide.Decision, asker):
        self.context, self.budget, self.decision = context, decision.budget, decision
        plan, pinning = context.plan, decision.pinning
        why = pinning_here(plan, context.target, context.dry_run)
        self.pins = why is None
        note = pinning.note if self.pins else f"nothing pinned ({why}); pin: {pinning.pin} would pin " \
                                              f"{human(pinning.pinned_bytes)} of {human(pinning.spare)} the host " \
                                              "can spare"
        self.planned_host = HostUse(pinning.host_bytes, pinning.pinned_bytes if self.pins else 0, note)
        copier = copier_for(context.execution_device, plan.prefetch)
        pinned = frozenset(pinning.pinned) if self.pins else frozenset()
        self.residency = BlockResidency(context.trace, context.execution_device, decision, asker, pinned, copier)
        self.hooked: dict = {}
        self.block_hooks: dict[tuple[str, str], BlockHook] = {}
        self.pinned_bytes = 0

    @property
    def schedule(self) -> BlockSchedule | None:
        return self.residency.schedule

    @property
    def copied_back(self) -> dict[int, int]:
        return self.residency.copied_back

    @property
    def host(self) -> HostUse:
        """Host bytes held by the moved blocks' host copies, bytes pinned now, and the pin note."""
        return HostUse(self.planned_host.held, self.pinned_bytes, self.planned_host.note)

    def shadows(self) -> list[Shadowed]:
        return budget_shadows(self.context)

    def end_call(self, now: float) -> None:
        self.residency.end_call(now)

    def install(self, modules: dict, ending: bool) -> None:
        """Our hooks on the pipeline as it is now; the chosen host copies pinned at the first install."""
        residency = self.residency
        first = not residency.modules
        residency.sync(modules)
        if first and self.pins:
            self.pinned_bytes = residency.pin()
        hooks = {name: hook for name, (_, hook) in self.hooked.items()}
        self.hooked = hook_components(modules, hooks, self.context.execution_device, residency.use)
        for name in modules:
            if name not in residency.fixed:
                self._hook_blocks(name, residency.partitions[name])
        residency.settle(first)

    def _hook_blocks(self, name: str, found: Partition) -> None:
        residency, device = self.residency, self.context.execution_device
        for block, sub in found.modules.items():
            hook = self.block_hooks.get((name, block))
            if hook is None:
                hook = self.block_hooks[(name, block)] = BlockHook(BlockHookConfig(name, block, device),
                                                                   residency.enter, residency.leave)
            if compat.hook_of(sub) is not hook:
                add_hook_to_module(sub, hook)

    def offload_all(self) -> None:
        self.residency.offload_all(OFFLOAD_ALL)

    def release(self) -> None:
        self.residency.release()
        self.pinned_bytes = 0


def pinning_here(plan: Plan, target: torch.device, dry_run: bool) -> str | None:
    """Why no host copy is pinned here, or None when the chosen ones are."""
    if dry_run:
        return "a dry run moves nothing to a device"
    if target.type != "cuda":
        return f"pinned memory speeds up CUDA copies only, not {target.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available to torch"
    if not plan.keep_host_copy:
        return "keep_host_copy: false keeps no host copies to pin"
    return None


def block_sizes(pipe) -> dict[str, dict[str, int]]:
    """Every model component's blocks and their bytes, from its module tree (`blocks.partition`)."""
    from planner.executor.blocks import partition

    return {name: partition(module).sizes for name, module in model_components(pipe).items()}


def block_pieces(pipe):
    """`blocks_for(component, splits)` over the pipeline's module tree (`blocks.partition` with those splits): the
    pieces `planner.budget.decide.nest` chooses among, tied tensors in REST."""
    from planner.executor.blocks import partition

    modules = model_components(pipe)
    return lambda name, splits: partition(modules[name], splits).sizes


__all__ = ["BlockInstaller", "ComponentInstaller", "HostUse", "budget_for", "key_of"]
