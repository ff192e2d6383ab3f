"""Block-granular residency: which blocks of which components stay on the device, and which stream through.

Pure (no torch, no diffusers): the scheduler behind `granularity: block` in `planner simulate` and the executor.
scipy (HiGHS) solves the integer program; it is imported only when a schedule is solved.

The model. A block is a component's repeated submodule (`down_blocks.1`, `transformer_blocks.7`,
`text_model.encoder.layers.3`, as `planner.blocknames.block_of` names them) or the rest of the component (`REST`). One
pipeline call is a sequence of passes: a component's forward, in the plan's call order, the denoiser once per
step. A pass runs REST and the component's blocks (an autoencoder's decode pass runs its `decoder.` blocks, an
encode pass its `encoder.` blocks: `runs`). Between two consecutive runs of a block (the last run of a call and
the first of the next call included: the steady state repeats), the block is either kept on the device or dropped
and loaded again at its next run. During a pass each block it runs is either held for the whole pass or streamed:
loaded just before it runs and dropped right after. A block kept into or out of a pass is held during it.

The budget holds at every moment, blocks in flight included: during a pass, the blocks held or kept across it
plus room for the streamed blocks in flight (the largest block the pass streams, twice with `prefetch`: the next
one is copied while the current one computes) never exceed the budget minus the resident components (the plan's
exclusions).
Counting a held block over its whole pass and the largest streamed blocks as in flight makes the figure an upper
bound on the real peak whatever order the blocks run in, so the executor can follow the schedule as it is.

The objective: the fewest host-to-device bytes per steady-state call, each drop costing the block's bytes at its
next run. `solve` finds it exactly with scipy's `milp` (HiGHS) and reports the LP relaxation beside it; with each
component as one block (`granularity: component`) the same program gives the whole-component optimum, so the
block optimum is never above it (a block schedule can copy any component schedule).
"""

from __future__ import annotations

import os
import sys
from bisect import bisect_left
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from planner.blocknames import REST

# The components that run once per denoising step (a pipeline's denoiser, and a ControlNet beside it).
DENOISERS = frozenset({"unet", "transformer", "transformer_2", "prior", "decoder", "transformer_3d", "controlnet"})
# The program counts in units of the room (or of all the blocks, when less) over UNITS: HiGHS's tolerances are
# absolute, so bytes (up to 1e11) would drown them and a fixed unit would drown small sizes. The schedule it
# returns is checked again in whole bytes, and solved again with the room cut by what it passed, should the
# tolerance have let it pass by a few bytes.
UNITS = 4096.0
TRIES = 4
TIME_LIMIT = 60.0  # seconds HiGHS may search before the best schedule found so far is taken (exact=False)


class BlockError(ValueError):
    """Inputs no block schedule can be made from."""


class BlocksTooSmall(BlockError):
    """The budget cannot hold what one pass needs (`Model.least_budget`): the resident components, REST of the
    used component and its blocks held or in flight. `needed` is the least budget that works."""

    def __init__(self, budget: int, needed: int, component: str):
        from planner.units import human

        self.budget, self.needed, self.component = budget, needed, component
        super().__init__(f"a budget of {human(budget)} ({budget} bytes) is too small for block streaming: "
                         f"{component!r} needs {human(needed)} ({needed} bytes) with what stays resident")


@dataclass(frozen=True)
class Pass:
    """`repeat` consecutive forwards of `component` within a call, the `index`-th pass of the model: for the
    call's `use`-th use, from its `step`-th forward on (denoisers run `steps` forwards per use), each running
    `blocks` in order (REST first). The forwards of a pass share one decision: what is held over them (and so
    kept between them) and what streams through each of them."""

    index: int
    component: str
    use: int
    step: int
    blocks: tuple[str, ...]
    repeat: int = 1


def runs(component: str, blocks: Sequence[str], role: str | None) -> tuple[str, ...]:
    """The blocks a pass of `component` runs, REST first: all of them, except that an autoencoder (blocks under
    both `encoder.` and `decoder.`) runs only its `decoder.` blocks to decode and its `encoder.` ones to encode
    (`role`); its other blocks stay where they are."""
    names = [b for b in blocks if b != REST]
    coders = {b.split(".", 1)[0] for b in names if "." in b}
    if role in ("encode", "decode") and {"encoder", "decoder"} <= coders:
        skip = "decoder." if role == "encode" else "encoder."
        names = [b for b in names if not b.startswith(skip)]
    return (REST, *names) if REST in blocks else tuple(names)


