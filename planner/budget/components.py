"""Residency schedules: which components sit on the device before each use, and what that costs in transfers.

Pure (no torch, no diffusers): the component schedules behind `planner simulate` and the budget executor's plan. Every
policy drives one `planner.trace.Trace`, so a schedule speaks the executor's trace format.

The inputs every policy shares:
- `uses`: the components in the order one pipeline call calls them; names repeat (img2img runs
  [text_encoder, vae, unet, vae]).
- `sizes`: bytes per component. Its order is the pipeline's component order: `Trace.offload_all` and the peers'
  tie-breaks follow it. A name of `resident` or of a chain `sequence` without a size is absent from the pipeline
  and skipped, as diffusers skips it; a use without a size is an error.
- `budget`: bytes of weights that may be on the device at once. `calls`: how many pipeline calls.
- `resident`: components never offloaded: loaded once before the first call, counted against the budget and in
  the peak.

Granularity is the whole component. With host copies kept (`keep_host_copy=True`, the default of our policies),
an eviction drops the device copy and moves nothing back; the peers' code moves modules with `.to("cpu")`, so
their evictions (and the chain's offloads) copy their bytes back.

Policies: `chain` (diffusers' `enable_model_cpu_offload`), `optimal` (the fewest host-to-device bytes within the
budget, exact by dynamic programming; Belady's rule beyond what is affordable), `belady`; the peers' rules are in
`planner.budget.peers`. `lower_bound` is the optimum, or a valid bound.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Mapping, Protocol, Sequence

from planner.trace import EXCLUSION_ROUND_TRIP, Event, Trace

DEVICE = "cuda:0"  # the device named in simulated events, as the executor names a plan's device


# Steps of the exact search (resident sets visited, subsets tried) before it gives way to Belady's rule. 8
# components over 4 calls of 8 uses take under 10,000; the bound keeps the search under about a third of a second.
MAX_WORK = 200_000


class ScheduleError(ValueError):
    """Inputs a schedule cannot be made from (a use without a size, a negative size, no calls)."""


class BudgetTooSmall(ScheduleError):
    """The budget cannot hold the largest used component beside the resident ones: no policy can run.

    `needed` is the least budget that works: `resident_bytes` (the components never offloaded) plus the size of
    `component`, the largest one that is used and offloaded (None when the resident ones alone exceed it)."""

    def __init__(self, budget: int, needed: int, component: str | None, resident_bytes: int):
        self.budget, self.needed, self.component, self.resident_bytes = budget, needed, component, resident_bytes
        from planner.units import human  # only when the error is shown: keeps this module's import light

        what = f"component {component!r} needs {human(needed - resident_bytes)}" if component else "nothing more"
        kept = f" beside {human(resident_bytes)} kept resident" if resident_bytes else ""
        super().__init__(f"a budget of {human(budget)} ({budget} bytes) is too small: {what}{kept}; "
                         f"raise it to at least {human(needed)} ({needed} bytes)")


@dataclass(frozen=True)
class Step:
    """What a policy did before one use: `evicted` left the device (in that order), then `loaded` arrived;
    `resident` is what is on the device during the use (pipeline component order), `resident_bytes` its size."""

    call: int  # 1-based pipeline call
    index: int  # position of the use within the call's `uses`
    component: str
    evicted: tuple[str, ...]
    loaded: tuple[str, ...]
    resident: tuple[str, ...]
    resident_bytes: int

    def to_json(self) -> dict:
        return {"call": self.call, "index": self.index, "component": self.component, "evicted": list(self.evicted),
                "loaded": list(self.loaded), "resident": list(self.resident), "resident_bytes": self.resident_bytes}


@dataclass(frozen=True)
class Schedule:
    """A policy's residency over `calls` pipeline calls: its trace `events`, its `steps` (one per use), and the
    bytes each way per call (index 0 is call 1). Events a policy records after the last call (the chain's
    re-install puts the exclusions back for a next call) are in `events` with call `calls + 1` but in no figure.
    `exact` is False when the policy could not be computed as asked and a fallback ran (`note` says why)."""

    policy: str
    calls: int
    budget: int | None
    events: tuple[Event, ...]
    steps: tuple[Step, ...]
    h2d_per_call: tuple[int, ...]
    d2h_per_call: tuple[int, ...]
    peak_bytes: int
    exact: bool = True
    note: str = ""

    @property
    def h2d_bytes(self) -> int:
        return sum(self.h2d_per_call)

    @property
    def d2h_bytes(self) -> int:
        return sum(self.d2h_per_call)

    @property
    def over_budget(self) -> bool:
        """Whether the device ever held more than the budget (only the chain, which ignores it, can)."""
        return self.budget is not None and self.peak_bytes > self.budget

    def to_json(self) -> dict:
        data = {"h2d_bytes": self.h2d_bytes, "d2h_bytes": self.d2h_bytes, "peak_bytes": self.peak_bytes,
                "h2d_per_call": list(self.h2d_per_call), "d2h_per_call": list(self.d2h_per_call),
                "exact": self.exact, "events": [e.to_json() for e in self.events]}
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class Bound:
    """The least host-to-device bytes any schedule within the budget can move: the optimum when `exact`, else a
    bound no schedule goes below (`note` says which)."""

    h2d_bytes: int
    exact: bool
    note: str = ""


@dataclass(frozen=True)
class Problem:
    uses: tuple[str, ...]
    sizes: Mapping[str, int]
    calls: int
    budget: int | None
    fixed: tuple[str, ...]  # components never offloaded (with a size), sorted as the executor loads them
    device: str

    @cached_property
    def flat(self) -> tuple[tuple[int, int, str], ...]:
        """(call, index, component) for every use of every call."""
        return tuple((call, index, name) for call in range(1, self.calls + 1) for index, name in enumerate(self.uses))

    @cached_property
    def fixed_bytes(self) -> int:
        return sum(self.sizes[name] for name in self.fixed)

    @cached_property
    def offloaded(self) -> tuple[str, ...]:
        """The used components a budget policy moves, sorted by name."""
        return tuple(sorted(set(self.uses) - set(self.fixed)))

    @cached_property
    def room(self) -> int:
        """Bytes left for the offloaded components once the fixed ones are on the device."""
        return self.budget - self.fixed_bytes

    def weight(self, names: Iterable[str]) -> int:
        return sum(self.sizes[name] for name in names)

    def trace(self) -> Trace:
        return Trace(self.device, sizes=dict(self.sizes), keep_calls=self.calls + 2)


def _problem(uses: Sequence[str], sizes: Mapping[str, int], calls: int, budget: int | None,
             resident: Iterable[str], device: str) -> Problem:
    """The checked inputs; raises `ScheduleError` for inputs no schedule can be made from."""
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ScheduleError(f"calls must be a whole number of at least 1, not {calls!r}")
    if budget is not None and not _whole(budget):
        raise ScheduleError(f"the budget must be a whole number of bytes, not {budget!r}")
    for name, size in sizes.items():
        if not _whole(size):
            raise ScheduleError(f"the size of {name!r} must be a whole number of bytes, not {size!r}")
    unknown = [name for name in dict.fromkeys(uses) if name not in sizes]
    if unknown:
        raise ScheduleError(f"{', '.join(map(repr, unknown))} in uses {'has' if len(unknown) == 1 else 'have'} no "
                            f"size: the sizes know {', '.join(sizes) or 'no component'}")
    fixed = tuple(sorted({name for name in resident if name in sizes}))
    return Problem(tuple(uses), dict(sizes), calls, budget, fixed, device)


def budgeted(uses, sizes, calls, budget, resident, device) -> Problem:
    """`_problem` for a policy that keeps within `budget`; raises `BudgetTooSmall` when no policy can (the budget
    cannot hold the largest used component beside the resident ones)."""
    problem = _problem(uses, sizes, calls, budget, resident, device)
    if budget is None:
        raise ScheduleError("this policy needs a budget")
    largest = max(problem.offloaded, key=lambda name: (problem.sizes[name], name), default=None)
    needed = problem.fixed_bytes + (problem.sizes[largest] if largest is not None else 0)
    if needed > budget:
        raise BudgetTooSmall(budget, needed, largest, problem.fixed_bytes)
    return problem


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Rule(Protocol):
    """A budget policy's decision before one use: which offloaded components to evict. The runner loads the use
    afterwards when it is not resident. `resident` holds the offloaded components on the device now."""

    def evict(self, position: int, name: str, resident: frozenset[str]) -> tuple[str, ...]: ...


def run_rule(policy: str, problem: Problem, rule: _Rule, copies_back: bool, exact: bool = True,
         note: str = "") -> Schedule:
    """Drive a trace through every use of every call by `rule`; the fixed components go first, for good."""
    trace = problem.trace()
    for name in problem.fixed:
        trace.load(name)
    fixed = frozenset(problem.fixed)
    steps = []
    for position, (call, index, name) in enumerate(problem.flat):
        if call != trace.call:
            trace.end_call()
        before = len(trace.events)
        if name not in fixed:
            for victim in rule.evict(position, name, frozenset(trace.resident - fixed)):
                trace.offload(victim)
            trace.load(name)
        steps.append(_step(problem, trace, call, index, name, before))
    trace.end_call()
    return _schedule(policy, problem, trace, steps, copies_back, exact, note)


def _step(problem: Problem, trace: Trace, call: int, index: int, name: str, before: int) -> Step:
    """The step of the use just made ready: the trace's events since `before` and what is resident now."""
    moved = trace.events[before:]
    resident = tuple(n for n in problem.sizes if n in trace.resident)
    return Step(call, index, name, tuple(e.component for e in moved if e.event == "offload"),
                tuple(e.component for e in moved if e.event == "load"), resident, problem.weight(resident))


