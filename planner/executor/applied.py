"""`apply(pipe, plan)`: a plan put in force on a diffusers pipeline, behind a handle that undoes it.

The handle (`AppliedPlan`) owns the lifecycle: it checks everything before anything changes, snapshots each module
before the first plan hooks it, keeps the registry of applied plans, holds the shadows that keep a plan in force
(diffusers re-installs its offload at the end of every call and after loading LoRA weights: `enable_model_cpu_offload`
and `maybe_free_model_hooks` are shadowed on the instance and routed here), says where the plan stands (in force,
displaced, blocked, removed), and puts every module back exactly on `remove()`. What is installed depends on the
plan's policy, and lives in one installer per policy:

- `chain` (planner.executor.chain): diffusers' own `enable_model_cpu_offload`, run under the plan's shadows, so the
  hooks are exactly diffusers' for that sequence;
- `budget` (planner.executor.budget): our own hooks, which carry out the core's decision (`planner.budget.decide`,
  asked once here before anything changes) on whole components or, with `granularity: block`, block by block.

The installer is chosen by (policy, granularity) (`installer.installer_for`) and speaks one protocol with the handle
(`installer.Installer`).

What the handle holds and what holds it, so that dropping the pipeline and the handle frees both: the pipeline
holds the handle (its shadows are the handle's bound methods), the handle holds the pipeline; the registry of
applied plans and the hooks on the modules hold the handle only weakly (or not at all). Modules shared by several
pipelines are snapshotted once, before the first plan hooks them, and restored when the last plan using them lets
go. Every private diffusers and accelerate attribute is read through `planner.executor.compat`.
"""

from __future__ import annotations

import time
import weakref

import torch
from accelerate.hooks import remove_hook_from_module

from planner.budget import decide
from planner.budget.problems import Asker
from planner.executor import compat, devices
from planner.executor.budget import BlockInstaller, ComponentInstaller, block_pieces, block_sizes, budget_for
from planner.executor.chain import ChainInstaller
from planner.executor.checks import group_hooks_near_the_top, is_model_offload, preflight
from planner.executor.installer import InstallContext, Installer
from planner.executor.modules import device_of, model_components, module_bytes
from planner.executor.shadows import MISSING as _MISSING
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN302
from planner.rules.device import device_problems
from planner.trace import Trace
from planner.units import human
from planner.validate import load_plan

# Kept under their old names: tests and tools read them here.
SHADOWED, OFFLOAD_STATE, HOOK_KEYS = compat.SHADOWED, compat.OFFLOAD_STATE, compat.HOOK_KEYS
# pipeline -> weak reference to its handle: a value holding its key would keep every pipeline alive for good
_applied: "weakref.WeakKeyDictionary[object, weakref.ref[AppliedPlan]]" = weakref.WeakKeyDictionary()


def applied_to(pipe) -> "AppliedPlan | None":
    """The plan applied to `pipe` now (not removed), or None."""
    ref = _applied.get(pipe)
    return ref() if ref is not None else None


class Snapshot:
    """A component module as it was before any plan hooked it: the accelerate attributes of each submodule (by
    identity) and the device of its weights. One per module, shared by every plan hooking it (pipelines can share
    components); `users` are those plans, and the last one to let go puts the module back."""

    def __init__(self, module):
        self.module = module
        self.device = device_of(module)
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
        if self.device is not None and device_of(self.module) != self.device:
            self.module.to(self.device)


# id(module) -> its snapshot; the snapshot holds the module, so the id stays its own while the entry lives
_pristine: "weakref.WeakValueDictionary[int, Snapshot]" = weakref.WeakValueDictionary()