@dataclass(frozen=True)
class Model:
    """The inputs of a block schedule: one call's `uses` (component names, repeats allowed), each used
    component's `blocks` ({block: bytes} in run order), `steps` passes per use of a `denoisers` component, the
    `resident` components' bytes (on the device for good), the `budget` and whether transfers `prefetch`."""

    uses: tuple[str, ...]
    blocks: Mapping[str, Mapping[str, int]]
    budget: int
    steps: int = 1
    denoisers: frozenset[str] = DENOISERS
    resident_bytes: int = 0
    prefetch: bool = True
    compress: bool = True  # the middle forwards of a run of identical ones as one pass (exact: see `passes`)
    # where the call's denoising starts among `uses` (an autoencoder encodes before it, decodes after it), when the
    # denoiser is not among them (an excluded one); None: at the first denoiser use, else after the last use
    denoised_at: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "blocks", MappingProxyType({c: MappingProxyType(dict(b))
                                                             for c, b in self.blocks.items()}))

    @cached_property
    def forwards(self) -> tuple[Pass, ...]:
        """Every forward of one call, in order, each a pass of its own (`repeat` 1)."""
        first = next((i for i, name in enumerate(self.uses) if name in self.denoisers), self.denoised_at)
        if first is None:  # no denoising in the call: its last use decodes (a vae after an excluded denoiser)
            first = len(self.uses) - 1
        found = []
        for use, name in enumerate(self.uses):
            role = None if name in self.denoisers else ("encode" if use < first else "decode")
            blocks = runs(name, list(self.blocks[name]), role)
            for step in range(self.steps if name in self.denoisers else 1):
                found.append(Pass(len(found), name, use, step, blocks))
        return tuple(found)

    @cached_property
    def passes(self) -> tuple[Pass, ...]:
        """The passes the schedule decides on: the forwards, where `compress` turns every run of S >= 3
        identical consecutive forwards (a denoiser's steps) into its first, its S - 2 middle ones as one pass,
        and its last. Exact: with held sets H_1..H_S over such a run, a drop between forwards j and j+1 costing
        the bytes outside H_j & H_j+1, holding the middle set M of least bytes outside it over every middle
        forward costs no more (the cost c(A, B) of going from A to B obeys c(A, B) <= c(A, X) + c(X, B) minus
        the bytes outside X), and fits wherever M fitted: the forwards run the same blocks beside the same
        other components."""
        if not self.compress:
            return self.forwards
        found: list[Pass] = []
        runs_: list[list[Pass]] = []
        for f in self.forwards:
            last = runs_[-1][-1] if runs_ else None
            if last is not None and (last.component, last.use, last.blocks) == (f.component, f.use, f.blocks):
                runs_[-1].append(f)
            else:
                runs_.append([f])
        for group in runs_:
            parts = [(group[0], 1), (group[1], len(group) - 2), (group[-1], 1)] if len(group) >= 3 else \
                [(f, 1) for f in group]
            for f, repeat in parts:
                found.append(Pass(len(found), f.component, f.use, f.step, f.blocks, repeat))
        return tuple(found)

    @cached_property
    def keys(self) -> tuple[tuple[str, str], ...]:
        """(component, block) for every block that runs in a call, in order of first run."""
        return tuple(dict.fromkeys((p.component, b) for p in self.passes for b in p.blocks))

    @cached_property
    def runs_of(self) -> Mapping[tuple[str, str], tuple[int, ...]]:
        """The passes each block runs in, in order."""
        found: dict[tuple[str, str], list[int]] = {key: [] for key in self.keys}
        for p in self.passes:
            for b in p.blocks:
                found[(p.component, b)].append(p.index)
        return MappingProxyType({key: tuple(v) for key, v in found.items()})

    def size(self, key: tuple[str, str]) -> int:
        return self.blocks[key[0]][key[1]]

    @property
    def room(self) -> int:
        return self.budget - self.resident_bytes

    @property
    def in_flight(self) -> int:
        return 2 if self.prefetch else 1

    @cached_property
    def run_index(self) -> Mapping[tuple[int, tuple[str, str]], int]:
        """(pass, block) -> which run of the block that pass is."""
        return MappingProxyType({(p, key): j for key, runs_ in self.runs_of.items() for j, p in enumerate(runs_)})

    def gap_at(self, key: tuple[str, str], index: int) -> int:
        """The gap of `key` that covers pass `index` where it does not run: the run before it (cyclic)."""
        runs_ = self.runs_of[key]
        before = bisect_left(runs_, index)
        return before - 1 if before else len(runs_) - 1

    def least_budget(self) -> tuple[int, str]:
        """The least budget any schedule needs, and the component whose pass needs it: the resident bytes plus,
        for the worst pass, the least it can run in with everything else dropped: REST and the blocks above some
        size v held, the others streamed with room for v in flight (once, or twice with prefetch)."""
        worst, component = 0, ""
        for p in self.passes:
            sizes = sorted((self.size((p.component, b)) for b in p.blocks if b != REST), reverse=True)
            rest = self.size((p.component, REST)) if REST in p.blocks else 0
            need = rest + min(sum(sizes[:i]) + self.in_flight * (sizes[i] if i < len(sizes) else 0)
                              for i in range(len(sizes) + 1))
            if need > worst:
                worst, component = need, p.component
        return self.resident_bytes + worst, component


