"""`apply(pipe, plan)`: diffusers' own model CPU offload, driven by a plan, behind a handle that undoes it.

The hooks are installed by diffusers' `enable_model_cpu_offload` itself, run with the plan's sequence and
exclusions shadowed on the instance, so they are exactly the ones diffusers installs for that sequence. Shadowing
`enable_model_cpu_offload` and `maybe_free_model_hooks` on the instance keeps the plan in force when diffusers
re-installs its hooks (at the end of every call, after loading LoRA weights). `AppliedPlan.remove()` deletes every
shadow and hook and puts the components back where they were.
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass

import torch
from accelerate.hooks import CpuOffload

from planner.executor import devices
from planner.plan import Plan, PlanError, Problem, load_plan
from planner.rules import device_problems
from planner.trace import Trace

# Instance attributes the handle shadows while it is applied, and diffusers' offload state it overwrites.
SHADOWED = ("model_cpu_offload_seq", "_exclude_from_cpu_offload", "enable_model_cpu_offload",
            "maybe_free_model_hooks")
OFFLOAD_STATE = ("_all_hooks", "_offload_device", "_offload_gpu_id")
_MISSING = object()
_applied: "weakref.WeakKeyDictionary[object, AppliedPlan]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Snapshot:
    """What `apply` changes, as it was: instance attributes and each model component's device."""

    attributes: dict
    devices: dict

    @classmethod
    def take(cls, pipe) -> "_Snapshot":
        attributes = {name: pipe.__dict__.get(name, _MISSING) for name in SHADOWED + OFFLOAD_STATE}
        return cls(attributes, {name: _device_of(m) for name, m in _modules(pipe).items()})

    def restore(self, pipe) -> None:
        type(pipe).remove_all_hooks(pipe)  # diffusers' own; the `_all_hooks` it resets is restored below
        for name, value in self.attributes.items():
            if value is _MISSING:
                pipe.__dict__.pop(name, None)
            else:
                pipe.__dict__[name] = value
        for name, module in _modules(pipe).items():
            device = self.devices.get(name)
            if device is not None and _device_of(module) != device:
                module.to(device)


def apply(pipe, plan: Plan | str, dry_run: bool = False) -> "AppliedPlan":
    """Install `plan` on the diffusers pipeline `pipe` and return the handle that undoes it.

    Everything is checked before anything changes; a bad combination raises `PlanError` (located at the plan)
    and leaves `pipe` untouched, and a failure part-way rolls back to the state before the call. With
    `dry_run=True` the same hooks run with the CPU as execution device, and the trace records what the plan's
    device would have received. A plan already applied to `pipe` is replaced.
    """
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    problems = [plan.problem(*found) for found in device_problems(plan.device, plan.gpu_id)]
    if problems:  # a Plan built by hand skipped the rules
        raise PlanError(problems)
    target = devices.target(plan)
    problems = preflight(pipe, plan, target, dry_run)
    if problems:
        raise PlanError(problems)
    previous = _applied.get(pipe)
    if previous is not None:
        previous.remove()
    handle = AppliedPlan(pipe, plan, target, dry_run)
    try:
        handle._install()
    except BaseException:
        handle._snapshot.restore(pipe)
        if previous is not None:
            apply(pipe, previous.plan, previous.dry_run)
        raise
    _applied[pipe] = handle
    return handle


class AppliedPlan:
    """A plan in force on a pipeline: `trace` holds the transfers so far, `remove()` (or leaving a `with`
    block) undoes everything `apply` did. Calling the handle calls the pipeline and makes sure the call ends
    with every component but the exclusions offloaded, whether or not the pipeline frees its hooks itself."""

    def __init__(self, pipe, plan: Plan, target: torch.device, dry_run: bool):
        self.pipe, self.plan, self.target, self.dry_run = pipe, plan, target, dry_run
        self.execution_device = torch.device("cpu") if dry_run else target
        self.trace = Trace(device=str(target))
        self.skipped = tuple(n for n in (*plan.sequence, *sorted(plan.exclude))
                             if pipe.components.get(n, _MISSING) is None)
        self.active = False
        self._snapshot = _Snapshot.take(pipe)
        self._ending = False

    # -- the user's side ------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if not self.active:
            raise RuntimeError("this plan was removed; apply it again to call through it")
        if not self._hooks_are_mine():  # another plan sharing these components took them over
            self._reinstall()
        call = self.trace.call
        output = self.pipe(*args, **kwargs)
        if self.trace.call == call:  # the pipeline did not free its hooks at the end of the call
            self.pipe.maybe_free_model_hooks()
        return output

    def remove(self) -> None:
        """Remove every hook and shadow, and put the components back where they were before `apply`."""
        if not self.active:
            return
        self.trace.offload_all()
        self._snapshot.restore(self.pipe)
        self.active = False
        if _applied.get(self.pipe) is self:
            del _applied[self.pipe]

    def __enter__(self) -> "AppliedPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "dry run" if self.dry_run else "applied"
        return f"<AppliedPlan {self.plan.offload_seq} on {self.target} ({state if self.active else 'removed'})>"

    # -- installing ----------------------------------------------------------------------------------------
    def _install(self) -> None:
        pipe = self.pipe
        pipe.__dict__["model_cpu_offload_seq"] = self.plan.offload_seq
        pipe.__dict__["_exclude_from_cpu_offload"] = sorted(self.plan.exclude)
        pipe.__dict__["enable_model_cpu_offload"] = self._enable
        pipe.__dict__["maybe_free_model_hooks"] = self._maybe_free
        self.active = True
        self._reinstall()

    def _enable(self, gpu_id=None, device=None) -> None:
        """Stands in for `pipe.enable_model_cpu_offload` while the plan is applied: diffusers calls it at the
        end of every call and after loading LoRA weights; the plan's device wins over any argument."""
        self._reinstall()

    def _maybe_free(self) -> None:
        """Stands in for `pipe.maybe_free_model_hooks`: diffusers' own (which re-installs through `_enable`),
        and the call is over for the trace. Where diffusers would skip the re-install (no hooks at all), it
        re-installs anyway, so that a call always ends with only the exclusions on the device."""
        self._ending = True
        type(self.pipe).maybe_free_model_hooks(self.pipe)
        if self._ending:
            self._reinstall()

    def _reinstall(self) -> None:
        pipe, trace = self.pipe, self.trace
        trace.offload_all()  # diffusers starts by moving the whole pipeline to the CPU
        if self._ending:
            self._ending = False
            trace.end_call()
        # diffusers computes `gpu_id or device.index or pipe._offload_gpu_id`: an index of 0 would fall through
        pipe._offload_gpu_id = self.execution_device.index or 0
        type(pipe).enable_model_cpu_offload(pipe, device=self.execution_device)
        modules = _modules(pipe)
        trace.sizes = {name: _bytes(m) for name, m in modules.items()}
        names = {id(m): name for name, m in modules.items()}
        for user_hook in pipe._all_hooks:
            self._observe(user_hook.hook, names[id(user_hook.model)], names)
        for name in sorted(set(modules) & self.plan.exclude):
            trace.load(name)  # diffusers put it on the device for good

    def _observe(self, hook, name: str, names: dict) -> None:
        """Let the trace follow this accelerate `CpuOffload` hook: the hook object and its class stay
        accelerate's own; only its `pre_forward` is wrapped on the instance."""
        prev = hook.prev_module_hook
        prev_name = names.get(id(prev.model)) if prev is not None else None
        original = hook.pre_forward
        trace = self.trace

        def pre_forward(module, *args, **kwargs):
            if prev_name is not None:
                trace.offload(prev_name)
            trace.load(name)
            return original(module, *args, **kwargs)

        hook.pre_forward = pre_forward
        hook._planner_owner = self

    def _hooks_are_mine(self) -> bool:
        hooks = getattr(self.pipe, "_all_hooks", [])
        return all(getattr(getattr(h.model, "_hf_hook", None), "_planner_owner", None) is self for h in hooks)