def apply(pipe, plan: Plan | str | None = None, dry_run: bool = False, *, budget: str | int | None = None,
          steps: int | None = None, calls: int | None = None, at=None) -> "AppliedPlan":
    """Install `plan` on the diffusers pipeline `pipe` and return the handle that undoes it.

    Without a plan, the plan `planner init` writes for the pipeline's class (diffusers' chain, exactly); with
    `budget` (8GiB, bytes; `steps`: the denoising steps a block schedule is planned for) the budget policy, whole
    components when they fit and block by block when they do not (`planner.executor.oneline`). The handle's
    `plan.to_yaml()` prints the plan used.

    Everything is checked before anything changes; a bad combination raises `PlanError` (located at the plan)
    and leaves `pipe` untouched, and a failure part-way rolls back to the state before the call. With
    `dry_run=True` the same hooks run with the CPU as execution device, and the trace records what the plan's
    device would have received. A plan already applied to `pipe` is replaced. `calls` (budget policy) is how many
    pipeline calls the schedule is planned for: the first `calls` calls follow `planner.budget.components.optimal` for
    exactly that many calls (what `planner simulate --calls` prints); later calls, or all of them when it is
    None, follow a schedule planned for `budget.HORIZON` calls and then its steady cycle. At `granularity: block`
    the schedule is the steady cycle of `planner.budget.solve.solve` and `calls` is not used. `at(key, rule, message,
    fix)` locates the budget policy's problems (default `plan.problem`; `planner apply` points at its flags).
    """
    compat.require()
    if plan is None:
        from planner.executor.oneline import plan_for

        plan = plan_for(pipe, budget, steps)
    elif budget is not None or steps is not None:
        raise TypeError("apply(pipe, plan, budget=..., steps=...): write budget and steps in the plan, or pass no "
                        "plan: apply(pipe, budget=...) builds it")
    elif not isinstance(plan, Plan):
        plan = load_plan(plan)
    problems = [plan.problem(*found) for found in device_problems(plan.device, plan.gpu_id)]
    if problems:  # a Plan built by hand skipped the rules
        raise PlanError(problems)
    target = devices.target(plan)
    problems = preflight(pipe, plan, target, dry_run, applied=applied_to(pipe) is not None)
    if problems:
        raise PlanError(problems)
    decision = asker = None
    if getattr(plan, "policy", "chain") == "budget":
        budget = budget_for(plan, target, dry_run, at)  # raises PlanError (PLN307) when there is none to be had
        asker = Asker.applying(plan, at)
        sizes = block_sizes(pipe) if plan.granularity == "block" else \
            {name: module_bytes(module) for name, module in model_components(pipe).items()}
        # the schedule and the pin choice; PLN307 or PLN411 before anything changes
        decision = decide.decide(plan, sizes, budget, asker, calls=calls, device=str(target),
                                 pieces=block_pieces(pipe) if plan.granularity == "block" else None)
    previous = applied_to(pipe)
    if previous is not None:
        previous.remove()
    try:
        handle = AppliedPlan(pipe, plan, target, dry_run, decision=decision, asker=asker, calls=calls)
    except BaseException:
        if previous is not None:
            apply(pipe, previous.plan, previous.dry_run, calls=previous.calls)
        raise
    _applied[pipe] = weakref.ref(handle)
    return handle


def installer_for(context: InstallContext, decision=None, asker=None, calls: int | None = None) -> Installer:
    """The installer of the plan's (policy, granularity): diffusers' chain, or the budget policy's `Decision`
    (`planner.budget.decide`) carried out on whole components (planned for `calls` calls) or block by block;
    `asker` words the problems a running policy meets."""
    kinds = {("chain", "component"): lambda: ChainInstaller(context),
             ("budget", "component"): lambda: ComponentInstaller(context, decision, asker, calls),
             ("budget", "block"): lambda: BlockInstaller(context, decision, asker)}
    plan = context.plan
    return kinds[(plan.policy, plan.granularity if plan.policy == "budget" else "component")]()