@dataclass(frozen=True)
class BlockSchedule:
    """A block schedule for `model`: per block, `keep[key][j]` (kept on the device after its j-th run of a call
    until its next run, the last one into the next call) and `held[key][j]` (held over its j-th run's whole
    pass rather than streamed). `exact` says whether it is proven optimal; `bound` is the LP relaxation's bytes
    (no schedule moves fewer); `policy` names who made it."""

    model: Model
    keep: Mapping[tuple[str, str], tuple[bool, ...]]
    held: Mapping[tuple[str, str], tuple[bool, ...]]
    policy: str = "block"
    exact: bool = True
    bound: float | None = None
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "keep", MappingProxyType(dict(self.keep)))
        object.__setattr__(self, "held", MappingProxyType(dict(self.held)))

    def loads(self, key: tuple[str, str], steady: bool = True) -> int:
        """How many times `key` is copied host to device in a steady call (or in the first call): at each run
        not kept into, and at every further forward of a pass it streams through."""
        keep, held, model = self.keep[key], self.held[key], self.model
        count = 0
        for j, index in enumerate(model.runs_of[key]):
            count += (not keep[j - 1]) + (model.passes[index].repeat - 1) * (not held[j])
        return count + (1 if not steady and keep[-1] else 0)

    @cached_property
    def h2d_bytes(self) -> int:
        """Host-to-device bytes per steady-state call."""
        return sum(self.model.size(key) * self.loads(key) for key in self.model.keys)

    @cached_property
    def first_call_bytes(self) -> int:
        """Host-to-device bytes of the first call (what stays on the device is loaded once, in it), the resident
        components included."""
        return self.model.resident_bytes + sum(self.model.size(k) * self.loads(k, False) for k in self.model.keys)

    @cached_property
    def resident(self) -> tuple[tuple[str, str], ...]:
        """Blocks that never leave the device once loaded (kept across every gap)."""
        return tuple(key for key in self.model.keys if all(self.keep[key]))

    @cached_property
    def streamed(self) -> tuple[tuple[str, str], ...]:
        """Blocks loaded more than once per steady call."""
        return tuple(key for key in self.model.keys if self.loads(key) > 1)

    @cached_property
    def pass_bytes(self) -> tuple[int, ...]:
        """Per pass of a call: the bound on device bytes during it (resident components, blocks held or kept
        across it, streamed blocks in flight), as the budget constraint counts them."""
        model = self.model
        found = []
        for p in model.passes:
            total, streamed = model.resident_bytes, []
            ran = set(p.blocks)
            for key in model.keys:
                if key[0] == p.component and key[1] in ran:
                    j = model.run_index[(p.index, key)]
                    if self.held[key][j]:
                        total += model.size(key)
                    else:
                        streamed.append(model.size(key))
                elif self.keep[key][model.gap_at(key, p.index)]:
                    total += model.size(key)
            found.append(total + model.in_flight * max(streamed, default=0))
        return tuple(found)

    @property
    def peak_bytes(self) -> int:
        return max(self.pass_bytes, default=self.model.resident_bytes)

    @property
    def over_budget(self) -> bool:
        return self.peak_bytes > self.model.budget

    def problems(self) -> list[str]:
        """What makes the schedule inconsistent (a kept run not held); empty when it is sound."""
        found = []
        for key in self.model.keys:
            keep, held = self.keep[key], self.held[key]
            for j in range(len(keep)):
                if (keep[j] or keep[j - 1]) and not held[j]:
                    found.append(f"{key[0]}/{key[1]}: kept across a gap next to run {j} but not held during it")
        return found

    def to_json(self) -> dict:
        model = self.model
        return {"policy": self.policy, "h2d_bytes": self.h2d_bytes, "first_call_h2d_bytes": self.first_call_bytes,
                "peak_bytes": self.peak_bytes, "over_budget": self.over_budget, "exact": self.exact,
                "lp_bound_bytes": None if self.bound is None else int(self.bound), "note": self.note,
                "blocks": {f"{c}/{b}": {"bytes": model.size((c, b)), "runs": len(model.runs_of[(c, b)]),
                                        "loads": self.loads((c, b))} for c, b in model.keys}}


