"""`apply(pipe, plan)`: diffusers' own model CPU offload, driven by a plan, behind a handle that undoes it.

The hooks are installed by diffusers' `enable_model_cpu_offload` itself, run with the plan's sequence and
exclusions shadowed on the instance, so they are exactly the ones diffusers installs for that sequence. Shadowing
`enable_model_cpu_offload` and `maybe_free_model_hooks` on the instance keeps the plan in force when diffusers
re-installs its hooks (at the end of every call, after loading LoRA weights). `AppliedPlan.remove()` deletes every
shadow and hook and puts each module back exactly as it was.

What the handle holds and what holds it, so that dropping the pipeline and the handle frees both: the pipeline
holds the handle (its shadows are the handle's bound methods), the handle holds the pipeline; the registry of
applied plans and the hooks on the modules hold the handle only weakly. Modules shared by several pipelines are
snapshotted once, before the first plan hooks them, and restored when the last plan using them lets go.
"""

from __future__ import annotations

import difflib
import time
import weakref
from dataclasses import dataclass

import accelerate.hooks
import torch
from accelerate.hooks import CpuOffload, remove_hook_from_module

from planner.executor import devices
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN306
from planner.rules.device import device_problems
from planner.trace import EXCLUSION_ROUND_TRIP, Trace
from planner.validate import load_plan

# Instance attributes the handle shadows while it is applied, and diffusers' offload state it overwrites.
SHADOWED = ("model_cpu_offload_seq", "_exclude_from_cpu_offload", "enable_model_cpu_offload",
            "maybe_free_model_hooks")
OFFLOAD_STATE = ("_all_hooks", "_offload_device", "_offload_gpu_id")
# What accelerate's add_hook_to_module / remove_hook_from_module put on (or leave in) a module's `__dict__`:
# removing a hook leaves `forward` behind as an instance attribute, and dispatch_model's wrappers are popped.
HOOK_KEYS = ("forward", "_hf_hook", "_old_forward", *getattr(accelerate.hooks, "_accelerate_added_attributes", ()))
_MISSING = object()
# pipeline -> weak reference to its handle: a value holding its key would keep every pipeline alive for good
_applied: "weakref.WeakKeyDictionary[object, weakref.ref[AppliedPlan]]" = weakref.WeakKeyDictionary()


def applied_to(pipe) -> "AppliedPlan | None":
    """The plan applied to `pipe` now (not removed), or None."""
    ref = _applied.get(pipe)
    return ref() if ref is not None else None


@dataclass(frozen=True)
class _PipeState:
    """The pipeline's own instance attributes that `apply` changes, as they were."""

    attributes: dict

    @classmethod
    def take(cls, pipe) -> "_PipeState":
        return cls({name: pipe.__dict__.get(name, _MISSING) for name in SHADOWED + OFFLOAD_STATE})

    def restore(self, pipe) -> None:
        for name, value in self.attributes.items():
            if value is _MISSING:
                pipe.__dict__.pop(name, None)
            else:
                pipe.__dict__[name] = value


class _Host:
    """A pipeline object the plan puts shadows on: the pipeline itself, or for a combined pipeline each connected
    pipeline (`prior_pipe`, `decoder_pipe`) whose chain diffusers installs. `state` is how its attributes were;
    `hooks` its `_all_hooks` as the last install left it (chains only)."""

    def __init__(self, pipe, shadows: dict):
        self.pipe, self.shadows = pipe, shadows
        self.state = _PipeState.take(pipe)
        self.hooks: list = []
        self.chain = "model_cpu_offload_seq" in shadows

    def in_force(self) -> bool:
        """The shadows are the plan's and (for a chain) diffusers' hook list is the one the last install left."""
        attributes = self.pipe.__dict__
        if any(attributes.get(k, _MISSING) is not v for k, v in self.shadows.items()):
            return False
        return not self.chain or attributes.get("_all_hooks") is self.hooks

    def module_ids(self) -> set[int]:
        return {id(m) for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)}