class AppliedPlan:
    """A plan applied to a pipeline: `trace` holds the transfers so far, `remove()` (or leaving a `with` block)
    undoes everything `apply` did. Calling the handle calls the pipeline and makes sure the call ends as the
    policy says (the chain: every component but the exclusions offloaded; the budget policy: what the schedule
    keeps stays), whether the call returns, raises (KeyboardInterrupt included), or comes from a pipeline that
    never frees its hooks; the handle times each call it makes. `offload_all()` frees the device now.

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
    `policy` is the plan's; `budget` the bytes the budget policy keeps within (None for the chain) and `budgets`
    the same per device; `schedule` the `planner.budget.components.Schedule` it follows (None for the chain).
    """

    def __init__(self, pipe, plan: Plan, target: torch.device, dry_run: bool, decision=None, asker=None,
                 calls: int | None = None):
        self.pipe, self.plan, self.target, self.dry_run, self.calls = pipe, plan, target, dry_run, calls
        self.execution_device = torch.device("cpu") if dry_run else target
        self.trace = Trace(device=str(target))
        self.skipped = tuple(n for n in (*plan.sequence, *sorted(plan.exclude))
                             if pipe.components.get(n, _MISSING) is None)
        self._removed = False
        self._ending = False
        self._blocked = False  # the last end of a call found another kind of offload and left it in place
        self._records: dict[int, Snapshot] = {}  # id(module) -> snapshot, for every module this plan hooked
        context = InstallContext(pipe, plan, self.trace, target, self.execution_device, dry_run, self._enable,
                                 self._maybe_free)
        self._installer = installer_for(context, decision, asker, calls)
        self._hosts = self._installer.shadows()
        try:  # a failure part-way rolls back to the state before
            self._reinstall()
        except BaseException:
            self._let_go()
            raise

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

    @property
    def policy(self) -> str:
        return self._installer.policy

    @property
    def budget(self) -> int | None:
        return self._installer.budget

    @property
    def budgets(self) -> dict[str, int]:
        """The budget per device (one device today), as str(device) -> bytes; empty for the chain."""
        return {} if self.budget is None else {str(self.target): self.budget}

    @property
    def schedule(self):
        return self._installer.schedule

    @property
    def host(self):
        """Budget policy: the host's side (`budget.HostUse`: host bytes held, pinned bytes, the pin note); None for
        the chain, which pins nothing of its own (accelerate's hooks move modules with `.to()`)."""
        return self._installer.host

    @property
    def copied_back(self) -> dict[int, int] | None:
        """Budget policy: bytes copied from the device back to the host, per call (weights changed in place while
        resident, or kept without a host copy); None for the chain, whose every offload copies."""
        return self._installer.copied_back

    def offload_all(self) -> None:
        """Free the device now: every component the plan put there (the exclusions too) goes back to the host;
        each comes back when it next runs. The trace labels these transfers "offload_all"."""
        if self._removed:
            raise RuntimeError("this plan was removed; nothing of it is on the device")
        self._installer.offload_all()
        devices.empty_cache(self.execution_device)

    def remove(self) -> None:
        """Remove every hook and shadow, and put each module back exactly as it was before `apply` (its device
        and accelerate's attributes on every submodule). A module shared with a pipeline whose plan is still
        applied stays with that plan, which gets its hooks back at once."""
        if self._removed:
            return
        self._installer.release()  # the budget policy's device copies dropped, changed weights copied back
        self.trace.offload_all()
        self._let_go()

    def resume(self) -> None:
        """Re-install the plan now when it is "displaced" (its hooks were taken by another plan on a pipeline that
        shares components, or removed behind its back); nothing otherwise. The next call through the handle
        does the same by itself."""
        if self.state == "displaced":
            self._reinstall()

    def __enter__(self) -> "AppliedPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = self.state
        if state == "in force" and self.dry_run:
            state = "dry run"
        policy = "" if self.budget is None else f", budget {human(self.budget)}"
        return f"<AppliedPlan {self.plan.offload_seq} on {self.target}{policy} ({state})>"

    # -- installing ----------------------------------------------------------------------------------------
    def _enable(self, gpu_id=None, device=None) -> None:
        """Stands in for `pipe.enable_model_cpu_offload` while the plan is applied: diffusers calls it at the
        end of every call and after loading LoRA weights; the plan's device wins over any argument."""
        self._reinstall()

    def _maybe_free(self) -> None:
        """Stands in for `pipe.maybe_free_model_hooks`: diffusers' own (which resets stateful caches and, for a
        chain, re-installs through `_enable`), and the call is over for the trace. Where diffusers would skip the
        re-install (no hooks at all), it re-installs anyway, so that a call always ends as the policy says."""
        self._ending = True
        try:
            getattr(type(self.pipe), compat.FREE)(self.pipe)
            if self._ending:
                self._reinstall()
        finally:
            self._ending = False

    def _reinstall(self) -> None:
        """Put the plan's hooks on the pipeline as it is now; at the end of a call, close the call in the trace
        first (so it is closed even when the re-install fails or is refused)."""
        ending, self._ending = self._ending, False
        if ending:
            self._installer.end_call(time.perf_counter())
        modules = self._prepare(ending)  # snapshots each new module before an installer moves its weights
        if modules is None:
            return
        try:
            self._installer.install(modules, ending)
        except ValueError:
            if ending and self._conflict() is not None:  # diffusers refuses: group offloading, found deeper
                self._blocked = True
                return
            raise
        self._blocked = False

    def _prepare(self, ending: bool) -> dict | None:
        """What every install starts with: None when the end of a call finds another kind of offload (the plan
        never replaces it silently: the handle is "blocked"); else the shadows re-asserted, each module snapshot
        before this plan first hooks it, and the model components returned."""
        if ending and not self._in_force() and self._conflict() is not None:
            self._blocked = True
            return None
        for host in self._hosts:  # re-asserted: a user's assignment must not change the plan
            host.pipe.__dict__.update(host.shadows)
        modules = model_components(self.pipe)
        self._track(modules)
        return modules

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
                    record = _pristine[key] = Snapshot(module)
                record.users.add(self)
                self._records[key] = record

    # -- keeping the plan in force -------------------------------------------------------------------------
    def _in_force(self) -> bool:
        """Cheap (runs before every call): the shadows, diffusers' hook list and each component's hook are the
        ones the last install left, and no component was swapped or got group offloading on top."""
        pipe = self.pipe
        if self._blocked or not all(host.in_force() for host in self._hosts):
            return False
        modules = model_components(pipe)
        hooked = self._installer.hooked
        if modules.keys() != hooked.keys():
            return False
        for name, module in modules.items():
            installed, hook = hooked[name]
            if module is not installed or (hook is not None and compat.hook_of(module) is not hook):
                return False
            if group_hooks_near_the_top(module):
                return False
        return True

    def _conflict(self) -> Problem | None:
        """Another kind of offload on the pipeline (walks every submodule: only when `_in_force` says no)."""
        pipe = self.pipe
        if compat.pipe_group_offloaded(pipe):
            return self._problem("group offloading was enabled on a component after the plan was applied",
                                 "disable it, or call applied.remove() first")
        for name, module in model_components(pipe).items():
            for sub in module.modules():
                hook = compat.hook_of(sub)
                if hook is not None and not is_model_offload(hook):
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
        """Undo `apply`: take the policy's state off the device, give every module back (restored when no other
        plan uses it), restore the pipeline's attributes, unregister, and re-install the plans that shared
        modules with this one."""
        self._removed = True
        self._installer.release()
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
            other.resume()

    def _release(self, record: Snapshot) -> None:
        record.users.discard(self)
        if not record.users:
            record.restore()
            if _pristine.get(id(record.module)) is record:
                del _pristine[id(record.module)]

    def _problem(self, message: str, fix: str) -> Problem:
        return self.plan.problem("device", PLN302, message, fix)
