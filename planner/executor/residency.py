"""What is on one device and what moves around each use, for the budget policy: the protocol every residency speaks,
and the residency of whole components.

A residency carries out a `planner.budget.decide.Decision`: it follows the decided schedule before each use and,
where reality differs (a component the schedule did not predict runs, the pipeline skips a use, `offload_all()`
emptied the device), stays within the budget by itself and labels every transfer the schedule did not plan
(`planner.executor.reasons`). It holds the trace, the modules and the decision, never the handle or the pipeline.
It asks the core again (`decide`) when the components change (a LoRA loaded); it never solves a schedule itself.
Raises `PlanError` (PLN307) when a use cannot fit within the budget at all.
"""

from __future__ import annotations

import time
import warnings
from typing import Protocol

import torch

from planner.budget import components as schedules
from planner.budget import decide, host, problems
from planner.executor.modules import module_bytes
from planner.executor.reasons import AFTER_OFFLOAD_ALL, MOVED, OFF_SCHEDULE, OWN_HOOK, SWAPPED, UNPREDICTED
from planner.executor.weights import Weights, check, evict, finish_call
from planner.plan import PlanError
from planner.rules import PLN411


class Residency(Protocol):
    """What an installer asks of a residency: follow the pipeline's modules (`sync`, at every install; `settle`
    puts the exclusions on the device), make a component ready before it runs (`use`), close a call (`end_call`),
    free the device (`offload_all`), and let go of everything before the modules are given back (`release`)."""

    copied_back: dict[int, int]

    def sync(self, modules: dict) -> None: ...

    def settle(self, first: bool) -> None: ...

    def use(self, name: str) -> None: ...

    def end_call(self, now: float) -> None: ...

    def offload_all(self, reason: str | None) -> None: ...

    def release(self) -> None: ...


class ScheduledCalls:
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


class ComponentResidency:
    """What is on one device and what moves before each use (see the module docstring). Holds the trace, the
    modules and the schedule, never the handle or the pipeline."""

    def __init__(self, trace, device: torch.device, decision: decide.Decision, asker: problems.Asker,
                 calls: int | None):
        plan = decision.plan
        self.trace, self.device, self.budget, self.asker = trace, device, decision.budget, asker
        self.decision: decide.Decision | None = decision  # the one `apply` made, used while the sizes are its own
        self.keep_host = plan.keep_host_copy
        self.fixed = frozenset(plan.exclude)
        self.planned = frozenset(plan.sequence)
        self.order = tuple(plan.call_order)
        self.horizon = calls or decide.HORIZON
        self.weights: dict[str, Weights] = {}
        self.sizes: dict[str, int] = {}
        self.uses: tuple[str, ...] = ()
        self.resident: dict[str, None] = {}  # on the device now, least recently used first
        self.clean: set[str] = set()  # resident and unchanged but by the pipeline since this call's start
        self.course = ScheduledCalls(None, self.fixed)
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
                self._evict(name, SWAPPED, trusted=self._check([name]))
            del self.weights[name]
        for name, module in modules.items():
            if name not in self.weights:
                self.weights[name] = Weights(module)
                self.weights[name].home()
            elif name in self.resident and not self.weights[name].intact():
                self.weights[name].forget()
                del self.resident[name]
                self.clean.discard(name)
                trace.offload(name, MOVED)
        sizes = {name: module_bytes(module) for name, module in modules.items()}
        if sizes != self.sizes:
            self.sizes = trace.sizes = sizes
            self._replan()

    def _replan(self) -> None:
        """The schedule for the sizes now: the decision `apply` made while they are its own, else the core's new
        one (none when the components grew past the budget: then a use that cannot fit raises)."""
        self.uses = tuple(name for name in self.order if name in self.sizes)
        decision = self.decision if self.decision is not None and self._decided_for(self.decision) else \
            self._decide()
        self.decision = decision
        if self.course.schedule is not None:
            self.aligned = False
        self.course = ScheduledCalls(decision.schedule if decision else None, self.fixed)
        if decision is not None:
            self._choose_pins(decision.pinning)

    def _decided_for(self, decision: decide.Decision) -> bool:
        return dict(decision.sizes) == self.sizes

    def _decide(self) -> decide.Decision | None:
        """The core's decision on the sizes now. A re-plan beyond the host (a LoRA grew a component) under
        `pin: true` pins what `auto` would, and says so (where host copies are pinned)."""
        try:
            return decide.decide(self.plan, self.sizes, self.budget, self.asker, calls=self.horizon,
                                 device=self.trace.device)
        except PlanError as error:
            if not any(p.rule == PLN411.id for p in error.problems):
                return None
            if self.keep_host and self.device.type == "cuda":
                warnings.warn(f"offload-planner: {error.problems[0].message}; pinning what pin: auto would "
                              "instead", RuntimeWarning, stacklevel=4)
        try:
            return decide.decide(decide.without_pin_true(self.plan), self.sizes, self.budget, self.asker,
                                 calls=self.horizon, device=self.trace.device)
        except PlanError:
            return None

    def _choose_pins(self, pinning: host.Pinning) -> None:
        """Pin only the host copies `pin` chose within the host's spare memory (CUDA copies from pinned memory
        are faster; pinning every weight has filled real users' containers)."""
        if not (self.keep_host and self.device.type == "cuda"):
            return
        self.pinning = pinning
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
        self._check(list(self.resident))  # what stayed resident across the call boundary, in one synchronisation
        self.clean = set(self.resident)

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
            raise PlanError([problems.cannot_fit(self.asker, self.budget, repr(name), size)])
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
        if self.started is not None:  # loaded within the call: only the pipeline can change it before it ends
            self.clean.add(name)
        self.trace.load(name, reason)

    def _check(self, names: list[str]) -> bool:
        """The checksums of `names`' device copies compared in one synchronisation (changed ones are copied back
        when they leave); True, so that their evictions may be trusted."""
        check([self.weights[name] for name in names if name not in self.clean])
        return True

    def _evict(self, name: str, reason: str | None, trusted: bool | None = None) -> None:
        """`name` off the device: without a checksum comparison where it is `clean` (or `trusted`: just checked)."""
        del self.resident[name]
        trusted = name in self.clean if trusted is None else trusted
        self.clean.discard(name)
        evict(self.weights[name], self.device, self.trace, name, reason, self.copied_back, trusted)

    def end_call(self, now: float) -> None:
        """The call is over: components outside the plan leave the device (as diffusers' own hooks would), the
        trace closes the call, and the next use chooses the next call's course."""
        for name in [n for n in self.resident if n not in self.planned and n not in self.fixed]:
            self._evict(name, OWN_HOOK)
        self.started = None
        self.clean = set()  # between calls anyone can change what stays: the next call's start checks it
        finish_call(self.trace, self.copied_back, now)

    def offload_all(self, reason: str | None) -> None:
        """Everything off the device (the exclusions too), in component order; the next call starts from an
        empty device, as the schedule's first call does."""
        self.parked |= self.fixed & self.resident.keys()
        leaving = [n for n in self.sizes if n in self.resident]
        self._check(leaving)
        for name in leaving:
            self._evict(name, reason, trusted=True)
        self.aligned = False

    def release(self) -> None:
        """Before the modules are given back: every device copy dropped (changed weights copied back), the host
        copies the plan pinned back in pageable memory."""
        self.offload_all(None)
        for weights in self.weights.values():
            weights.unpin()
