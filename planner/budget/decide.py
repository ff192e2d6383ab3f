"""`decide`: a plan's residency within a device budget, one answer for `planner apply`, `simulate` and `validate
--model`: is the budget enough (the least that works), which schedule at the plan's granularity, what to pin.

Pure (scipy only inside a block solve). Raises `PlanError` with the problems of `planner.budget.problems`, worded
for whoever asks (`problems.Asker`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Mapping

from planner.blocknames import REST
from planner.budget import blocks as block_model
from planner.budget import components, host, nesting, problems
from planner.budget.problems import Asker
from planner.plan import Plan, PlanError

HORIZON = 4  # calls a component schedule is planned for when the caller does not say how many
DEFAULT_RESERVE = 2 << 30  # headroom for activations when the budget comes from the free memory and no reserve
NESTED_IN_FLIGHT = 0.1  # split blocks are split further until the pieces in flight take at most this share of room
NESTED_GAP = 1e-6  # the relative gap a schedule over nested pieces is proven within (`blocks.Model.gap`)


@dataclass(frozen=True)
class Least:
    """The least budget a plan can run in, and why: `component` (the largest moved one, or the one whose forward
    needs most block by block) beside `resident` bytes of exclusions. `size` is that component's bytes (whole
    components); `in_flight` the blocks room is kept for (block by block; None for whole components)."""

    needed: int
    component: str | None
    size: int = 0
    resident: int = 0
    in_flight: int | None = None
    piece: str | None = None  # block by block, split as far as it goes: its largest piece, which cannot be split
    piece_size: int = 0

    def problem(self, asker: Asker, budget: int):
        if self.in_flight is None:
            return problems.components_too_small(asker, budget, self.needed, self.component, self.size, self.resident)
        return problems.blocks_too_small(asker, budget, self.needed, self.component or "", self.in_flight,
                                         self.piece, self.piece_size)


@dataclass(frozen=True)
class Decision:
    """What the budget policy does for a plan: the `sizes` and `budget` it was decided for, the `schedule` at the
    plan's granularity (`components.Schedule` or `blocks.BlockSchedule`), and `pinning` (which host copies `pin`
    pins within what the host can spare: nothing without host copies, whatever `pin` says)."""

    plan: Plan
    sizes: Mapping
    budget: int
    schedule: object
    pinning: host.Pinning
    nesting: nesting.Nesting | None = None  # block by block: the pieces split for the budget (None: none asked)

    @property
    def splits(self) -> Mapping[str, frozenset[str]]:
        """The pieces split per component (`nesting.Nesting.splits`); empty: today's blocks."""
        return self.nesting.splits if self.nesting is not None else {}


def device_budget(plan: Plan, free: int | None, *, dry_run: bool, device_type: str, at=None) -> int:
    """The plan's `budget`, else `free` (the device's free memory now, None where it cannot be read) minus
    `reserve` (DEFAULT_RESERVE when the plan has none). Raises `PlanError` (PLN307) where there is none to be had."""
    if plan.budget is not None:
        return plan.budget
    at = at or plan.problem
    if dry_run:
        raise PlanError([problems.no_budget_in_dry_run(at)])
    if free is None:
        raise PlanError([problems.no_free_memory(at, device_type)])
    reserve = plan.reserve if plan.reserve is not None else DEFAULT_RESERVE
    return max(free - reserve, 0)


def least_components(plan: Plan, sizes: Mapping[str, int]) -> Least:
    """Whole components: the exclusions (resident) plus the largest component that moves (any component with a
    size that is not excluded: the executor loads every model component that runs, planned or not)."""
    resident = sum(size for name, size in sizes.items() if name in plan.exclude)
    moved = [name for name in sizes if name not in plan.exclude]
    largest = max(moved, key=lambda name: (sizes[name], name), default=None)
    size = sizes[largest] if largest is not None else 0
    return Least(resident + size, largest, size, resident)


def granularity_for(plan: Plan, sizes: Mapping[str, int], budget: int) -> str:
    """What the budget policy should move for `plan` within `budget`, from each model component's bytes: whole
    components when the least they need (`least_components`) is within it, else block by block."""
    return "component" if least_components(plan, sizes).needed <= budget else "block"


def block_model_for(plan: Plan, blocks: Mapping[str, Mapping[str, int]], budget: int, *, steps: int | None = None,
                    prefetch: bool | None = None) -> block_model.Model:
    """The block model of `plan` on `blocks` ({component: {block: bytes}}), at block granularity."""
    return block_model.model_for(plan, blocks, budget, steps=steps, prefetch=prefetch, granularity="block")


def least_blocks(plan: Plan, blocks: Mapping[str, Mapping[str, int]], model: block_model.Model) -> Least:
    """Block by block: the schedule's least (`Model.least_budget`), and for every moved component (the plan's, and
    those outside it, which a forward nobody planned runs) its REST with its largest block beside the exclusions."""
    needed, component = model.least_budget()
    for name, sizes in blocks.items():
        if name in plan.exclude:
            continue
        need = model.resident_bytes + sizes.get(REST, 0) + max((v for b, v in sizes.items() if b != REST), default=0)
        if need > needed:
            needed, component = need, name
    return Least(needed, component, resident=model.resident_bytes, in_flight=model.in_flight)


