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
from planner.executor.components import model_components, module_bytes
from planner.executor.shadows import Host
from planner.trace import EXCLUSION_ROUND_TRIP

OFFLOAD_ALL = "offload_all"  # a transfer made by AppliedPlan.offload_all()
AFTER_OFFLOAD_ALL = "after offload_all"  # an excluded component coming back after offload_all()

# Every CpuOffload hook a chain installer followed: how preflight tells a plan's hooks from diffusers' own.
_owned: "weakref.WeakSet[CpuOffload]" = weakref.WeakSet()


def owned(hook) -> bool:
    """Whether `hook` was installed for a plan (a chain's CpuOffload, or a parked exclusion's hook)."""
    return isinstance(hook, ParkedHook) or (isinstance(hook, CpuOffload) and hook in _owned)


class ChainInstaller:
    """Installs the plan as diffusers' chain on the handle's pipeline (and its connected pipelines)."""

    policy = "chain"
    copied_back = None  # every offload copies its bytes back: the trace's figures say it all

    def __init__(self, handle):
        self.handle = handle
        self._installing = False  # a whole install runs: connected pipelines' installs are part of it

    def hosts(self) -> list:
        """The pipeline objects the plan shadows: the pipeline (its sequence and exclusions, unless it is a
        combined pipeline whose override hooks each connected pipeline), then each connected pipeline."""
        handle, plan = self.handle, self.handle.plan
        top = {compat.ENABLE: handle._enable, compat.FREE: handle._maybe_free}
        if not plan.pipes:
            return [Host(handle.pipe, {compat.SEQUENCE: plan.offload_seq, compat.EXCLUDE: sorted(plan.exclude),
                                       **top})]
        hosts = [Host(handle.pipe, top)]
        for attribute, names in plan.chains:
            hosts.append(self._connected_host(getattr(handle.pipe, attribute), names))
        return hosts

    # -- installing --------------------------------------------------------------------------------------------
    def reinstall(self, ending: bool) -> None:
        """Put diffusers' hooks on the pipeline as it is now; at the end of a call, close the call in the trace
        (even when the re-install fails or is refused)."""
        handle = self.handle
        back = handle.trace.resident & handle.plan.exclude  # diffusers moves them to the CPU and back: a round trip
        handle.trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back})
        try:
            modules = self._hook(ending)
        finally:
            if ending:
                handle.trace.end_call(time.perf_counter())
        if modules is not None:
            self._follow(modules, back)

    def _hook(self, ending: bool) -> dict | None:
        """diffusers' own `enable_model_cpu_offload` under the plan's shadows; returns the model components. At
        the end of a call that finds another kind of offload on the pipeline, nothing changes and None is
        returned: the plan never replaces it silently (the handle is "blocked")."""
        handle = self.handle
        pipe = handle.pipe
        modules = handle._prepare(ending)
        if modules is None:
            return None
        if not handle.plan.pipes:
            compat.set_offload_gpu_id(pipe, handle.execution_device.index or 0)
        self._installing = True
        try:
            getattr(type(pipe), compat.ENABLE)(pipe, device=handle.execution_device)
        except ValueError:
            if ending and handle._conflict() is not None:  # diffusers refuses: group offloading, found deeper
                handle._blocked = True
                return None
            raise
        finally:
            self._installing = False
        handle._blocked = False
        return modules

    def _connected_host(self, sub, names: tuple[str, ...]):
        """The shadows of a connected pipeline `sub` (`prior_pipe`) whose chain holds the plan's `names` (the
        combined pipeline's names): its own names for them, its exclusions, and its two methods routed here."""
        plan = self.handle.plan
        own = {id(module): name for name, module in sub.components.items() if isinstance(module, torch.nn.Module)}
        combined = model_components(self.handle.pipe)
        local = [own[id(combined[name])] for name in names if name in combined]
        excluded = sorted(own[id(combined[n])] for n in plan.exclude if n in combined and id(combined[n]) in own)
        host = Host(sub, {compat.SEQUENCE: "->".join(local), compat.EXCLUDE: excluded})
        host.shadows[compat.ENABLE] = lambda gpu_id=None, device=None: self._enable_connected(host)
        host.shadows[compat.FREE] = lambda: self._free_connected(host)
        return host

    def _enable_connected(self, host) -> None:
        """A connected pipeline's `enable_model_cpu_offload`: diffusers' own with the plan's device, as part of a
        whole install, or on its own when the connected pipeline's call ends (its chain is re-installed alone)."""
        handle = self.handle
        sub = host.pipe
        compat.set_offload_gpu_id(sub, handle.execution_device.index or 0)
        if self._installing:
            getattr(type(sub), compat.ENABLE)(sub, device=handle.execution_device)
            return
        modules = model_components(handle.pipe)
        mine = {name for name, module in modules.items() if id(module) in host.module_ids()}
        back = handle.trace.resident & handle.plan.exclude & mine  # moved to the CPU and back, as in `reinstall`
        handle.trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back}, only=mine)
        getattr(type(sub), compat.ENABLE)(sub, device=handle.execution_device)
        self._follow(modules, back, hosts=[host])

    def _free_connected(self, host) -> None:
        """A connected pipeline's `maybe_free_model_hooks` at the end of its part of the call: diffusers' own,
        which re-installs its chain through `_enable_connected`; the combined call goes on."""
        getattr(type(host.pipe), compat.FREE)(host.pipe)

    def _follow(self, modules: dict, back: set, hosts: list | None = None) -> None:
        """Let the trace follow the hooks just installed on `hosts` (default: every chain), and record the
        exclusions put on the device."""
        handle = self.handle
        trace = handle.trace
        names = {id(m): name for name, m in modules.items()}
        if hosts is None:
            trace.sizes = {name: module_bytes(m) for name, m in modules.items()}
            handle._hooked = {name: (m, None) for name, m in modules.items()}
        for host in handle._chains if hosts is None else hosts:
            host.hooks = compat.all_hooks(host.pipe)
            for user_hook in host.hooks:
                model = compat.hooked_model(user_hook)
                name = names[id(model)]
                handle._hooked[name] = (model, compat.hooked_hook(user_hook))
                self._observe(compat.hooked_hook(user_hook), name, names)
            for name in sorted(n for n in handle.plan.exclude if n in modules and id(modules[n]) in host.module_ids()):
                trace.load(name, EXCLUSION_ROUND_TRIP if name in back else None)  # on the device for good

    def _observe(self, hook, name: str, names: dict) -> None:
        """Let the trace follow this accelerate `CpuOffload` hook: the hook object and its class stay
        accelerate's own; only its `pre_forward` is wrapped on the instance. The wrapper holds the trace, never
        the handle or the pipeline."""
        prev = compat.previous_model(hook)
        prev_name = names.get(id(prev)) if prev is not None else None
        original = hook.pre_forward
        trace = self.handle.trace

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
        handle = self.handle
        trace = handle.trace
        for host in handle._chains:
            for user_hook in host.hooks:
                user_hook.offload()
        modules = {name: module for name, (module, _) in handle._hooked.items()}
        for name in sorted(n for n in handle.plan.exclude if n in modules and n in trace.resident):
            module = modules[name]
            module.to("cpu")
            ParkedHook.park(module, name, handle.execution_device, trace)
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
