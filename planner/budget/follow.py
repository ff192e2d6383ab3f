"""Following the budget policy's component schedule from outside the executor: before each load, which resident
components to evict, for a residency that asks only when a model is about to load (diffusers' ComponentsManager
`offload_strategy`). Pure: names and bytes in, names out.

The schedule is `components.optimal` over the known call order (a plan's `uses`, else the order the components
first ran, learned during the first call) and the sizes seen; a load it predicted, from the residency it
predicted, evicts what it says. Anything else (an unpredicted load, a residency that drifted, sizes not yet all
seen) falls back to the furthest next use in the known order (never used again first, ties the largest), as
`components.belady` does. Either way the resident bytes never exceed the budget when the budget can hold the
incoming component at all.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from planner.budget import components
from planner.budget.decide import HORIZON


class Follower:
    """One device's residency decisions. `evict(incoming, size, resident)` answers each load; `evictions` records
    every answer as (incoming, evicted), `planned` how many came from the schedule."""

    def __init__(self, budget: int, uses: Sequence[str] | None = None, sizes: Mapping[str, int] | None = None,
                 resident: Iterable[str] = (), calls: int = HORIZON):
        self.budget, self.calls = budget, calls
        self.order: tuple[str, ...] | None = tuple(uses) if uses else None
        self.learned: list[str] = []
        self.sizes: dict[str, int] = dict(sizes or {})
        self.fixed = frozenset(resident)
        self.schedule: components.Schedule | None = None
        self.cursor = 0
        self.evictions: list[tuple[str, tuple[str, ...]]] = []
        self.planned = 0

    def evict(self, incoming: str, size: int, resident: Mapping[str, int]) -> tuple[str, ...]:
        """The resident components (name -> bytes, on the device now, `incoming` not among them) to evict before
        `incoming` (`size` bytes) loads."""
        changed = self.sizes.get(incoming) != size or any(self.sizes.get(n) != s for n, s in resident.items())
        self.sizes.update(resident)
        self.sizes[incoming] = size
        if self.order is None:
            if incoming in self.learned:  # a second run: the first call's order is known
                self.order = tuple(self.learned)
            else:
                self.learned.append(incoming)
        if changed:
            self.schedule = None
        planned = self._planned(incoming, frozenset(resident))
        victims = list(planned or ())
        if planned is not None:
            self.planned += 1
        held = sum(s for n, s in resident.items() if n not in victims) + size
        if held > self.budget:
            victims += self._furthest(incoming, [n for n in resident if n not in victims], held - self.budget)
        answer = tuple(victims)
        self.evictions.append((incoming, answer))
        return answer

    # -- the schedule --------------------------------------------------------------------------------------------
    def _steps(self) -> tuple[components.Step, ...] | None:
        if self.order is None or any(n not in self.sizes for n in self.order):
            return None
        if self.schedule is None:
            sizes = {n: self.sizes[n] for n in {*self.order, *self.fixed} if n in self.sizes}
            try:
                self.schedule = components.optimal(list(self.order), sizes, self.budget, self.calls,
                                                   resident=self.fixed & set(sizes))
            except components.ScheduleError:
                return None
            self.cursor = 0
        return self.schedule.steps

    def _planned(self, incoming: str, resident: frozenset[str]) -> tuple[str, ...] | None:
        """The schedule's evictions for this load when it predicted it from this residency, else None."""
        steps = self._steps()
        if not steps:
            return None
        second = next((i for i, s in enumerate(steps) if s.call == 2), len(steps))
        state = resident - self.fixed
        for i in (*range(self.cursor, len(steps)), *range(second, self.cursor)):
            step = steps[i]
            before = frozenset(steps[i - 1].resident) - self.fixed if i else frozenset()
            if step.component == incoming and incoming in step.loaded and before == state:
                self.cursor = i + 1 if i + 1 < len(steps) else second
                return step.evicted
        return None

    def _furthest(self, incoming: str, candidates: list[str], needed: int) -> list[str]:
        """Evict by the furthest next use in the known order after `incoming`, until `needed` bytes are free."""
        order = self.order or tuple(self.learned)
        start = order.index(incoming) + 1 if incoming in order else 0
        ahead = order[start:] + order[:start]

        def next_use(name: str) -> int:
            return ahead.index(name) if name in ahead else len(ahead)

        victims, freed = [], 0
        for name in sorted(candidates, key=lambda n: (n in self.fixed, -next_use(n), -self.sizes.get(n, 0), n)):
            if freed >= needed:
                break
            victims.append(name)
            freed += self.sizes.get(name, 0)
        return victims