# -- the exact schedule ---------------------------------------------------------------------------------------------
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
        exact = result.status == 0
        note = "" if exact else f"HiGHS stopped before proving the optimum: {result.message}"
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
        options = {"mip_rel_gap": 0.0, "presolve": True}
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


# -- what happens around each forward (the executor's script) -------------------------------------------------------
@dataclass(frozen=True)
class Forward:
    """What a schedule does around one forward of a call (the `index`-th): `held` blocks are on the device for
    the whole forward (loaded at its start when they are not there yet, REST first), `streamed` ones are loaded
    just before they run and dropped right after (in run order), and `drop_after` (held blocks not kept until
    their next run) leave the device when the forward ends."""

    index: int
    component: str
    use: int
    step: int
    blocks: tuple[str, ...]  # every block the forward runs, in order
    held: tuple[str, ...]
    streamed: tuple[str, ...]
    drop_after: tuple[str, ...]

    def to_json(self) -> dict:
        return {"index": self.index, "component": self.component, "use": self.use, "step": self.step,
                "blocks": list(self.blocks), "held": list(self.held), "streamed": list(self.streamed),
                "drop_after": list(self.drop_after)}


def forwards(schedule: BlockSchedule) -> tuple[Forward, ...]:
    """The schedule forward by forward, its passes expanded (a pass of `repeat` forwards holds the same blocks
    over each of them and keeps them between them; what it streams streams through each)."""
    model = schedule.model
    found = []
    for p in model.passes:
        run = {b: model.run_index[(p.index, (p.component, b))] for b in p.blocks}
        held = tuple(b for b in p.blocks if schedule.held[(p.component, b)][run[b]])
        streamed = tuple(b for b in p.blocks if b not in held)
        dropped = tuple(b for b in held if not schedule.keep[(p.component, b)][run[b]])
        for copy in range(p.repeat):
            last = copy == p.repeat - 1
            found.append(Forward(len(found), p.component, p.use, p.step + copy, p.blocks, held, streamed,
                                 dropped if last else ()))
    return tuple(found)


def replay(schedule: BlockSchedule, calls: int = 2) -> tuple[list[int], int]:
    """The schedule played forward by forward and block by block over `calls` calls, as an executor follows it:
    (host-to-device bytes per call, the most bytes ever on the device, in-flight copies included). Independent of
    the program's counting: what is on the device is tracked block by block, and with prefetch the next streamed
    block arrives while the current one runs."""
    model = schedule.model
    on: set[tuple[str, str]] = set()
    moved, peak = [], model.resident_bytes

    def weight() -> int:
        return model.resident_bytes + sum(model.size(k) for k in on)

    steps = forwards(schedule)
    for _ in range(calls):
        total = 0
        for f in steps:
            for b in f.held:
                if (f.component, b) not in on:
                    on.add((f.component, b))
                    total += model.size((f.component, b))
            peak = max(peak, weight())
            for i, b in enumerate(f.streamed):
                key = (f.component, b)
                on.add(key)
                total += model.size(key)
                ahead = f.streamed[i + 1] if model.prefetch and i + 1 < len(f.streamed) else None
                peak = max(peak, weight() + (model.size((f.component, ahead)) if ahead else 0))
                on.discard(key)
            on.difference_update((f.component, b) for b in f.drop_after)
        moved.append(total)
    return moved, peak