def check_components(plan: Plan, sizes: Mapping[str, int], budget: int, asker: Asker) -> None:
    """Raise PlanError when `budget` cannot hold the plan's whole components (`least_components`)."""
    least = least_components(plan, sizes)
    if least.needed > budget:
        raise PlanError([least.problem(asker, budget)])


def nest(plan: Plan, blocks_for: nesting.Pieces, components, budget: int, *, steps: int | None = None,
         prefetch: bool | None = None) -> nesting.Nesting:
    """Blocks inside blocks: the fewest splits of `components`' blocks (`blocks_for(component, splits)` gives the
    pieces) that bring the least budget (`least_blocks`) within `budget` (`nesting.choose`)."""
    def least(found):
        got = least_blocks(plan, found, block_model_for(plan, found, budget, steps=steps, prefetch=prefetch))
        return got.needed, got.component

    chosen = nesting.choose(blocks_for, components, least, budget)
    if not chosen.nested or chosen.needed > budget:
        return chosen
    model = block_model_for(plan, chosen.blocks, budget, steps=steps, prefetch=prefetch)
    largest = int(max(model.room, 0) * NESTED_IN_FLIGHT) // model.in_flight
    return nesting.refine(blocks_for, chosen, largest)  # finer where pieces in flight take much room


def check_blocks(plan: Plan, blocks: Mapping[str, Mapping[str, int]], budget: int, asker: Asker, *,
                 steps: int | None = None, prefetch: bool | None = None,
                 nested: nesting.Nesting | None = None) -> block_model.Model:
    """The block model, or PlanError when `budget` is below the least any block schedule needs (`least_blocks`);
    with `nested` (the split `nest` chose, `blocks` its pieces), the problem names the piece that bounds it."""
    model = block_model_for(plan, blocks, budget, steps=steps, prefetch=prefetch)
    if nested is not None and nested.nested:
        model = replace(model, gap=NESTED_GAP)
    least = least_blocks(plan, blocks, model)
    if least.needed > budget:
        if nested is not None and nested.nested and least.component in blocks:
            sizes = blocks[least.component]
            piece = max((b for b in sizes if b != REST), key=lambda b: (sizes[b], b), default=None)
            if piece is not None:
                least = replace(least, piece=piece, piece_size=sizes[piece])
        raise PlanError([least.problem(asker, budget)])
    return model


def decide(plan: Plan, sizes: Mapping[str, int] | Mapping[str, Mapping[str, int]], budget: int, asker: Asker, *,
           calls: int | None = None, device: str = components.DEVICE,
           host_memory: host.HostMemory | None = None, pieces: nesting.Pieces | None = None) -> Decision:
    """The budget policy's `Decision` for `plan` within `budget`: at component granularity `sizes` maps each model
    component to its bytes and the schedule is `components.optimal` over `calls` (else HORIZON) calls, its events on
    `device`; at block granularity `sizes` maps each to its blocks and the schedule is `solve.solve`'s. Pinning is
    chosen within `host_memory`'s spare bytes (default: this host's). Raises `PlanError`: the budget below the least
    that works, no block schedule found, `pin: true` beyond what the host can spare. With `pieces` (block
    granularity: `blocks_for(component, splits)`), blocks too large for the budget are split (`nest`), and the
    decision's `sizes` are the pieces'."""
    if plan.granularity == "block":
        nested = None
        if pieces is not None:
            nested = nest(plan, pieces, list(sizes), budget)
            sizes = {name: dict(b) for name, b in nested.blocks.items()}
        model = check_blocks(plan, sizes, budget, asker, nested=nested)
        from planner.budget.solve import solve

        try:
            schedule = solve(model)
        except block_model.BlockError as error:
            raise PlanError([problems.solver_failed(asker, str(error))]) from None
        moved = {f"{c}/{b}": (model.size((c, b)), schedule.loads((c, b))) for c, b in model.keys}
        return Decision(plan, sizes, budget, schedule, _pinning(plan, moved, asker, host_memory), nested)
    check_components(plan, sizes, budget, asker)
    uses = [name for name in plan.call_order if name in sizes]
    schedule = components.optimal(uses, sizes, budget, calls or HORIZON, resident=plan.exclude,
                                  keep_host_copy=plan.keep_host_copy, device=device)
    loads = Counter(e.component for e in schedule.events if e.event == "load" and e.call == schedule.calls)
    moved = {name: (size, loads.get(name, 0)) for name, size in sizes.items() if name not in plan.exclude}
    return Decision(plan, sizes, budget, schedule, _pinning(plan, moved, asker, host_memory))


def without_pin_true(plan: Plan) -> Plan:
    """`plan` pinning what `pin: auto` would: what a re-plan beyond the host (a LoRA grew a component) falls back
    to under `pin: true`."""
    return replace(plan, pin="auto")


def _pinning(plan: Plan, moved: dict[str, tuple[int, int]], asker: Asker,
             memory: host.HostMemory | None) -> host.Pinning:
    memory = memory or host.read_host_memory()
    try:  # no host copies kept: nothing to pin, whatever `pin` says
        return host.choose_pinned(moved, plan.pin if plan.keep_host_copy else "false", memory.spare, host=memory)
    except host.PinError as error:
        raise PlanError([problems.pin_beyond_spare(asker.at, str(error))]) from None