# -- checks made before anything changes ------------------------------------------------------------------
def preflight(pipe, plan: Plan, target: torch.device, dry_run: bool) -> list[Problem]:
    """Every reason `plan` cannot be applied to `pipe` as it is now; empty when it can."""
    problems = _component_problems(pipe, plan)
    state = _state_problem(pipe, plan)
    if state:
        problems.append(state)
    if not dry_run:
        problems += devices.problems(plan, target)
    return problems


def _component_problems(pipe, plan: Plan) -> list[Problem]:
    components = pipe.components
    problems = []
    for key, names in (("components", plan.sequence), ("exclude", sorted(plan.exclude))):
        for name in names:
            if name not in components:
                hint = difflib.get_close_matches(name, list(components), n=1)
                fix = f"did you mean {hint[0]!r}?" if hint else "remove it from the plan"
                problems.append(plan.problem(f"{key}.{name}", "PLN301",
                                             f"{type(pipe).__name__} has no component {name!r} (it has: "
                                             f"{', '.join(components)})", fix))
            elif components[name] is not None and not isinstance(components[name], torch.nn.Module):
                problems.append(plan.problem(f"{key}.{name}", "PLN301",
                                             f"component {name!r} is a {type(components[name]).__name__}, not a "
                                             f"model: only torch modules are offloaded", f"remove {name!r}"))
    return problems


def _state_problem(pipe, plan: Plan) -> Problem | None:
    where = "device"
    mapped = getattr(pipe, "_is_pipeline_device_mapped", None)
    if (mapped() if mapped else isinstance(getattr(pipe, "hf_device_map", None), dict)):
        return plan.problem(where, "PLN302", "the pipeline was loaded with a device_map: offloading and device "
                            "maps cannot be combined", "call pipe.reset_device_map() first, or load it without one")
    for name, module in _modules(pipe).items():
        spread = {str(d) for d in (getattr(module, "hf_device_map", None) or {}).values()}
        if len(spread) > 1:
            return plan.problem(where, "PLN302", f"component {name!r} is dispatched over several devices "
                                f"({', '.join(sorted(spread))})", "load it without a device_map")
    group = getattr(pipe, "_maybe_raise_error_if_group_offload_active", None)
    if group and group(raise_error=False):
        return plan.problem(where, "PLN302", "group offloading is active on this pipeline",
                            "disable group offloading on its components first")
    mine = _applied.get(pipe)
    for name, module in _modules(pipe).items():
        for sub in module.modules():
            hook = getattr(sub, "_hf_hook", None)
            if hook is None or getattr(hook, "_planner_owner", None) is not None:
                continue
            if sub is module and isinstance(hook, CpuOffload) and mine is None:
                return plan.problem(where, "PLN302", "model CPU offload is already enabled on this pipeline "
                                    "by diffusers", "call pipe.remove_all_hooks() first; the plan replaces it")
            if not isinstance(hook, CpuOffload):
                return plan.problem(where, "PLN302", f"sequential CPU offload (or another accelerate hook: "
                                    f"{type(hook).__name__}) is active on {name!r}",
                                    "call pipe.remove_all_hooks() first")
    return None


# -- small helpers ----------------------------------------------------------------------------------------
def _modules(pipe) -> dict:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _device_of(module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _bytes(module) -> int:
    """Parameters and buffers of `module`, each tensor counted once (tied weights share one)."""
    seen = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())