# -- the peers' rules, on the same blocks ----------------------------------------------------------------------------
def _uncompressed(model: Model, blocks: Mapping[str, Mapping[str, int]] | None = None) -> Model:
    """`model` with every forward a pass of its own (the peers decide per forward), on `blocks` if given."""
    return replace(model, blocks=model.blocks if blocks is None else blocks, compress=False)


def group_offloading(model: Model) -> BlockSchedule:
    """diffusers' group offloading at block level (`apply_group_offloading(offload_type="block_level",
    num_blocks_per_group=1, use_stream=True)` on every component, diffusers 0.42): the groups are a component's
    top-level ModuleList children (`down_blocks.1`, `transformer_blocks.7`); everything else (a CLIP or T5
    encoder whole, a vae whole, a unet's mid block) is one unmatched group, onloaded for the forward. Each forward
    streams every group it runs, the next one prefetched on a side stream; nothing stays between forwards. It
    takes no budget: `over_budget` says when it passes ours."""
    flat = _uncompressed(model, {c: _top_level_groups(b) for c, b in model.blocks.items()})
    keep = {key: (False,) * len(flat.runs_of[key]) for key in flat.keys}
    held = {key: (key[1] == REST,) * len(flat.runs_of[key]) for key in flat.keys}
    return BlockSchedule(flat, keep, held, "group_offloading", note="streams every group every forward")


def _top_level_groups(blocks: Mapping[str, int]) -> dict[str, int]:
    """A component's blocks as group offloading groups them: `name.N` (a top-level ModuleList's child) stays a
    block, everything else joins REST."""
    found = {REST: 0}
    for name, size in blocks.items():
        parts = name.split(".")
        if len(parts) == 2 and parts[1].isdigit():
            found[name] = size
        else:
            found[REST] += size
    return found


def mmgp(model: Model) -> BlockSchedule:
    """mmgp's rule (`offload.py`: `budgets`, `tune_preloading`, and `unload_all` whenever a model that is not a
    cotenant of the loaded ones becomes active), per call: a component that fits the budget is loaded whole for
    its forwards; a denoiser that does not keeps REST and as many blocks as the budget allows, spread evenly
    between the streamed ones, over its steps, the next streamed block prefetched; a component that does not fit
    and is no denoiser streams its blocks. Switching to the denoiser and back unloads everything, so every model
    is loaded again each call. The count is the largest whose schedule keeps within the budget; none fits: the
    schedule with none, over the budget."""
    flat = _uncompressed(model)
    total = {c: sum(b.values()) for c, b in model.blocks.items()}
    whole = {c for c in total if model.resident_bytes + total[c] <= model.budget}
    candidates = [key for key in flat.keys if key[0] in model.denoisers and key[0] not in whole and key[1] != REST]
    best = None
    for count in range(len(candidates), -1, -1):
        chosen = {candidates[i] for i in _spread(len(candidates), count)}
        keep, held = {}, {}
        for key in flat.keys:
            runs_ = flat.runs_of[key]
            stays = key[0] in whole or key[1] == REST or key in chosen
            held[key] = (stays,) * len(runs_)
            # kept from one forward to the next of the same use (a denoiser's steps), dropped when the use ends
            keep[key] = tuple(stays and j + 1 < len(runs_) and flat.passes[runs_[j + 1]].use ==
                              flat.passes[runs_[j]].use for j in range(len(runs_)))
        best = BlockSchedule(flat, keep, held, "mmgp",
                             note=f"{count} of {len(candidates)} denoiser blocks kept over the steps" if candidates
                             else "every model loaded whole each call")
        if not best.over_budget:
            break
    return best


def _spread(total: int, count: int) -> list[int]:
    """`count` indices out of `total`, spread evenly (the middle of each of `count` equal stretches)."""
    return [int((i + 0.5) * total / count) for i in range(count)] if count else []


def whole_components(model: Model) -> Model:
    """The same call with each component as one block: `solve` on it is the whole-component optimum."""
    whole = {c: {REST: sum(blocks.values())} for c, blocks in model.blocks.items()}
    return replace(model, blocks=whole)


