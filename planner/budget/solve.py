"""The exact block schedule: the fewest host-to-device bytes per steady call within the budget, an integer program
over classes of interchangeable blocks solved by scipy's `milp` (HiGHS, relative gap 0), its LP relaxation beside it.

scipy is imported only inside `solve`. Raises `BlocksTooSmall` when no schedule fits, `BlockError` when HiGHS finds
none (a numerical tolerance: please report it).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

from planner.blocknames import REST
from planner.budget.blocks import BlockError, BlockSchedule, BlocksTooSmall, Model, Pass

# The program counts in units of the room (or of all the blocks, when less) over UNITS: HiGHS's tolerances are
# absolute, so bytes (up to 1e11) would drown them and a fixed unit would drown small sizes. The schedule it
# returns is checked again in whole bytes, and solved again with the room cut by what it passed, should the
# tolerance have let it pass by a few bytes.
UNITS = 4096.0


TRIES = 4


TIME_LIMIT = 60.0  # seconds HiGHS may search before the best schedule found so far is taken (exact=False)


def solve(model: Model, *, time_limit: float = TIME_LIMIT) -> BlockSchedule:
    """The fewest host-to-device bytes per steady-state call within the budget, exactly (scipy's HiGHS branch and
    bound, relative gap 0), with the LP relaxation's bound. Raises `BlocksTooSmall` when no schedule fits.
    Past `time_limit` seconds the best schedule found is returned with `exact=False` and HiGHS's dual bound."""
    needed, component = model.least_budget()
    if needed > model.budget:
        raise BlocksTooSmall(model.budget, needed, component)
    if model.resident_bytes + sum(model.size(key) for key in model.keys) <= model.budget:
        # everything fits: keeping it all moves nothing after the first call, which no schedule beats
        every = {key: (True,) * len(model.runs_of[key]) for key in model.keys}
        return BlockSchedule(model, every, every, bound=0.0)
    program = _Program(model)
    if not program.variables:
        return BlockSchedule(model, {}, {}, bound=0.0)
    bound = _Program(model, group=False).relaxation()
    cut = 0
    for _ in range(TRIES):
        found = program.solve(time_limit, cut, bound)
        if not found.over_budget:
            return found
        cut += found.peak_bytes - model.budget
    raise BlockError(f"the solver's schedule holds {found.peak_bytes} bytes, over the budget of {model.budget}, "
                     f"after {TRIES} tries: a numerical tolerance; please report it")


