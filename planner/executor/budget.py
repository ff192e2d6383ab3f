"""The budget installer: keep what fits within the budget on the device, and move the fewest bytes.

Every model component gets a hook of ours (`BudgetHook`, an accelerate `ModelHook` put on with
`add_hook_to_module`). Accelerate's hook slot, not diffusers' `HookRegistry`, because diffusers reads that slot:
a pipeline takes its execution device from `module._hf_hook.execution_device`, and `vae.decode`/`encode` reach an
offload hook only through `_hf_hook.pre_forward` (`apply_forward_hook`); a registry hook would see neither, and
the dependency floors' diffusers has no registry at all. Each hook has a frozen config (`BudgetHookConfig`: its
component and execution device) apart from its action, and is found by its class, never by a tag.

Before each use the hook asks the `Residency`, which follows the schedule of `planner.budget.components.optimal` for the
plan's call order (`plan.call_order`), the components' bytes as the trace counts them, and the budget: the
schedule's evictions, then the load of the used component. Reality may differ (a component the schedule did not
predict runs, the pipeline skips a use, `offload_all()` emptied the device): then the residency stays within the
budget by itself, evicting the resident component used again furthest in the future, least recently used among
ties, and the trace labels every transfer the schedule did not plan (`Event.reason`); an unpredicted use of a
planned component also warns, once.

Weights move by swapping each tensor's `.data` (the Parameter objects stay, as peft and optimisers hold them). With
`keep_host_copy` (the default) the host tensor is kept while the device copy is in use, so an eviction drops the
device copy and copies nothing back, unless the tensor changed while resident: its version counter moved (an
in-place op on the parameter), its data was replaced (`weight.data = ...`), or its bits differ (an integer
checksum of its words, computed on the device at load and at eviction: peft's `fuse_lora` adds to `weight.data`,
which no version counter sees). A changed tensor is copied back into its host copy, never lost.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace

import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from accelerate.utils import send_to_device

from planner.budget import components as schedules
from planner.budget import host
from planner.executor import compat, devices
from planner.executor.chain import AFTER_OFFLOAD_ALL, OFFLOAD_ALL
from planner.executor.components import connected_pipes, model_components, module_bytes
from planner.executor.shadows import Host
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN307, PLN411
from planner.units import human

HORIZON = 4  # calls a schedule is planned for when the caller does not say how many
DEFAULT_RESERVE = 2 << 30  # headroom for activations when the budget comes from the free memory and no reserve
# Why a transfer happened, when it is not the schedule's (Event.reason); chain.OFFLOAD_ALL and AFTER_OFFLOAD_ALL too.
UNPREDICTED = "unpredicted use"  # a planned component ran where the schedule did not expect it
OFF_SCHEDULE = "off schedule"  # an expected use found the device otherwise than the schedule planned
OWN_HOOK = "own hook"  # a component outside the plan: loaded when it runs, evicted when the call ends
SWAPPED = "component swapped"  # the pipeline's component was replaced: the old module leaves the device
MOVED = "moved outside the plan"  # someone else moved the weights the residency had put on the device
COPIED_BACK = "changed on the device: copied back"
RULE = PLN307  # the budget policy cannot run within its budget here


# -- the budget ------------------------------------------------------------------------------------------------
def budget_for(plan: Plan, target: torch.device, dry_run: bool, at=None) -> int:
    """The plan's `budget`, else the device's free memory now minus `reserve` (DEFAULT_RESERVE when the plan has
    none). Raises `PlanError` (PLN307) where there is no memory to read: a dry run, a backend that cannot say.
    `at(key, rule, message, fix)` locates the problem (default `plan.problem`; the CLI points at its flags)."""
    if plan.budget is not None:
        return plan.budget
    at = at or plan.problem
    fix = "write `budget: 8GiB` (the bytes of weights that may stay on the device) in the plan, or pass --budget"
    if dry_run:
        raise PlanError([at("policy", RULE, "the budget policy without a budget takes the device's free memory "
                            "minus `reserve`, and a dry run has no device to read it from", fix)])
    free = devices.free_memory(target)
    if free is None:
        raise PlanError([at("policy", RULE, f"{target.type} does not report its free memory, which the budget "
                            "policy without a budget needs", fix)])
    reserve = plan.reserve if plan.reserve is not None else DEFAULT_RESERVE
    return max(free - reserve, 0)


def budget_problems(pipe, plan: Plan, budget: int, at=None) -> list[Problem]:
    """PLN307 when `budget` cannot hold the largest component the policy moves beside the exclusions (which stay
    resident), with the numbers, counted as the trace counts them; `at` as for `budget_for`."""
    at = at or plan.problem
    sizes = {name: module_bytes(module) for name, module in model_components(pipe).items()}
    fixed = sum(size for name, size in sizes.items() if name in plan.exclude)
    moved = [name for name in sizes if name not in plan.exclude]
    largest = max(moved, key=lambda name: (sizes[name], name), default=None)
    needed = fixed + (sizes[largest] if largest is not None else 0)
    if needed <= budget:
        return _pin_problems(plan, sizes, budget, at)
    what = f"component {largest!r} needs {human(sizes[largest])}" if largest else "the exclusions need it all"
    kept = f" beside {human(fixed)} of exclusions, which stay resident" if fixed and largest else ""
    source = "" if plan.budget is not None else " (the device's free memory minus reserve)"
    key = "budget" if plan.budget is not None else "policy"
    return [at(key, RULE, f"a budget of {human(budget)} ({budget} bytes){source} is too small: {what}"
                         f"{kept}", f"raise it to at least {human(needed)} ({needed} bytes)")]


@dataclass(frozen=True)
class HostUse:
    """The host's side of a budget plan: `held` bytes of host copies of what moves, `pinned` bytes of them pinned
    (never above the host's spare memory, `planner.budget.host`), `note` says what was pinned, or why nothing was."""

    held: int
    pinned: int
    note: str

    def to_json(self) -> dict:
        return {"host_bytes": self.held, "pinned_bytes": self.pinned, "note": self.note}


def pin_choice(plan: Plan, planned: schedules.Schedule | None, sizes: dict[str, int]) -> host.Pinning:
    """Which components' host copies `plan.pin` pins within what this host can spare, the most often loaded
    first (loads per call: the schedule's last call; every moved component once when there is no schedule).
    Raises `host.PinError` for `pin: true` beyond it."""
    last = planned.calls if planned is not None else None
    loads = Counter(e.component for e in planned.events if e.event == "load" and e.call == last) if planned else None
    moved = {name: (size, loads.get(name, 0) if loads is not None else 1) for name, size in sizes.items()
             if name not in plan.exclude}
    memory = host.read_host_memory()
    return host.choose_pinned(moved, plan.pin, memory.spare, host=memory)


def pin_problem(plan: Plan, error: host.PinError, at=None) -> Problem:
    """PLN411 for `pin: true` beyond what the host can spare, located at the plan's `pin` (or `at`'s)."""
    return (at or plan.problem)("pin", PLN411, str(error).split(";")[0], "write pin: auto (it pins what the host "
                                "can spare), or raise the container's memory limit")


def _pin_problems(plan: Plan, sizes: dict[str, int], budget: int, at) -> list[Problem]:
    """PLN411 when `pin: true` asks to pin more than the host can spare, on the schedule the plan will follow."""
    if plan.pin != "true" or not plan.keep_host_copy:
        return []
    uses = [name for name in plan.call_order if name in sizes]
    planned = schedules.optimal(uses, sizes, budget, HORIZON, resident=plan.exclude)
    try:
        pin_choice(plan, planned, sizes)
    except host.PinError as error:
        return [pin_problem(plan, error, at)]
    return []


# -- the hook ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetHookConfig:
    """What a budget hook is for: its component's name and the device its inputs go to."""

    component: str
    execution_device: torch.device


class BudgetHook(ModelHook):
    """Before its component runs: `action(component)` makes it resident (the residency's `use`), then the inputs
    go to the execution device. diffusers reads `execution_device` to place a pipeline's own tensors."""

    def __init__(self, config: BudgetHookConfig, action):
        self.config, self.action = config, action

    @property
    def execution_device(self) -> torch.device:
        return self.config.execution_device

    def pre_forward(self, module, *args, **kwargs):
        self.action(self.config.component)
        device = self.config.execution_device
        return send_to_device(args, device), send_to_device(kwargs, device)

    def __repr__(self) -> str:
        return f"BudgetHook({self.config.component!r} on {self.config.execution_device})"


def budget_hook(module) -> BudgetHook | None:
    """The budget hook on `module`, found by its class, or None."""
    hook = compat.hook_of(module)
    return hook if isinstance(hook, BudgetHook) else None


# -- moving one component's weights --------------------------------------------------------------------------------
_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
HOST = torch.device("cpu")


def fingerprint(data: torch.Tensor) -> torch.Tensor | None:
    """An integer checksum of the tensor's bits, computed where it lives (nothing moves): the sum of its words, as
    a 0-d int64 tensor. None when it cannot be read so (the tensor then counts as changed)."""
    word = _WORDS.get(data.element_size())
    if word is None or not data.is_contiguous():
        return None
    try:
        return data.reshape(-1).view(word).sum(dtype=torch.int64)
    except (RuntimeError, TypeError):  # a dtype that cannot be viewed as integers
        return None


@dataclass
class _Kept:
    """A tensor put on the device: its host data (None: no host copy), and how it looked right after the load."""

    tensor: torch.Tensor
    host: torch.Tensor | None
    version: int
    pointer: int
    fingerprint: torch.Tensor | None


class Weights:
    """One component's parameters and buffers (each tensor once), moved by swapping each tensor's data. `pin`
    True pins its kept host copies on a CUDA device (what `pin_choice` chose within the host's spare memory);
    False keeps them pageable."""

    pin: bool = False

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.kept: list[_Kept] = []
        self.pinned: dict[int, torch.Tensor] = {}  # tensors whose host copy `load` pinned, by id

    def unpin(self) -> None:
        """The host copies `load` pinned back in pageable memory (a page-locked buffer is freed once nothing
        holds it): what the plan pinned does not outlive it."""
        for tensor in self.pinned.values():
            if tensor.device == HOST and tensor.data.is_pinned():
                tensor.data = tensor.data.clone()
        self.pinned = {}

    def tensors(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for tensor in itertools.chain(self.module.parameters(), self.module.buffers()):
            seen.setdefault(id(tensor), tensor)
        return list(seen.values())

    def host_tensors(self) -> list[torch.Tensor]:
        """Each tensor's host copy: the one kept while the tensor is on a device, else its data on the host."""
        kept = {id(k.tensor): k.host for k in self.kept if k.host is not None}
        found = [kept.get(id(t), t.data) for t in self.tensors()]
        return [t for t in found if t.device == HOST]

    def home(self) -> None:
        """Every tensor on the host (a module the pipeline had put on a device before the plan came)."""
        for tensor in self.tensors():
            if tensor.device != HOST:
                tensor.data = tensor.data.to(HOST)

    def intact(self) -> bool:
        """The device copies the last load made are still the tensors' data (nobody moved the module since)."""
        return all(k.tensor.data_ptr() == k.pointer for k in (self.kept[:1] + self.kept[-1:]))

    def forget(self) -> None:
        """Drop what the last load kept, leaving the tensors as they are now."""
        self.kept = []

    def load(self, device: torch.device, keep_host: bool) -> None:
        """A device copy of every host tensor (also when `device` is the host: a dry run copies as a device
        would); tensors already on `device` stay as they are, without a host copy. With `pin`, a kept host copy
        of a CUDA device is pinned the first time (it then moves at full bandwidth, and asynchronously: it never
        changes while the copy runs); without host copies nothing is pinned."""
        kept = []
        pin = keep_host and device.type == "cuda" and self.pin
        for tensor in self.tensors():
            data = tensor.data
            if data.device != HOST:
                if data.device != device:
                    tensor.data = data = data.to(device)
                kept.append(_Kept(tensor, None, tensor._version, data.data_ptr(), None))
                continue
            if pin and not data.is_pinned():
                data = data.pin_memory()
                self.pinned[id(tensor)] = tensor
            copy = data.to(device, copy=True, non_blocking=pin)
            tensor.data = copy
            host = data if keep_host else None
            kept.append(_Kept(tensor, host, tensor._version, copy.data_ptr(),
                              fingerprint(copy) if host is not None else None))
        self.kept = kept

    def evict(self, device: torch.device) -> int:
        """Every tensor back on the host; returns the bytes copied back (changed or without a host copy)."""
        kept, self.kept = self.kept, []
        changed = _changed(kept)
        back = 0
        for entry, dirty in zip(kept, changed, strict=True):
            tensor, data = entry.tensor, entry.tensor.data
            if data.data_ptr() != entry.pointer:  # its data was replaced: the new data is the truth
                if data.device == device or data.device != HOST:  # (in a dry run the device is the host)
                    tensor.data = data.to(HOST, copy=True)
                    back += data.nbytes
            elif entry.host is not None and not dirty:
                tensor.data = entry.host
            elif entry.host is not None:
                entry.host.copy_(data)
                tensor.data = entry.host
                back += data.nbytes
            else:
                tensor.data = data.to(HOST, copy=True)
                back += data.nbytes
        for tensor in self.tensors():  # added while resident (a LoRA adapter loaded onto the device copy)
            if tensor.device != HOST:
                back += tensor.nbytes
                tensor.data = tensor.data.to(HOST)
        return back


def _changed(kept: list[_Kept]) -> list[bool]:
    """Per kept tensor: whether it changed since its load (version counter, replaced data, or checksum), checked
    with one device synchronisation for all of them."""
    result = [True] * len(kept)
    indexes, before, after = [], [], []
    for i, entry in enumerate(kept):
        tensor = entry.tensor
        if entry.host is None or entry.fingerprint is None or tensor._version != entry.version \
                or tensor.data_ptr() != entry.pointer:
            continue
        now = fingerprint(tensor.data)
        if now is not None:
            indexes.append(i)
            before.append(entry.fingerprint)
            after.append(now)
    if indexes:
        same = (torch.stack(before) == torch.stack(after)).tolist()
        for i, unchanged in zip(indexes, same, strict=True):
            result[i] = not unchanged
    return result


# -- the course: which schedule a call follows ----------------------------------------------------------------
class Course:
    """The schedule a residency follows: the steps of each planned call and the residency each call starts from.
    Call k follows the schedule's call k while everything went as planned; otherwise (past the planned calls,
    after `offload_all`, after a re-plan) the planned call that starts from the residency there is, the earliest
    after the first (the steady cycle), or none (then the residency's own rule: Belady's)."""

    def __init__(self, schedule: schedules.Schedule | None, fixed: frozenset[str]):
        self.schedule = schedule
        self.calls: dict[int, list[schedules.Step]] = {}
        for step in schedule.steps if schedule else ():
            self.calls.setdefault(step.call, []).append(step)
        self.starts: dict[int, frozenset[str]] = {1: frozenset()}
        for call in range(2, (schedule.calls if schedule else 0) + 1):
            previous = self.calls.get(call - 1)
            self.starts[call] = frozenset(previous[-1].resident) - fixed if previous else self.starts[call - 1]

    def steps(self, call: int, state: frozenset[str], aligned: bool) -> tuple[int | None, list | None]:
        """(the planned call to follow, its steps) for pipeline call `call` starting from `state` (the offloaded
        components resident now), or (None, None)."""
        if aligned and self.starts.get(call) == state and call in self.calls:
            return call, self.calls[call]
        for planned in (*range(2, len(self.starts) + 1), 1):
            if self.starts.get(planned) == state and planned in self.calls:
                return planned, self.calls[planned]
        return None, None


# -- the residency ---------------------------------------------------------------------------------------------
def evict(weights: Weights, device: torch.device, trace, key: str, reason: str | None,
          copied_back: dict[int, int]) -> None:
    """`weights` leave the device; what changed there is copied back to the host (its bytes added to
    `copied_back` for the trace's call, and said in the offload's reason), and the trace records the offload."""
    back = weights.evict(device)
    if back:
        call = trace.call
        copied_back[call] = copied_back.get(call, 0) + back
        reason = f"{reason}; {COPIED_BACK}" if reason else COPIED_BACK
    trace.offload(key, reason)


def finish_call(trace, copied_back: dict[int, int], now: float) -> None:
    """The trace closes the call; bytes copied back are kept for as many calls as the trace keeps."""
    trace.end_call(now)
    oldest = trace.call - trace.keep_calls
    for call in [c for c in copied_back if c < oldest]:
        del copied_back[call]


class Residency:
    """What is on one device and what moves before each use (see the module docstring). Holds the trace, the
    modules and the schedule, never the handle or the pipeline."""

    def __init__(self, trace, device: torch.device, budget: int, plan: Plan, calls: int | None):
        self.trace, self.device, self.budget = trace, device, budget
        self.at = plan.problem
        self.keep_host = plan.keep_host_copy
        self.fixed = frozenset(plan.exclude)
        self.planned = frozenset(plan.sequence)
        self.order = tuple(plan.call_order)
        self.horizon = calls or HORIZON
        self.weights: dict[str, Weights] = {}
        self.sizes: dict[str, int] = {}
        self.uses: tuple[str, ...] = ()
        self.resident: dict[str, None] = {}  # on the device now, least recently used first
        self.course = Course(None, self.fixed)
        self.aligned = True  # every call so far followed the schedule's call of the same number
        self.started: int | None = None  # the call whose course is chosen
        self.plan_now: list[tuple[str, schedules.Step | None]] = []
        self.cursor = 0
        self.used: set[str] = set()
        self.copied_back: dict[int, int] = {}
        self.warned = False
        self.parked: set[str] = set()  # exclusions offload_all() took off: back when they next run
        self.plan = plan
        self.pinning: host.Pinning | None = None  # which host copies are pinned (CUDA, host copies kept)

    # -- the components ----------------------------------------------------------------------------------------
    def sync(self, modules: dict) -> None:
        """Follow the pipeline's components: a swapped or removed one leaves the device, a new one starts on the
        host; weights moved by someone else are forgotten; new sizes (a LoRA loaded) re-plan the schedule."""
        trace = self.trace
        for name in [n for n in self.weights if n not in modules or self.weights[n].module is not modules[n]]:
            if name in self.resident:
                self._evict(name, SWAPPED)
            del self.weights[name]
        for name, module in modules.items():
            if name not in self.weights:
                self.weights[name] = Weights(module)
                self.weights[name].home()
            elif name in self.resident and not self.weights[name].intact():
                self.weights[name].forget()
                del self.resident[name]
                trace.offload(name, MOVED)
        sizes = {name: module_bytes(module) for name, module in modules.items()}
        if sizes != self.sizes:
            self.sizes = trace.sizes = sizes
            self._replan()

    def _replan(self) -> None:
        self.uses = tuple(name for name in self.order if name in self.sizes)
        try:
            planned = schedules.optimal(self.uses, self.sizes, self.budget, self.horizon, resident=self.fixed,
                                        keep_host_copy=self.keep_host, device=self.trace.device)
        except schedules.BudgetTooSmall:  # grown past the budget (a LoRA loaded): a use that cannot fit raises
            planned = None
        if self.course.schedule is not None:
            self.aligned = False
        self.course = Course(planned, self.fixed)
        self._choose_pins(planned)

    def _choose_pins(self, planned: schedules.Schedule | None) -> None:
        """Pin only the host copies `pin` chooses within the host's spare memory (CUDA copies from pinned memory
        are faster; pinning every weight has filled real users' containers). A schedule re-planned beyond the
        host (a LoRA grew a component) under `pin: true` pins what `auto` would, and says so."""
        if not (self.keep_host and self.device.type == "cuda"):
            return
        try:
            self.pinning = pin_choice(self.plan, planned, self.sizes)
        except host.PinError as error:
            warnings.warn(f"offload-planner: {error}; pinning what pin: auto would instead", RuntimeWarning,
                          stacklevel=2)
            self.pinning = pin_choice(replace(self.plan, pin="auto"), planned, self.sizes)
        chosen = set(self.pinning.pinned)
        for name, weights in self.weights.items():
            weights.pin = name in chosen

    def settle(self, first: bool) -> None:
        """The exclusions on the device, in name order (as the schedule puts them there before the first call),
        but those `offload_all()` took off, which come back when they next run."""
        for name in sorted((self.fixed & self.weights.keys()) - self.parked):
            if name not in self.resident:
                self._load(name, None if first else SWAPPED)

    # -- before each use ----------------------------------------------------------------------------------------
    def use(self, name: str) -> None:
        """Make `name` resident before it runs: the schedule's step when this is the use it expects, else (a
        repeated use of a resident component costs nothing) the residency's own rule, labelled."""
        self.trace.begin(time.perf_counter())
        if self.started != self.trace.call:
            self._start_call()
        expected, step = self._expect(name)
        if name in self.resident:
            pass
        elif name in self.fixed:
            self.parked.discard(name)
            self._fit(name, AFTER_OFFLOAD_ALL)
        elif step is not None:
            self._follow(step)
        elif expected:  # a call the schedule has no steps for: Belady's rule, the policy's own
            self._fit(name, None)
        elif name in self.planned:
            self._warn(name)
            self._fit(name, UNPREDICTED)
        else:
            self._fit(name, OWN_HOOK)
        self.resident[name] = self.resident.pop(name)  # the most recently used now

    def _start_call(self) -> None:
        call = self.trace.call
        state = frozenset(n for n in self.resident if n not in self.fixed)
        planned, steps = self.course.steps(call, state, self.aligned)
        if planned != call:
            self.aligned = False
        self.plan_now = [(step.component, step) for step in steps] if steps else [(name, None) for name in self.uses]
        self.started, self.cursor, self.used = call, 0, set()

    def _expect(self, name: str) -> tuple[bool, schedules.Step | None]:
        """Whether `name` is the use the call expects next (repeats the pipeline skipped are passed over), and
        that use's step; the cursor moves past it."""
        j = self.cursor
        while j < len(self.plan_now) and self.plan_now[j][0] != name and self.plan_now[j][0] in self.used:
            j += 1
        if j == len(self.plan_now) or self.plan_now[j][0] != name:
            return False, None
        self.cursor = j + 1
        self.used.add(name)
        return True, self.plan_now[j][1]

    def _follow(self, step: schedules.Step) -> None:
        """The schedule's evictions, then the load; what the device holds otherwise than planned is made to fit
        and labelled."""
        for victim in step.evicted:
            if victim in self.resident:
                self._evict(victim, None)
        name = step.component
        if name not in self.resident:
            self._fit(name, None if name in step.loaded else OFF_SCHEDULE, room_reason=OFF_SCHEDULE)

    def _fit(self, name: str, reason: str | None, room_reason: str | None = None) -> None:
        """Load `name`, evicting first what does not fit beside it: the resident component used again furthest in
        the future, the least recently used among ties; exclusions never (they are the budget's own)."""
        size = self.sizes.get(name, 0)
        excess = self.resident_bytes() + size - self.budget
        if excess > 0:
            for victim in sorted((n for n in self.resident if n not in self.fixed), key=self._victim_order):
                if excess <= 0:
                    break
                self._evict(victim, room_reason if room_reason is not None else reason)
                excess -= self.sizes.get(victim, 0)
        if excess > 0:
            raise PlanError([self.at("budget", RULE, f"{name!r} ({human(size)}) cannot fit within the budget of "
                                     f"{human(self.budget)} beside the exclusions", "raise the budget")])
        self._load(name, reason)

    def _victim_order(self, name: str) -> tuple[float, int]:
        rank = list(self.resident).index(name)
        return -self._next_use(name), rank

    def _next_use(self, name: str) -> float:
        """How many uses ahead `name` is used next, from the cursor on (this call, then the next ones); infinite
        when never."""
        uses, start = self.uses, self.cursor
        for k in range(start, len(uses)):
            if uses[k] == name:
                return k - start
        if name in uses:
            return len(uses) - start + uses.index(name)
        return float("inf")

    def _warn(self, name: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(f"offload-planner: {name!r} ran where the plan's call order ({', '.join(self.uses)}) did "
                          "not expect it; it was loaded within the budget and the trace marks it "
                          f"({UNPREDICTED!r}). Write the order the pipeline uses its components as `uses`.",
                          RuntimeWarning, stacklevel=4)

    # -- moving ----------------------------------------------------------------------------------------------------
    def resident_bytes(self) -> int:
        return sum(self.sizes.get(name, 0) for name in self.resident)

    def _load(self, name: str, reason: str | None) -> None:
        self.weights[name].load(self.device, self.keep_host)
        self.resident[name] = None
        self.trace.load(name, reason)

    def _evict(self, name: str, reason: str | None) -> None:
        del self.resident[name]
        evict(self.weights[name], self.device, self.trace, name, reason, self.copied_back)

    def end_call(self, now: float) -> None:
        """The call is over: components outside the plan leave the device (as diffusers' own hooks would), the
        trace closes the call, and the next use chooses the next call's course."""
        for name in [n for n in self.resident if n not in self.planned and n not in self.fixed]:
            self._evict(name, OWN_HOOK)
        self.started = None
        finish_call(self.trace, self.copied_back, now)

    def offload_all(self, reason: str | None) -> None:
        """Everything off the device (the exclusions too), in component order; the next call starts from an
        empty device, as the schedule's first call does."""
        self.parked |= self.fixed & self.resident.keys()
        for name in [n for n in self.sizes if n in self.resident]:
            self._evict(name, reason)
        self.aligned = False


# -- the installer ---------------------------------------------------------------------------------------------
class BudgetInstaller:
    """Installs the budget policy on the handle's pipeline: a `BudgetHook` on every model component, all of them
    driving one `Residency` for the plan's device."""

    policy = "budget"

    def __init__(self, handle, budget: int, calls: int | None):
        self.handle, self.budget = handle, budget
        self.residency = Residency(handle.trace, handle.execution_device, budget, handle.plan, calls)
        self.hooks: dict[str, BudgetHook] = {}

    @property
    def schedule(self) -> schedules.Schedule | None:
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

    def hosts(self) -> list[Host]:
        """The pipeline with its exclusions (diffusers' `_execution_device` skips them) and both methods routed to
        the handle; each connected pipeline of a combined class likewise, its own end of call a no-op for the
        trace (the combined pipeline's ends the call)."""
        handle, plan = self.handle, self.handle.plan
        hosts = [Host(handle.pipe, {compat.EXCLUDE: sorted(plan.exclude), compat.ENABLE: handle._enable,
                                    compat.FREE: handle._maybe_free})]
        combined = model_components(handle.pipe)
        for sub in connected_pipes(handle.pipe).values():
            own = {id(module): name for name, module in model_components(sub).items()}
            excluded = sorted(own[id(combined[n])] for n in plan.exclude if n in combined and id(combined[n]) in own)
            hosts.append(Host(sub, {compat.EXCLUDE: excluded,
                                    compat.ENABLE: lambda gpu_id=None, device=None: handle._enable(),
                                    compat.FREE: lambda sub=sub: getattr(type(sub), compat.FREE)(sub)}))
        return hosts

    def reinstall(self, ending: bool) -> None:
        """Our hooks on the pipeline as it is now (the residency carries on: what is resident stays); at the end
        of a call, the call is closed first."""
        handle, residency = self.handle, self.residency
        if ending:
            residency.end_call(time.perf_counter())
        modules = handle._prepare(ending)  # snapshots each new module before the residency moves its weights
        if modules is None:
            return
        first = self._first()
        residency.sync(modules)
        self._synced(first)
        device = handle.execution_device
        hooked = {}
        for name, module in modules.items():
            hook = self.hooks.get(name)
            if hook is None:
                hook = BudgetHook(BudgetHookConfig(name, device), residency.use)
            if compat.hook_of(module) is not hook:
                add_hook_to_module(module, hook)
            hooked[name] = (module, hook)
            self._hooked(name)
        self.hooks = {name: hook for name, (_, hook) in hooked.items()}
        handle._hooked = hooked
        handle._blocked = False
        residency.settle(first)

    def _first(self) -> bool:
        """Whether the residency has not yet seen the pipeline's modules (the first install)."""
        return not self.residency.weights

    def _synced(self, first: bool) -> None:
        """After the residency has synced the modules, before the hooks go on (the block installer pins here)."""

    def _hooked(self, name: str) -> None:
        """After component `name` has its hook (the block installer hooks its blocks here)."""

    def offload_all(self) -> None:
        self.residency.offload_all(OFFLOAD_ALL)

    def release(self) -> None:
        """Before the handle gives the modules back: every device copy dropped (changed weights copied back), the
        host copies the plan pinned back in pageable memory."""
        self.residency.offload_all(None)
        for weights in self.residency.weights.values():
            weights.unpin()