# -- time -----------------------------------------------------------------------------------------------------------
GB = 10 ** 9
# Host-to-device bandwidth defaults (bytes per second): what a PCIe 4.0 x16 link sustains from pinned memory, and
# about half of it from pageable memory (the driver copies through a pinned staging buffer).
PINNED_BANDWIDTH = 24 * GB
PAGEABLE_BANDWIDTH = 12 * GB


@dataclass(frozen=True)
class Timing:
    """Seconds per steady-state call: `transfer` (every host-to-device copy at its bandwidth), `exposed` (the
    part that compute does not hide: the call takes compute plus exposed), `hidden` = transfer - exposed, and
    `compute` (the blocks' compute time given, 0 when none was)."""

    transfer: float
    exposed: float
    compute: float

    @property
    def hidden(self) -> float:
        return self.transfer - self.exposed

    def to_json(self) -> dict:
        return {"transfer_s": self.transfer, "exposed_s": self.exposed, "hidden_s": self.hidden,
                "compute_s": self.compute}


def timing(schedule: BlockSchedule, *, pinned: frozenset[tuple[str, str]] = frozenset(),
           pinned_bandwidth: float = PINNED_BANDWIDTH, pageable_bandwidth: float = PAGEABLE_BANDWIDTH,
           block_seconds: float = 0.0) -> Timing:
    """The time model of one steady call, forward by forward, with one copy engine: a held block not on the
    device is copied before its forward computes; a streamed block is copied before it runs: with prefetch its
    copy may start once the streamed block two before it has finished (two slots: one computing, one arriving),
    without prefetch only when the compute reaches it. Each block but REST computes for `block_seconds`. `pinned` blocks
    copy at `pinned_bandwidth`, the others at `pageable_bandwidth` (bytes per second)."""
    model = schedule.model

    def seconds(key: tuple[str, str]) -> float:
        return model.size(key) / (pinned_bandwidth if key in pinned else pageable_bandwidth)

    on: set[tuple[str, str]] = set()
    result = Timing(0.0, 0.0, 0.0)
    for _ in range(2):  # the second call is the steady one
        transfer = compute = clock = 0.0
        for f in forwards(schedule):
            for key in ((f.component, b) for b in f.held if (f.component, b) not in on):
                on.add(key)
                transfer += seconds(key)
                clock += seconds(key)
            begun, engine, ends = clock, clock, []
            for b in f.blocks:
                if b == REST:  # the embeddings and the output layers: no block's compute time
                    continue
                if b in f.streamed:
                    key = (f.component, b)
                    ready = (ends[-2] if len(ends) >= 2 else begun) if model.prefetch else clock
                    engine = max(engine, ready) + seconds(key)
                    transfer += seconds(key)
                    clock = max(clock, engine) + block_seconds
                    ends.append(clock)
                else:
                    clock += block_seconds
                compute += block_seconds
            on.difference_update((f.component, b) for b in f.drop_after)
        result = Timing(transfer, clock - compute, compute)
    return result


# -- from a plan ----------------------------------------------------------------------------------------------------
def model_for(plan, blocks: Mapping[str, Mapping[str, int]], budget: int, *, steps: int | None = None,
              prefetch: bool | None = None, granularity: str | None = None) -> Model:
    """The block model of `plan` (a `planner.plan.Plan`) on `blocks` ({component: {block: bytes}} in run order,
    as `planner.folder.sizes.ComponentSizes.blocks` or the executor's module tree give them; a component absent from it
    is absent from the pipeline): its call order without the excluded components, whose bytes stay resident,
    `steps` (else the plan's, else 1) and `prefetch` (else the plan's). With `granularity` "component" (else the
    plan's), each component is one block."""
    order = [name for name in plan.call_order if name in blocks]
    uses = tuple(name for name in order if name not in plan.exclude)
    resident = sum(sum(blocks[name].values()) for name in sorted(plan.exclude) if name in blocks)
    first = next((i for i, name in enumerate(order) if name in DENOISERS), None)  # an excluded one counts too
    denoised_at = None if first is None else sum(1 for name in order[:first] if name not in plan.exclude)
    model = Model(uses, {name: blocks[name] for name in dict.fromkeys(uses)}, budget,
                  steps if steps is not None else (plan.steps or 1), DENOISERS, resident,
                  plan.prefetch if prefetch is None else prefetch, denoised_at=denoised_at)
    return whole_components(model) if (granularity or plan.granularity) == "component" else model
