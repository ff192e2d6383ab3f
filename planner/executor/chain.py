"""The chain installer: diffusers' own `enable_model_cpu_offload`, run under the plan's shadows.

The hooks are installed by diffusers itself, with the plan's sequence and exclusions shadowed on the instance, so
they are exactly the ones diffusers installs for that sequence (the differential tests compare them). For a
combined pipeline whose class hooks each connected pipeline with a chain of its own, each connected pipeline gets
its own shadows. The trace follows each accelerate `CpuOffload` hook firing: its `pre_forward` is wrapped on the
hook instance (the class stays accelerate's); hooks installed this way are remembered in a weak set (`owned`),
never tagged.
"""

from __future__ import annotations

import time
import weakref

import torch
from accelerate.hooks import CpuOffload, ModelHook

from planner.executor import compat
from planner.executor.installer import InstallContext
from planner.executor.modules import model_components, module_bytes
from planner.executor.reasons import AFTER_OFFLOAD_ALL, OFFLOAD_ALL
from planner.executor.shadows import Shadowed
from planner.trace import EXCLUSION_ROUND_TRIP

# Every CpuOffload hook a chain installer followed: how preflight tells a plan's hooks from diffusers' own.
_owned: "weakref.WeakSet[CpuOffload]" = weakref.WeakSet()


def owned(hook) -> bool:
    """Whether `hook` was installed for a plan (a chain's CpuOffload, or a parked exclusion's hook)."""
    return isinstance(hook, ParkedHook) or (isinstance(hook, CpuOffload) and hook in _owned)