def _schedule(policy: str, problem: Problem, trace: Trace, steps: list[Step], copies_back: bool, exact: bool,
              note: str) -> Schedule:
    stats = [trace.calls.get(call) for call in range(1, problem.calls + 1)]
    h2d = tuple(s.loaded_bytes if s else 0 for s in stats)
    d2h = tuple(s.offloaded_bytes if s and copies_back else 0 for s in stats)
    peak = max((s.peak_resident_bytes for s in stats if s), default=0)
    return Schedule(policy, problem.calls, problem.budget, tuple(trace.events), tuple(steps), h2d, d2h, peak,
                    exact, note)


def chain(sequence: Sequence[str], uses: Sequence[str], sizes: Mapping[str, int], calls: int = 1, *,
          resident: Iterable[str] = (), budget: int | None = None, device: str = DEVICE) -> Schedule:
    """diffusers' `enable_model_cpu_offload` with `sequence` as `model_cpu_offload_seq` and `resident` as
    `_exclude_from_cpu_offload`, as the chain executor's trace records it.

    Each sequence member with a size gets accelerate's `CpuOffload` hook linked to the member before it: its
    forward offloads that one (when on the device) and loads itself. A used component outside the sequence gets a
    hook of its own (load on use). A sequence member is chained even when `resident` names it (diffusers applies
    the exclusion only outside the sequence). At the end of every call `maybe_free_model_hooks` re-runs
    `enable_model_cpu_offload`, which moves the whole pipeline to the CPU, excluded components included, and puts
    those back (events labelled `EXCLUSION_ROUND_TRIP`, the reload recorded in the next call). Every offload
    copies its bytes back. The budget is not consulted; `Schedule.over_budget` says whether it was exceeded.
    """
    problem = _problem(uses, sizes, calls, budget, resident, device)
    links = [name for name in dict.fromkeys(sequence) if name in problem.sizes]
    before = dict(zip(links[1:], links[:-1], strict=True))
    excluded = tuple(name for name in problem.fixed if name not in links)
    trace = problem.trace()
    for name in excluded:  # `apply` installs before the first call: the exclusions go to the device once
        trace.load(name)
    steps = []
    for call in range(1, problem.calls + 1):
        for index, name in enumerate(problem.uses):
            start = len(trace.events)
            if name not in excluded:
                if name in before:
                    trace.offload(before[name])
                trace.load(name)
            steps.append(_step(problem, trace, call, index, name, start))
        _end_chain_call(trace, excluded)
    return _schedule("chain", problem, trace, steps, True, True, "")


