"""Block-granular residency: which blocks of which components stay on the device, and which stream through.

Pure (no torch, no diffusers): the model behind `granularity: block` in `planner simulate` and the executor; its
exact solution is `planner.budget.solve` (scipy's HiGHS, imported only then), its time `planner.budget.timing`.

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
next run. `planner.budget.solve.solve` finds it exactly with scipy's `milp` (HiGHS) and reports the LP relaxation
beside it; with each component as one block (`granularity: component`) the same program gives the whole-component
optimum, so the block optimum is never above it (a block schedule can copy any component schedule).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType
from typing import Mapping, Sequence

from planner.blocknames import REST

# The components that run once per denoising step (a pipeline's denoiser, and a ControlNet beside it).
DENOISERS = frozenset({"unet", "transformer", "transformer_2", "prior", "decoder", "transformer_3d", "controlnet"})


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
    # the relative gap HiGHS may stop at (0: proven optimal); nested pieces (`planner.budget.nesting`) tie within
    # HiGHS's tolerances, where a gap of 0 cannot be proven in time
    gap: float = 0.0

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


def uncompressed(model: Model, blocks: Mapping[str, Mapping[str, int]] | None = None) -> Model:
    """`model` with every forward a pass of its own (the peers decide per forward), on `blocks` if given."""
    return replace(model, blocks=model.blocks if blocks is None else blocks, compress=False)


def whole_components(model: Model) -> Model:
    """The same call with each component as one block: `solve` on it is the whole-component optimum."""
    whole = {c: {REST: sum(blocks.values())} for c, blocks in model.blocks.items()}
    return replace(model, blocks=whole)


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