class _Pristine:
    """A component module as it was before any plan hooked it: the accelerate attributes of each submodule (by
    identity) and the device of its weights. One per module, shared by every plan hooking it (pipelines can share
    components); `users` are those plans, and the last one to let go puts the module back."""

    def __init__(self, module):
        self.module = module
        self.device = _device_of(module)
        self.attributes = [(sub, {k: sub.__dict__[k] for k in HOOK_KEYS if k in sub.__dict__})
                           for sub in module.modules()]
        self.users: weakref.WeakSet[AppliedPlan] = weakref.WeakSet()

    def restore(self) -> None:
        # accelerate's own removal first: it detaches any hook properly (a sequential offload hook puts the
        # weights back from its CPU copy); then its leftovers go, and what was there before comes back.
        remove_hook_from_module(self.module, recurse=True)
        for sub, attributes in self.attributes:
            for key in HOOK_KEYS:
                if key in attributes:
                    sub.__dict__[key] = attributes[key]
                else:
                    sub.__dict__.pop(key, None)
        if self.device is not None and _device_of(self.module) != self.device:
            self.module.to(self.device)


# id(module) -> its snapshot; the snapshot holds the module, so the id stays its own while the entry lives
_pristine: "weakref.WeakValueDictionary[int, _Pristine]" = weakref.WeakValueDictionary()


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
    previous = applied_to(pipe)
    if previous is not None:
        previous.remove()
    handle = AppliedPlan(pipe, plan, target, dry_run)
    try:
        handle._install()
    except BaseException:
        handle._let_go()
        if previous is not None:
            apply(pipe, previous.plan, previous.dry_run)
        raise
    _applied[pipe] = weakref.ref(handle)
    return handle