def _end_chain_call(trace: Trace, excluded: tuple[str, ...]) -> None:
    """diffusers' end of a call: everything to the CPU (the exclusions too: a round trip), then the re-install
    puts the exclusions back, recorded in the next call as the executor records it."""
    back = trace.resident & set(excluded)
    trace.offload_all({name: EXCLUSION_ROUND_TRIP for name in back})
    trace.end_call()
    for name in excluded:
        trace.load(name, EXCLUSION_ROUND_TRIP if name in back else None)


def optimal(uses: Sequence[str], sizes: Mapping[str, int], budget: int, calls: int = 1, *,
            resident: Iterable[str] = (), keep_host_copy: bool = True, device: str = DEVICE,
            max_work: int = MAX_WORK) -> Schedule:
    """The schedule with the fewest host-to-device bytes that never holds more than `budget` on the device.

    Exact over every schedule of whole components (evictions free, a component loaded only when it is used), by
    dynamic programming over resident sets; among equally cheap ones, the fewest evictions, then a fixed order of
    resident sets (bit i is the i-th name in sorted order). Nothing is offloaded at the end of a call. When the
    search would take more than `max_work` steps, Belady's rule runs instead (`exact=False`, `note` says so).
    Raises `BudgetTooSmall` when the budget cannot hold the largest used component beside the resident ones.
    """
    problem = budgeted(uses, sizes, calls, budget, resident, device)
    try:
        victims = _Search(problem, max_work).victims()
    except _TooLarge as too_large:
        return run_rule("optimal", problem, _Belady(problem), not keep_host_copy, False, str(too_large))
    return run_rule("optimal", problem, _Planned(victims), not keep_host_copy)