class _Program:
    """The integer program, over classes of interchangeable blocks: the blocks of one component with the same size
    and the same runs (a Flux transformer's 38 single blocks are one class; REST is a class of its own). Blocks of a
    class differ in nothing the model sees, so only how many of them are kept or held matters, and counting them
    instead of naming them leaves HiGHS no symmetric copies of one schedule to search through. Per class of n
    blocks and run j: Y (kept after run j) and H (held over run j), integers 0..n, and F (some block of the class
    streams through run j), binary; per pass, w: room for one block in flight.

        minimise    sum over classes and runs j of size * ((n - Y[j-1]) + (repeat - 1) * (n - H[j]))
        subject to  H[j] >= Y[j], H[j] >= Y[j-1]                      (a kept block is held)
                    H[j] + n F[j] >= n,  w >= size F[j]                (a block streams: room for it)
                    sum of size * (H or the gap's Y) + in_flight * w <= room        (per pass)

    Any counts with H[j] >= max(Y[j-1], Y[j]) are realised by naming the blocks in one fixed order per class: the
    first Y[j] kept after run j, the first H[j] held over it (`_Class.order`)."""

    def __init__(self, model: Model, group: bool = True):
        self.model = model
        groups: dict[tuple, list[tuple[str, str]]] = {}
        for key in model.keys:
            signature = (key[0], model.size(key), model.runs_of[key], key[1] == REST) if group else key
            groups.setdefault(signature, []).append(key)
        self.classes = [_Class(keys, model.size(keys[0]), model.runs_of[keys[0]]) for keys in groups.values()]
        self.index: dict[tuple, int] = {}
        for c, found in enumerate(self.classes):
            for j in range(len(found.runs)):
                for name in ("Y", "H", "F"):
                    self.index[(name, c, j)] = len(self.index)
        self.integers = len(self.index)
        for p in model.passes:
            self.index[("w", p.index)] = len(self.index)

    @property
    def variables(self) -> int:
        return self.integers

    def relaxation(self) -> float | None:
        """The LP relaxation's optimum in bytes (None when HiGHS does not solve it): no schedule moves fewer. The
        program with every block a class of its own relaxes more tightly than the grouped one (a block's own
        H >= max(Y) is stronger than the class's), so `solve` takes its bound from that one."""
        import numpy as np

        relaxed, constant, scale = self._run(0, np.zeros(len(self.index)), None)
        return None if relaxed.status != 0 else max(0.0, constant + relaxed.fun) * scale

    def solve(self, time_limit: float, cut: int = 0, bound: float | None = None) -> BlockSchedule:
        """The optimum with the room cut by `cut` bytes (see TRIES), `bound` reported beside it; not yet checked in
        whole bytes."""
        import numpy as np

        integrality = np.zeros(len(self.index))
        integrality[: self.integers] = 1
        result, constant, scale = self._run(cut, integrality, time_limit)
        if result.x is None:
            raise BlockError(f"HiGHS found no schedule ({result.message})")
        keep, held = self._named(np.rint(result.x[: self.integers]).astype(int))
        exact = result.status == 0 and not self.model.gap
        note = "" if exact else f"HiGHS stopped before proving the optimum: {result.message}"
        if result.status == 0 and self.model.gap:
            note = f"proven within a relative gap of {self.model.gap:g} of the optimum (nested pieces)"
        dual = getattr(result, "mip_dual_bound", None)
        if not exact and dual is not None and np.isfinite(dual):
            bound = max(bound or 0.0, (constant + dual) * scale)
        return _repair(BlockSchedule(self.model, keep, held, exact=exact, bound=bound, note=note))

    def _run(self, cut: int, integrality, time_limit: float | None):
        """(HiGHS's result, the objective's constant, the unit in bytes) of the program with the room cut by
        `cut` bytes; with no variable integral, the LP relaxation."""
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp

        cost, constant, lo, hi, matrix, lower, upper, scale = self._arrays(cut)
        options = {"mip_rel_gap": self.model.gap, "presolve": True}
        if time_limit is not None:
            options["time_limit"] = time_limit
        with _quiet():
            result = milp(cost, constraints=LinearConstraint(matrix, np.array(lower), np.array(upper)),
                          integrality=integrality, bounds=Bounds(lo, hi), options=options)
        return result, constant, scale

    def _named(self, counts) -> tuple[dict, dict]:
        """Per block, kept after and held over each run, from the classes' counts (`_Class.order`)."""
        keep, held = {}, {}
        for c, found in enumerate(self.classes):
            m = len(found.runs)
            kept = [counts[self.index[("Y", c, j)]] for j in range(m)]
            holding = [max(counts[self.index[("H", c, j)]], kept[j], kept[j - 1]) for j in range(m)]
            for rank, key in enumerate(found.order()):
                keep[key] = tuple(rank < kept[j] for j in range(m))
                held[key] = tuple(rank < holding[j] for j in range(m))
        return keep, held

    def _arrays(self, cut: int):
        """(cost, constant, lower and upper variable bounds, constraint matrix, its lower and upper sides, the unit
        in bytes) of the program with the room cut by `cut` bytes."""
        import numpy as np
        from scipy.sparse import coo_array

        model, index, classes = self.model, self.index, self.classes
        # the room, or all the blocks when less: a budget of exabytes must not shrink every block to nothing
        scale = max(min(model.room, sum(model.size(key) for key in model.keys)), 1) / UNITS
        n = len(index)
        cost = np.zeros(n)
        constant = 0.0
        lo, hi = np.zeros(n), np.full(n, np.inf)
        for c, found in enumerate(classes):  # per run j: loads unless kept into it, and per further forward if streamed
            size, count, m = found.size / scale, len(found.keys), len(found.runs)
            for j, p in enumerate(found.runs):
                repeat = model.passes[p].repeat
                cost[index[("Y", c, (j - 1) % m)]] -= size
                cost[index[("H", c, j)]] -= size * (repeat - 1)
                constant += size * count * repeat
                hi[index[("Y", c, j)]] = hi[index[("H", c, j)]] = count
                hi[index[("F", c, j)]] = 1
                if found.rest:  # REST is held over every pass it runs in: it runs first and last
                    lo[index[("H", c, j)]] = count
                    hi[index[("F", c, j)]] = 0
        rows, cols, vals, lower, upper = [], [], [], [], []

        def row(entries: Iterable[tuple[int, float]], low: float, high: float) -> None:
            r = len(lower)
            for col, val in entries:
                rows.append(r)
                cols.append(col)
                vals.append(val)
            lower.append(low)
            upper.append(high)

        inf = np.inf
        for c, found in enumerate(classes):
            m, count, size = len(found.runs), len(found.keys), found.size / scale
            for j, p in enumerate(found.runs):
                held = index[("H", c, j)]
                row([(held, 1.0), (index[("Y", c, j)], -1.0)], 0.0, inf)
                if m > 1:
                    row([(held, 1.0), (index[("Y", c, (j - 1) % m)], -1.0)], 0.0, inf)
                row([(held, 1.0), (index[("F", c, j)], float(count))], float(count), inf)
                if not found.rest:
                    row([(index[("w", p)], 1.0), (index[("F", c, j)], -size)], 0.0, inf)
        k = model.in_flight
        for p in model.passes:
            entries: list[tuple[int, float]] = []
            for c, found in enumerate(classes):
                size = found.size / scale
                if (p.index, found.keys[0]) in model.run_index:
                    entries.append((index[("H", c, model.run_index[(p.index, found.keys[0])])], size))
                else:
                    entries.append((index[("Y", c, model.gap_at(found.keys[0], p.index))], size))
            entries.append((index[("w", p.index)], float(k)))
            row(entries, -inf, (model.room - cut) / scale)
        matrix = coo_array((vals, (rows, cols)), shape=(len(lower), n)).tocsr()
        matrix.indices, matrix.indptr = matrix.indices.astype(np.int32), matrix.indptr.astype(np.int32)  # scipy 1.11
        return cost, constant, lo, hi, matrix, lower, upper, scale