class AppliedPlan:
    """A plan applied to a pipeline: `trace` holds the transfers so far, `remove()` (or leaving a `with` block)
    undoes everything `apply` did. Calling the handle calls the pipeline and makes sure the call ends with every
    component but the exclusions offloaded, whether the call returns, raises (KeyboardInterrupt included), or
    comes from a pipeline that never frees its hooks; the handle times each call it makes.

    `state` says where the plan stands, and each call through the handle acts on it first:

    - "in force": the plan's hooks are on every component.
    - "displaced": its hooks were removed or replaced by model offload hooks behind its back
      (`pipe.remove_all_hooks()`, a `_hf_hook` replaced by a `CpuOffload`, another plan on a pipeline sharing
      components, `type(pipe).enable_model_cpu_offload(pipe)`, a LoRA load that failed half-way), or a
      component was swapped (`pipe.unet = other_unet`). The next call through the handle re-installs the plan
      first (the swapped-out module is given back as it was; the new one is hooked). A plain `pipe()` call runs
      as the pipeline is and re-installs the plan when it ends, as diffusers does with its own offload.
    - "blocked": another kind of offload was put on a component after `apply` (`enable_sequential_cpu_offload`,
      group offloading, any other accelerate hook). The plan never replaces it silently: calls through the
      handle raise `PlanError` (PLN302) saying what was found, and a plain call's end leaves it in place;
      `remove()` takes it off with the plan (accelerate's hooks; group offloading has its own switch).
    - "removed": `remove()` was called or the plan was replaced; calling raises RuntimeError.

    `active` is True only "in force": a handle never reports itself active while its hooks are not in place.
    """

    def __init__(self, pipe, plan: Plan, target: torch.device, dry_run: bool):
        self.pipe, self.plan, self.target, self.dry_run = pipe, plan, target, dry_run
        self.execution_device = torch.device("cpu") if dry_run else target
        self.trace = Trace(device=str(target))
        self.skipped = tuple(n for n in (*plan.sequence, *sorted(plan.exclude))
                             if pipe.components.get(n, _MISSING) is None)
        self._removed = False
        self._ending = False
        self._blocked = False  # the last end of a call found another kind of offload and left it in place
        self._records: dict[int, _Pristine] = {}  # id(module) -> snapshot, for every module this plan hooked
        self._hooked: dict = {}  # component name -> (module, its CpuOffload hook or None when excluded)
        self._installing = False  # a whole install runs: connected pipelines' installs are part of it
        top = {"enable_model_cpu_offload": self._enable, "maybe_free_model_hooks": self._maybe_free}
        if plan.pipes:  # a combined pipeline: its override hooks each connected pipeline with a chain of its own
            self._hosts = [_Host(pipe, top)]
            for attribute, names in plan.chains:
                self._hosts.append(self._connected_host(getattr(pipe, attribute), names))
        else:
            self._hosts = [_Host(pipe, {"model_cpu_offload_seq": plan.offload_seq,
                                        "_exclude_from_cpu_offload": sorted(plan.exclude), **top})]
        self._chains = [host for host in self._hosts if "model_cpu_offload_seq" in host.shadows]

    # -- the user's side ------------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self._removed:
            raise RuntimeError("this plan was removed; apply it again to call through it")
        self._ensure_in_force()
        trace = self.trace
        call = trace.call
        trace.started = time.perf_counter()  # the handle times the whole call
        try:
            output = self.pipe(*args, **kwargs)
        except BaseException as failure:
            self._close(call, failure)
            raise
        self._close(call)
        return output

    @property
    def state(self) -> str:
        """"in force", "displaced", "blocked" or "removed" (see the class docstring)."""
        if self._removed:
            return "removed"
        if self._conflict() is not None:
            return "blocked"
        return "in force" if self._in_force() else "displaced"

    @property
    def active(self) -> bool:
        return self.state == "in force"

    def remove(self) -> None:
        """Remove every hook and shadow, and put each module back exactly as it was before `apply` (its device
        and accelerate's attributes on every submodule). A module shared with a pipeline whose plan is still
        applied stays with that plan, which gets its hooks back at once."""
        if self._removed:
            return
        self.trace.offload_all()
        self._let_go()

    def __enter__(self) -> "AppliedPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = self.state
        if state == "in force" and self.dry_run:
            state = "dry run"
        return f"<AppliedPlan {self.plan.offload_seq} on {self.target} ({state})>"

    # -- installing ----------------------------------------------------------------------------------------
    def _install(self) -> None:
        self._reinstall()

    def _enable(self, gpu_id=None, device=None) -> None:
        """Stands in for `pipe.enable_model_cpu_offload` while the plan is applied: diffusers calls it at the
        end of every call and after loading LoRA weights; the plan's device wins over any argument."""
        self._reinstall()

    def _maybe_free(self) -> None:
        """Stands in for `pipe.maybe_free_model_hooks`: diffusers' own (which resets stateful caches and
        re-installs through `_enable`), and the call is over for the trace. Where diffusers would skip the
        re-install (no hooks at all), it re-installs anyway, so that a call always ends with only the
        exclusions on the device."""
        self._ending = True
        try:
            type(self.pipe).maybe_free_model_hooks(self.pipe)
            if self._ending:
                self._reinstall()
        finally:
            self._ending = False

    def _reinstall(self) -> None:
        """Put the plan's hooks on the pipeline as it is now; at the end of a call, close the call in the trace
        (even when the re-install fails or is refused)."""
        ending, self._ending = self._ending, False
        back = self.trace.resident & self.plan.exclude  # diffusers moves them to the CPU and back: a round trip
        self.trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back})
        try:
            modules = self._hook(ending)
        finally:
            if ending:
                self.trace.end_call(time.perf_counter())
        if modules is not None:
            self._follow(modules, back)

    def _hook(self, ending: bool) -> dict | None:
        """diffusers' own `enable_model_cpu_offload` under the plan's shadows; returns the model components. At
        the end of a call that finds another kind of offload on the pipeline, nothing changes and None is
        returned: the plan never replaces it silently (the handle is "blocked")."""
        pipe = self.pipe
        if ending and not self._in_force() and self._conflict() is not None:
            self._blocked = True
            return None
        for host in self._hosts:  # re-asserted: a user's assignment must not change the plan
            host.pipe.__dict__.update(host.shadows)
        modules = _modules(pipe)
        self._track(modules)
        if not self.plan.pipes:
            # diffusers computes `gpu_id or device.index or pipe._offload_gpu_id`: an index of 0 would fall through
            pipe._offload_gpu_id = self.execution_device.index or 0
        self._installing = True
        try:
            type(pipe).enable_model_cpu_offload(pipe, device=self.execution_device)
        except ValueError:
            if ending and self._conflict() is not None:  # diffusers refuses: group offloading, found deeper
                self._blocked = True
                return None
            raise
        finally:
            self._installing = False
        self._blocked = False
        return modules

    def _connected_host(self, sub, names: tuple[str, ...]) -> "_Host":
        """The shadows of a connected pipeline `sub` (`prior_pipe`) whose chain holds the plan's `names` (the
        combined pipeline's names): its own names for them, its exclusions, and its two methods routed here."""
        own = {id(module): name for name, module in sub.components.items() if isinstance(module, torch.nn.Module)}
        combined = _modules(self.pipe)
        local = [own[id(combined[name])] for name in names if name in combined]
        excluded = sorted(own[id(combined[n])] for n in self.plan.exclude if n in combined and id(combined[n]) in own)
        host = _Host(sub, {"model_cpu_offload_seq": "->".join(local), "_exclude_from_cpu_offload": excluded})
        host.shadows["enable_model_cpu_offload"] = lambda gpu_id=None, device=None: self._enable_connected(host)
        host.shadows["maybe_free_model_hooks"] = lambda: self._free_connected(host)
        return host

    def _enable_connected(self, host: "_Host") -> None:
        """A connected pipeline's `enable_model_cpu_offload`: diffusers' own with the plan's device, as part of a
        whole install, or on its own when the connected pipeline's call ends (its chain is re-installed alone)."""
        sub = host.pipe
        sub._offload_gpu_id = self.execution_device.index or 0
        if self._installing:
            type(sub).enable_model_cpu_offload(sub, device=self.execution_device)
            return
        modules = _modules(self.pipe)
        mine = {name for name, module in modules.items() if id(module) in host.module_ids()}
        back = self.trace.resident & self.plan.exclude & mine  # moved to the CPU and back, as in `_reinstall`
        self.trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back}, only=mine)
        type(sub).enable_model_cpu_offload(sub, device=self.execution_device)
        self._follow(modules, back, hosts=[host])

    def _free_connected(self, host: "_Host") -> None:
        """A connected pipeline's `maybe_free_model_hooks` at the end of its part of the call: diffusers' own,
        which re-installs its chain through `_enable_connected`; the combined call goes on."""
        type(host.pipe).maybe_free_model_hooks(host.pipe)

    def _follow(self, modules: dict, back: set, hosts: list | None = None) -> None:
        """Let the trace follow the hooks just installed on `hosts` (default: every chain), and record the
        exclusions put on the device."""
        trace = self.trace
        names = {id(m): name for name, m in modules.items()}
        if hosts is None:
            trace.sizes = {name: _bytes(m) for name, m in modules.items()}
            self._hooked = {name: (m, None) for name, m in modules.items()}
        for host in self._chains if hosts is None else hosts:
            host.hooks = host.pipe.__dict__.get("_all_hooks", [])
            for user_hook in host.hooks:
                name = names[id(user_hook.model)]
                self._hooked[name] = (user_hook.model, user_hook.hook)
                self._observe(user_hook.hook, name, names)
            for name in sorted(n for n in self.plan.exclude if n in modules and id(modules[n]) in host.module_ids()):
                trace.load(name, EXCLUSION_ROUND_TRIP if name in back else None)  # on the device for good

    def _track(self, modules: dict) -> None:
        """Snapshot each module before this plan first hooks it; give back the modules swapped out of the
        pipeline since the last install."""
        current = {id(m): m for m in modules.values()}
        for key in [k for k in self._records if k not in current]:
            self._release(self._records.pop(key))
        for key, module in current.items():
            if key not in self._records:
                record = _pristine.get(key)
                if record is None or record.module is not module:
                    record = _pristine[key] = _Pristine(module)
                record.users.add(self)
                self._records[key] = record

    def _observe(self, hook, name: str, names: dict) -> None:
        """Let the trace follow this accelerate `CpuOffload` hook: the hook object and its class stay
        accelerate's own; only its `pre_forward` is wrapped on the instance. The wrapper holds the trace, never
        the handle or the pipeline."""
        prev = hook.prev_module_hook
        prev_name = names.get(id(prev.model)) if prev is not None else None
        original = hook.pre_forward
        trace = self.trace

        def pre_forward(module, *args, **kwargs):
            trace.begin(time.perf_counter())  # a plain pipe() call is timed from its first hook firing
            if prev_name is not None:
                trace.offload(prev_name)
            trace.load(name)
            return original(module, *args, **kwargs)

        hook.pre_forward = pre_forward
        hook._planner_owner = weakref.ref(self)

    # -- keeping the plan in force -------------------------------------------------------------------------
    def _in_force(self) -> bool:
        """Cheap (runs before every call): the shadows, diffusers' hook list and each component's hook are the
        ones the last install left, and no component was swapped or got group offloading on top."""
        pipe = self.pipe
        if self._blocked or not all(host.in_force() for host in self._hosts):
            return False
        modules = _modules(pipe)
        if modules.keys() != self._hooked.keys():
            return False
        for name, module in modules.items():
            installed, hook = self._hooked[name]
            if module is not installed or (hook is not None and module.__dict__.get("_hf_hook") is not hook):
                return False
            if _group_hooks_near_the_top(module):
                return False
        return True

    def _conflict(self) -> Problem | None:
        """Another kind of offload on the pipeline (walks every submodule: only when `_in_force` says no)."""
        pipe = self.pipe
        group = getattr(pipe, "_maybe_raise_error_if_group_offload_active", None)
        if group and group(raise_error=False):
            return self._problem("group offloading was enabled on a component after the plan was applied",
                                 "disable it, or call applied.remove() first")
        for name, module in _modules(pipe).items():
            for sub in module.modules():
                hook = sub.__dict__.get("_hf_hook")
                if hook is not None and not isinstance(hook, CpuOffload):
                    return self._problem(f"{type(hook).__name__} (sequential CPU offload or another accelerate "
                                         f"hook) was put on {name!r} after the plan was applied",
                                         "call applied.remove() first to keep it, or pipe.remove_all_hooks() to "
                                         "let the next call through the handle re-install the plan")
        return None

    def _ensure_in_force(self) -> None:
        if self._in_force():
            return
        problem = self._conflict()
        if problem is not None:
            raise PlanError([problem])
        self._reinstall()

    def _close(self, call: int, failure: BaseException | None = None) -> None:
        """End call `call` if the pipeline did not (it raised, or it never frees its hooks). A failure while
        ending is noted on the call's own exception, which stays the one raised."""
        if self.trace.call != call:
            return
        try:
            self._maybe_free()
        except Exception as exc:
            if failure is None:
                raise
            if hasattr(failure, "add_note"):  # Python >= 3.11
                failure.add_note(f"offload-planner could not end the call: {type(exc).__name__}: {exc}")

    def _let_go(self) -> None:
        """Undo `apply`: give every module back (restored when no other plan uses it), restore the pipeline's
        attributes, unregister, and re-install the plans that shared modules with this one."""
        self._removed = True
        others = set()
        for record in self._records.values():
            self._release(record)
            others.update(record.users)
        self._records.clear()
        for host in reversed(self._hosts):
            host.state.restore(host.pipe)
        if applied_to(self.pipe) is self:
            del _applied[self.pipe]
        for other in others:
            if not other._removed and not other._in_force() and other._conflict() is None:
                other._reinstall()

    def _release(self, record: _Pristine) -> None:
        record.users.discard(self)
        if not record.users:
            record.restore()
            if _pristine.get(id(record.module)) is record:
                del _pristine[id(record.module)]

    def _problem(self, message: str, fix: str) -> Problem:
        return self.plan.problem("device", "PLN302", message, fix)


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
    problems = _connected_problems(pipe, plan)
    for key, names in (("components", plan.sequence), ("exclude", sorted(plan.exclude)),
                       ("own_hook", sorted(plan.own_hook))):
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