def belady(uses: Sequence[str], sizes: Mapping[str, int], budget: int, calls: int = 1, *,
           resident: Iterable[str] = (), keep_host_copy: bool = True, device: str = DEVICE) -> Schedule:
    """Belady's rule with sizes: load on use; when the use does not fit, evict the resident component used again
    furthest in the future (never again first), among ties the largest, until it fits. Nothing is offloaded at
    the end of a call. Optimal for equal sizes; with sizes it is a heuristic, the fallback of `optimal`."""
    problem = budgeted(uses, sizes, calls, budget, resident, device)
    return run_rule("belady", problem, _Belady(problem), not keep_host_copy)


def lower_bound(uses: Sequence[str], sizes: Mapping[str, int], budget: int, calls: int = 1, *,
                resident: Iterable[str] = (), max_work: int = MAX_WORK) -> Bound:
    """The least host-to-device bytes within `budget`: the exact optimum when the search is affordable, else the
    compulsory loads (each resident and each used component once), which no schedule goes below."""
    problem = budgeted(uses, sizes, calls, budget, resident, "")
    compulsory = problem.fixed_bytes + problem.weight(problem.offloaded)
    try:
        search = _Search(problem, max_work)
        search.victims()
    except _TooLarge as too_large:
        return Bound(compulsory, False, f"{too_large}; the bound counts each component's first load only")
    return Bound(problem.fixed_bytes + search.cost, True)


class _TooLarge(Exception):
    """The exact search went past its step bound."""