class ChainInstaller:
    """Installs the plan as diffusers' chain on the handle's pipeline (and its connected pipelines)."""

    policy = "chain"
    budget = schedule = host = None  # the budget policy's figures: the chain has none
    copied_back = None  # every offload copies its bytes back: the trace's figures say it all

    def __init__(self, context: InstallContext):
        self.context = context
        self.hooked: dict = {}
        self.chains: list[Shadowed] = []  # the shadowed pipelines whose chain diffusers installs
        self.back: set[str] = set()  # exclusions the end of the call took to the CPU: their reload is a round trip
        self._installing = False  # a whole install runs: connected pipelines' installs are part of it

    def shadows(self) -> list[Shadowed]:
        """The pipeline objects the plan shadows: the pipeline (its sequence and exclusions, unless it is a
        combined pipeline whose override hooks each connected pipeline), then each connected pipeline."""
        context, plan = self.context, self.context.plan
        top = {compat.ENABLE: context.enable, compat.FREE: context.maybe_free}
        if not plan.pipes:
            found = [Shadowed(context.pipe, {compat.SEQUENCE: plan.offload_seq,
                                             compat.EXCLUDE: sorted(plan.exclude), **top})]
        else:
            found = [Shadowed(context.pipe, top)]
            for attribute, names in plan.chains:
                found.append(self._connected_host(getattr(context.pipe, attribute), names))
        self.chains = [shadowed for shadowed in found if shadowed.chain]
        return found

    # -- installing --------------------------------------------------------------------------------------------
    def end_call(self, now: float) -> None:
        """diffusers' end of a call: everything to the CPU, the exclusions too (a round trip, once re-installed)."""
        self.back = self._round_trip()
        self.context.trace.end_call(now)

    def _round_trip(self) -> set[str]:
        trace = self.context.trace
        back = trace.resident & self.context.plan.exclude  # diffusers moves them to the CPU and back
        trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back})
        return back

    def install(self, modules: dict, ending: bool) -> None:
        """diffusers' own `enable_model_cpu_offload` under the plan's shadows, then the trace follows the hooks it
        installed. Raises diffusers' ValueError when it refuses (group offloading found deeper)."""
        context = self.context
        back = self._round_trip() | (self.back if ending else set())
        self.back = set()
        pipe = context.pipe
        if not context.plan.pipes:
            compat.set_offload_gpu_id(pipe, context.execution_device.index or 0)
        self._installing = True
        try:
            getattr(type(pipe), compat.ENABLE)(pipe, device=context.execution_device)
        finally:
            self._installing = False
        self._follow(modules, back)

    def _connected_host(self, sub, names: tuple[str, ...]) -> Shadowed:
        """The shadows of a connected pipeline `sub` (`prior_pipe`) whose chain holds the plan's `names` (the
        combined pipeline's names): its own names for them, its exclusions, and its two methods routed here."""
        plan = self.context.plan
        own = {id(module): name for name, module in sub.components.items() if isinstance(module, torch.nn.Module)}
        combined = model_components(self.context.pipe)
        local = [own[id(combined[name])] for name in names if name in combined]
        excluded = sorted(own[id(combined[n])] for n in plan.exclude if n in combined and id(combined[n]) in own)
        host = Shadowed(sub, {compat.SEQUENCE: "->".join(local), compat.EXCLUDE: excluded})
        host.shadows[compat.ENABLE] = lambda gpu_id=None, device=None: self._enable_connected(host)
        host.shadows[compat.FREE] = lambda: self._free_connected(host)
        return host

    def _enable_connected(self, host) -> None:
        """A connected pipeline's `enable_model_cpu_offload`: diffusers' own with the plan's device, as part of a
        whole install, or on its own when the connected pipeline's call ends (its chain is re-installed alone)."""
        context = self.context
        sub = host.pipe
        compat.set_offload_gpu_id(sub, context.execution_device.index or 0)
        if self._installing:
            getattr(type(sub), compat.ENABLE)(sub, device=context.execution_device)
            return
        modules = model_components(context.pipe)
        mine = {name for name, module in modules.items() if id(module) in host.module_ids()}
        back = context.trace.resident & context.plan.exclude & mine  # moved to the CPU and back, as in `reinstall`
        context.trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back}, only=mine)
        getattr(type(sub), compat.ENABLE)(sub, device=context.execution_device)
        self._follow(modules, back, hosts=[host])

    def _free_connected(self, host) -> None:
        """A connected pipeline's `maybe_free_model_hooks` at the end of its part of the call: diffusers' own,
        which re-installs its chain through `_enable_connected`; the combined call goes on."""
        getattr(type(host.pipe), compat.FREE)(host.pipe)

    def _follow(self, modules: dict, back: set, hosts: list | None = None) -> None:
        """Let the trace follow the hooks just installed on `hosts` (default: every chain), and record the
        exclusions put on the device."""
        context = self.context
        trace = context.trace
        names = {id(m): name for name, m in modules.items()}
        if hosts is None:
            trace.sizes = {name: module_bytes(m) for name, m in modules.items()}
            self.hooked = {name: (m, None) for name, m in modules.items()}
        for host in self.chains if hosts is None else hosts:
            host.hooks = compat.all_hooks(host.pipe)
            for user_hook in host.hooks:
                model = compat.hooked_model(user_hook)
                name = names[id(model)]
                self.hooked[name] = (model, compat.hooked_hook(user_hook))
                self._observe(compat.hooked_hook(user_hook), name, names)
            for name in sorted(n for n in context.plan.exclude if n in modules and id(modules[n]) in host.module_ids()):
                trace.load(name, EXCLUSION_ROUND_TRIP if name in back else None)  # on the device for good

    def _observe(self, hook, name: str, names: dict) -> None:
        """Let the trace follow this accelerate `CpuOffload` hook: the hook object and its class stay
        accelerate's own; only its `pre_forward` is wrapped on the instance. The wrapper holds the trace, never
        the handle or the pipeline."""
        prev = compat.previous_model(hook)
        prev_name = names.get(id(prev)) if prev is not None else None
        original = hook.pre_forward
        trace = self.context.trace

        def pre_forward(module, *args, **kwargs):
            trace.begin(time.perf_counter())  # a plain pipe() call is timed from its first hook firing
            if prev_name is not None:
                trace.offload(prev_name)
            trace.load(name)
            return original(module, *args, **kwargs)

        hook.pre_forward = pre_forward
        _owned.add(hook)

    # -- on demand -------------------------------------------------------------------------------------------
    def offload_all(self) -> None:
        """Every component to the host now: the chain's (each hook's own offload) and the exclusions, which come
        back when they next run (a `ParkedHook` until the call's end re-installs the chain)."""
        context = self.context
        trace = context.trace
        for host in self.chains:
            for user_hook in host.hooks:
                user_hook.offload()
        modules = {name: module for name, (module, _) in self.hooked.items()}
        for name in sorted(n for n in context.plan.exclude if n in modules and n in trace.resident):
            module = modules[name]
            module.to("cpu")
            ParkedHook.park(module, name, context.execution_device, trace)
        trace.offload_all({name: OFFLOAD_ALL for name in trace.resident})

    def release(self) -> None:
        """Nothing to undo beyond what the handle restores (diffusers' hooks come off with every module)."""


class ParkedHook(ModelHook):
    """Brings an excluded component back to the device the first time it runs after `offload_all()`; the end of
    the call re-installs diffusers' chain, which takes it off. Holds the trace, never the handle."""

    def __init__(self, name: str, device: torch.device, trace):
        self.name, self.execution_device, self.trace = name, device, trace

    @classmethod
    def park(cls, module, name: str, device: torch.device, trace) -> None:
        from accelerate.hooks import add_hook_to_module

        add_hook_to_module(module, cls(name, device, trace))

    def pre_forward(self, module, *args, **kwargs):
        from accelerate.utils import send_to_device

        self.trace.begin(time.perf_counter())
        if self.name not in self.trace.resident:
            module.to(self.execution_device)
            self.trace.load(self.name, AFTER_OFFLOAD_ALL)
        return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)