def connected_pipes(pipe) -> dict:
    """The connected pipelines (attribute -> pipeline) that `pipe`'s own `enable_model_cpu_offload` hooks one by
    one, each with its own chain: combined classes (`_load_connected_pipes`) that override the method (in
    diffusers 0.42: the Kandinsky 2.2 img2img, Wuerstchen and Stable Cascade combined classes). Empty for any other
    pipeline, combined classes that chain their own sequence included."""
    from diffusers import DiffusionPipeline

    cls = type(pipe)
    if not getattr(cls, "_load_connected_pipes", False) or \
            cls.enable_model_cpu_offload is DiffusionPipeline.enable_model_cpu_offload:
        return {}
    return {name: value for name, value in vars(pipe).items() if isinstance(value, DiffusionPipeline)}


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
    modules = _modules(pipe)
    owner = {id(m): attribute for attribute, sub in connected.items() for m in _modules(sub).values()}
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
    mine = applied_to(pipe)
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


def _group_hooks_near_the_top(module) -> bool:
    """A cheap sign of diffusers' group offloading: its block-level hooks sit on the module or its direct children
    (leaf-level ones on leaves, direct children included in diffusers' models). The end of a call checks fully."""
    for sub in (module, *module.children()):
        registry = sub.__dict__.get("_diffusers_hook")
        if registry is not None and registry.get_hook("group_offloading") is not None:
            return True
    return False


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