class _Search:
    """The exact search. State: the set of offloaded components resident before a use (a bitmask). From state S
    before use u, the next state is any subset of S | {u} that holds u and fits; loading u costs its size when u
    is not in S. Keeping more never costs more bytes or more evictions later (a superset can mimic a subset's
    future, evicting each extra component at most once), so only the maximal fitting subsets are successors:
    that keeps the search exact and its frontier small. Per position the cheapest (bytes, evictions) reaching
    each state is kept, with the state it came from, so the schedule is read back from the end."""

    def __init__(self, problem: Problem, max_work: int):
        self.problem, self.max_work, self.work = problem, max_work, 0
        self.bit = {name: 1 << i for i, name in enumerate(problem.offloaded)}
        self.size = {self.bit[name]: problem.sizes[name] for name in problem.offloaded}
        self.room = problem.room
        self._successors: dict[tuple[int, int], tuple[int, ...]] = {}
        self._weights: dict[int, int] = {0: 0}
        self.cost = 0

    def victims(self) -> dict[int, tuple[str, ...]]:
        """Per position of `problem.flat` (uses of fixed components left out): the components to evict."""
        positions = [p for p, (_, _, name) in enumerate(self.problem.flat) if name in self.bit]
        frontier: dict[int, tuple[int, int]] = {0: (0, 0)}  # state -> (bytes, evictions)
        came_from: list[dict[int, int]] = []
        for position in positions:
            frontier, back = self._advance(frontier, self.bit[self.problem.flat[position][2]])
            came_from.append(back)
        last = min(frontier, key=lambda state: (frontier[state], state))
        self.cost = frontier[last][0]
        return self._read_back(positions, came_from, last)

    def _advance(self, frontier: dict[int, tuple[int, int]], use: int):
        after: dict[int, tuple[int, int]] = {}
        back: dict[int, int] = {}
        for state in sorted(frontier):
            spent, evictions = frontier[state]
            joined = state | use
            if not state & use:
                spent += self.size[use]
            successors = self._fitting(joined, use)
            self._spend(len(successors))
            for nxt in successors:
                key = (spent, evictions + (joined & ~nxt).bit_count())
                if nxt not in after or key < after[nxt]:
                    after[nxt], back[nxt] = key, state
        return after, back

    def _read_back(self, positions: list[int], came_from: list[dict[int, int]], last: int):
        names = {bit: name for name, bit in self.bit.items()}
        victims = {}
        state = last
        for position, back in zip(reversed(positions), reversed(came_from), strict=True):
            previous = back[state]
            gone = previous & ~state
            victims[position] = tuple(names[b] for b in sorted(names) if gone & b)
            state = previous
        return victims

    def _weight(self, mask: int) -> int:
        weight = self._weights.get(mask)
        if weight is None:
            weight = self._weights[mask] = sum(size for bit, size in self.size.items() if mask & bit)
        return weight

    def _fitting(self, joined: int, use: int) -> tuple[int, ...]:
        """The maximal subsets of `joined` that hold `use` and fit in the room (cached)."""
        key = (joined, use)
        found = self._successors.get(key)
        if found is None:
            self._spend(1)
            if self._weight(joined) <= self.room:
                found = (joined,)
            else:
                found = self._maximal(joined, use)
            self._successors[key] = found
        return found

    def _maximal(self, joined: int, use: int) -> tuple[int, ...]:
        # depth first over the other components, largest first; a branch dies as soon as a component left out
        # would still fit beside everything that could yet be taken (the subset could not be maximal)
        others = sorted((b for b in self.size if joined & b and b != use), key=lambda b: (-self.size[b], b))
        sizes = [self.size[b] for b in others]
        rest = [0] * (len(others) + 1)
        for i in range(len(others) - 1, -1, -1):
            rest[i] = rest[i + 1] + sizes[i]
        room = self.room - self.size[use]
        found = []

        def walk(i: int, taken: int, used: int, smallest_left_out: float) -> None:
            self._spend(1)
            if smallest_left_out <= room - used - rest[i]:
                return
            if i == len(others):
                if smallest_left_out > room - used:
                    found.append(taken)
                return
            if used + sizes[i] <= room:
                walk(i + 1, taken | others[i], used + sizes[i], smallest_left_out)
            walk(i + 1, taken, used, min(smallest_left_out, sizes[i]))

        walk(0, use, 0, float("inf"))
        return tuple(found)

    def _spend(self, steps: int) -> None:
        self.work += steps
        if self.work > self.max_work:
            problem = self.problem
            raise _TooLarge(f"the exact search passed {self.max_work} steps ({len(problem.offloaded)} offloaded "
                            f"components, {len(problem.flat)} uses): Belady's rule (furthest next use) instead")


class _Planned:
    def __init__(self, victims: dict[int, tuple[str, ...]]):
        self.victims = victims

    def evict(self, position, name, resident):
        return self.victims.get(position, ())


class _Belady:
    def __init__(self, problem: Problem):
        self.problem = problem
        self.positions: dict[str, list[int]] = {}
        for position, (_, _, name) in enumerate(problem.flat):
            self.positions.setdefault(name, []).append(position)
        self.never = len(problem.flat)

    def next_use(self, name: str, position: int) -> int:
        uses = self.positions.get(name, [])
        i = bisect_right(uses, position)
        return uses[i] if i < len(uses) else self.never

    def evict(self, position, name, resident):
        if name in resident:
            return ()
        sizes = self.problem.sizes
        free = self.problem.room - self.problem.weight(resident)
        victims = []
        for victim in sorted(resident, key=lambda n: (-self.next_use(n, position), -sizes[n], n)):
            if free >= sizes[name]:
                break
            victims.append(victim)
            free += sizes[victim]
        return tuple(victims)


__all__ = ["Bound", "BudgetTooSmall", "DEVICE", "MAX_WORK", "Schedule", "ScheduleError", "Step", "belady", "chain",
           "lower_bound", "optimal"]