@dataclass(frozen=True)
class _Class:
    """Interchangeable blocks: `keys` of one component, each of `size` bytes, running in the passes `runs`."""

    keys: tuple[tuple[str, str], ...] | list
    size: int
    runs: tuple[int, ...]

    @property
    def rest(self) -> bool:
        return self.keys[0][1] == REST

    def order(self) -> list[tuple[str, str]]:
        """The blocks in the order they are kept and held: any first few of them spread evenly over the class in
        run order (the radical inverse in base 2 of their position), so that held blocks sit between streamed
        ones, whose copies the held blocks' compute can then hide."""
        return [self.keys[i] for i in sorted(range(len(self.keys)), key=lambda i: (_radical_inverse(i), i))]


def _radical_inverse(i: int) -> float:
    """0, 1/2, 1/4, 3/4, 1/8, ...: the van der Corput sequence, whose every prefix is spread evenly over [0, 1)."""
    value, weight = 0.0, 0.5
    while i:
        value += weight * (i & 1)
        i >>= 1
        weight /= 2
    return value


@contextmanager
def _quiet():
    """Standard output silenced at the file descriptor: HiGHS (scipy 1.17) prints a debugging line from C++ on
    some programs, which would corrupt `planner simulate --format json`."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real descriptor (captured, or closed: None): nothing to do
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _streamable(p: Pass) -> tuple[str, ...]:
    """The blocks a pass may stream: all it runs but REST, which runs first and last and is held."""
    return tuple(b for b in p.blocks if b != REST)


def _repair(schedule: BlockSchedule) -> BlockSchedule:
    """The solver's answer with its floating-point slack removed: held exactly where a kept run demands (and REST
    always)."""
    keep, held = dict(schedule.keep), {}
    for key, flags in schedule.held.items():
        k = keep[key]
        held[key] = tuple(flags[j] or k[j] or k[j - 1] or key[1] == REST for j in range(len(flags)))
    return BlockSchedule(schedule.model, keep, held, schedule.policy, schedule.exact, schedule.bound, schedule.note)
