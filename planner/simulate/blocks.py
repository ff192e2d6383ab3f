"""`planner simulate` at block granularity: a plan's steady-state call under our block schedule and the peers'.

Pure (no torch; scipy solves the schedule). The plan and each component's per-block bytes go in (from a model
folder's safetensors headers: `planner.folder.sizes.ComponentSizes.blocks`), and a `BlockSimulation` comes out:

- ours: `planner.budget.solve.solve`, the fewest host-to-device bytes per steady call within the budget, exact, with
  the LP relaxation's bound beside it;
- the whole-component optimum: the same program with each component one block (our `granularity: component`);
- diffusers' chain (`enable_model_cpu_offload`): every used component loaded once per call (`schedule.chain`);
- diffusers' group offloading (block level, streams) and mmgp's evenly spread resident blocks, on the same blocks;
- the time model (`planner.budget.timing`): seconds of transfer per steady call and the part compute does not hide, at a
  bandwidth for pinned and one for pageable host memory, with an optional compute time per block;
- the host: what the host copies hold and what `pin` pins within the host's spare memory (`planner.budget.host`).

    found = blocks.simulate(plan, {"unet": {"down_blocks.0": ..., "rest": ...}, ...}, budget=6 << 30, steps=30)
    blocks.render_text(found); found.to_json()
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from planner.budget import blocks, decide, host, peers, problems, timing
from planner.budget import components as schedule
from planner.budget.blocks import BlockSchedule, BlocksTooSmall, Model
from planner.budget.nesting import Nesting, Pieces
from planner.budget.problems import Asker
from planner.budget.solve import TIME_LIMIT, solve
from planner.budget.timing import Timing
from planner.plan import Plan, PlanError
from planner.simulate.table import aligned
from planner.units import human

OURS = "block"


WHOLE = "component"


PEERS = ("group_offloading", "mmgp")


POLICIES = (OURS, WHOLE, "chain", *PEERS)  # the order every output lists them in


DESCRIPTIONS = {OURS: "ours, granularity block: the fewest bytes within the budget",
                WHOLE: "ours, granularity component: whole components",
                "chain": "diffusers' enable_model_cpu_offload",
                "group_offloading": "diffusers' group offloading (block level, streams)",
                "mmgp": "mmgp (evenly spread resident denoiser blocks)"}


# The peers pin every host copy they stream: group offloading with use_stream pins its CPU copies, mmgp's
# profiles pin the models' weights. The time model gives them the pinned bandwidth throughout.
PEERS_PIN_ALL = True


@dataclass(frozen=True)
class Row:
    """One policy's steady call: host-to-device bytes per call, in the first call, the peak, and its time."""

    policy: str
    h2d_bytes: int
    first_call_bytes: int
    peak_bytes: int
    over_budget: bool
    timing: Timing | None = None
    note: str = ""

    def to_json(self) -> dict:
        data = {"h2d_bytes": self.h2d_bytes, "first_call_h2d_bytes": self.first_call_bytes,
                "peak_bytes": self.peak_bytes, "over_budget": self.over_budget}
        if self.timing is not None:
            data.update(self.timing.to_json())
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class BlockSimulation:
    plan: str
    model: Model
    ours: BlockSchedule
    rows: Mapping[str, Row]
    pinning: host.Pinning
    host_memory: host.HostMemory | None
    bandwidth: tuple[float, float]  # pinned, pageable (bytes per second)
    block_seconds: float | timing.BlockTimes  # one figure for every block, or per block kind
    whole_too_small: str = ""
    sizes: Mapping[str, int] = field(default_factory=dict)  # each used component's bytes
    nesting: Nesting | None = None  # the blocks ours split for the budget (None: none)

    def __post_init__(self):
        object.__setattr__(self, "rows", MappingProxyType(dict(self.rows)))
        object.__setattr__(self, "sizes", MappingProxyType(dict(self.sizes)))

    def ratio(self, policy: str, against: str) -> float | None:
        """`policy`'s bytes per steady call over `against`'s; None when either is missing or `against` is 0."""
        a, b = self.rows.get(policy), self.rows.get(against)
        return None if a is None or b is None or b.h2d_bytes == 0 else a.h2d_bytes / b.h2d_bytes

    def to_json(self) -> dict:
        model = self.model
        return {"plan": self.plan, "granularity": "block", "steps": model.steps, "budget_bytes": model.budget,
                "prefetch": model.prefetch, "uses": list(model.uses), "resident_bytes": model.resident_bytes,
                "sizes": dict(self.sizes), "exact": self.ours.exact,
                "lp_bound_h2d_bytes": None if self.ours.bound is None else int(self.ours.bound),
                "note": self.ours.note,
                "policies": {name: {**row.to_json(), "vs_chain": self.ratio(name, "chain"),
                                    "vs_group_offloading": self.ratio(name, "group_offloading")}
                             for name, row in self.rows.items()},
                "component_does_not_fit": self.whole_too_small or None,
                "bandwidth_bytes_per_s": {"pinned": self.bandwidth[0], "pageable": self.bandwidth[1]},
                **({"block_seconds": self.block_seconds} if isinstance(self.block_seconds, (int, float)) else
                   {"block_seconds": None, "block_ms": self.block_seconds.to_json()}),
                "host": {**self.pinning.to_json(),
                         "memory": self.host_memory.to_json() if self.host_memory is not None else None},
                "blocks": self.ours.to_json()["blocks"],
                **({"nesting": self.nesting.to_json()} if self.nesting is not None else {})}


def simulate(plan: Plan, component_blocks: Mapping[str, Mapping[str, int]], budget: int, *, steps: int | None = None,
             prefetch: bool | None = None, bandwidth: tuple[float, float] | None = None,
             block_seconds: float | timing.BlockTimes = 0.0,
             spare: int | None = None, host_memory: host.HostMemory | None = None, budget_flag: str | None = None,
             time_limit: float = TIME_LIMIT, pieces: Pieces | None = None) -> BlockSimulation:
    """Every policy on `plan`'s steady call (see the module's docstring). `spare` is the host memory pinning may
    take (default: this host's, `host.read_host_memory()`). Raises `PlanError`: a budget too small for any block
    schedule (PLN409, at `budget_flag` when the budget came from it, else at the plan's `budget`), `pin: true`
    beyond what the host can spare (PLN411, at the plan's `pin`). With `pieces` (`blocks_for(component, splits)`),
    blocks too large for the budget are split (`decide.nest`) for ours; the peers keep their own blocks."""
    nested, given = None, component_blocks
    if pieces is not None:
        nested = decide.nest(plan, pieces, list(component_blocks), budget, steps=steps, prefetch=prefetch)
        component_blocks = nested.blocks if nested.nested else component_blocks
    model = decide.check_blocks(plan, component_blocks, budget, Asker.checking(plan, budget_flag), steps=steps,
                                prefetch=prefetch, nested=nested)
    ours = solve(model, time_limit=time_limit)
    if spare is None:
        host_memory = host_memory or host.read_host_memory()
        spare = host_memory.spare
    mode = plan.pin if plan.keep_host_copy else "false"  # no host copies kept: nothing to pin

    def pins(found: BlockSchedule) -> tuple[host.Pinning, frozenset]:
        moved = {f"{c}/{b}": (found.model.size((c, b)), found.loads((c, b))) for c, b in found.model.keys}
        try:
            chosen = host.choose_pinned(moved, mode, spare, host=host_memory)
        except host.PinError as error:
            raise PlanError([problems.pin_beyond_spare(plan.problem, str(error))]) from None
        return chosen, frozenset(tuple(key.split("/", 1)) for key in chosen.pinned)

    pinning, pinned = pins(ours)
    pinned_bandwidth, pageable_bandwidth = bandwidth or (timing.PINNED_BANDWIDTH, timing.PAGEABLE_BANDWIDTH)

    def timed(found: BlockSchedule, keys: frozenset) -> Timing:
        return timing.timing(found, pinned=keys, pinned_bandwidth=pinned_bandwidth,
                             pageable_bandwidth=pageable_bandwidth,
                             block_seconds=timing.regrouped(block_seconds, model, found.model))

    rows = {OURS: _row(OURS, ours, timed(ours, pinned))}
    whole_too_small = ""
    try:
        whole = solve(blocks.whole_components(model), time_limit=time_limit)
        rows[WHOLE] = _row(WHOLE, whole, timed(whole, pins(whole)[1]))  # ours too: the same pin choice
    except BlocksTooSmall as error:
        whole_too_small = str(error)
    rows["chain"] = _chain_row(plan, model)
    peer_model = replace(model, blocks={name: given[name] for name in model.blocks}) if model.blocks.keys() <= \
        given.keys() else model  # the peers on today's blocks, whatever ours split
    for name, peer in (("group_offloading", peers.group_offloading), ("mmgp", peers.mmgp)):
        found = peer(peer_model)
        rows[name] = _row(name, found, timed(found, frozenset(found.model.keys) if PEERS_PIN_ALL else frozenset()))
    sizes = {name: sum(b.values()) for name, b in model.blocks.items()}
    return BlockSimulation(plan.path, model, ours, rows, pinning, host_memory, (pinned_bandwidth, pageable_bandwidth),
                           block_seconds, whole_too_small, sizes, nested if nested is not None and nested.nested
                           else None)


def _row(name: str, found: BlockSchedule, timing: Timing | None) -> Row:
    return Row(name, found.h2d_bytes, found.first_call_bytes, found.peak_bytes, found.over_budget, timing,
               found.note)


def _chain_row(plan: Plan, model: Model) -> Row:
    """diffusers' chain on whole components: the plan's sequence, its exclusions resident, its steady call (the
    second of two); no time model (it moves whole components between uses, not blocks)."""
    whole = {name: sum(b.values()) for name, b in model.blocks.items()}
    resident = model.resident_bytes
    sizes = {**whole, "__resident__": resident} if resident else whole
    found = schedule.chain([n for n in plan.sequence if n in whole], list(model.uses), sizes, 2,
                           resident=("__resident__",) if resident else (), budget=model.budget)
    return Row("chain", found.h2d_per_call[-1], found.h2d_per_call[0], found.peak_bytes, found.over_budget)


def render_text(result: BlockSimulation) -> str:
    """The text report: the inputs, one row per policy (bytes per steady call, first call, peak, ratios to the
    chain and to group offloading, seconds of transfer and exposed), the LP bound, the host's pinning, notes."""
    model = result.model
    lines = [f"plan {result.plan}: granularity block, {model.steps} step{'s' if model.steps != 1 else ''} per call, "
             f"budget {human(model.budget)} ({model.budget} bytes), prefetch {'on' if model.prefetch else 'off'}",
             "uses per call: " + (" -> ".join(f"{n} (x{model.steps})" if n in model.denoisers and model.steps > 1
                                              else n for n in model.uses) or "(none)"),
             "blocks: " + (", ".join(f"{n} {len(model.blocks[n])} ({human(b)})" for n, b in result.sizes.items())
                           or "(none)")]
    if model.resident_bytes:
        lines.append(f"kept resident (exclude): {human(model.resident_bytes)}")
    if result.nesting is not None:
        lines += [f"nesting: {line}" for line in result.nesting.describe()]
    lines += ["", *_table(result), ""]
    lines += _notes(result)
    return "\n".join(lines) + "\n"


def _table(result: BlockSimulation) -> list[str]:
    rows = [("policy", "h2d/call", "first call", "peak", "vs chain", "vs group off.", "transfer s", "exposed s")]
    for name in POLICIES:
        row = result.rows.get(name)
        if row is None:
            rows.append((name, "does not fit", "", "", "", "", "", ""))
            continue
        cells = [name, human(row.h2d_bytes), human(row.first_call_bytes),
                 human(row.peak_bytes) + (" !" if row.over_budget else "")]
        for against in ("chain", "group_offloading"):
            ratio = result.ratio(name, against)
            cells.append(f"{ratio:.3f}" if ratio is not None else "-")
        timing = row.timing
        cells += [f"{timing.transfer:.2f}", f"{timing.exposed:.2f}"] if timing else ["-", "-"]
        rows.append(tuple(cells))
    bound = result.ours.bound
    if bound is not None:
        ratios = [result.rows[a].h2d_bytes for a in ("chain", "group_offloading")]
        rows.append(("LP bound", human(int(bound)), "", "", *(f"{bound / r:.3f}" if r else "-" for r in ratios),
                     "", ""))
    return aligned(rows)


def _exposed_notes(result: BlockSimulation) -> list[str]:
    """Where each timed policy's exposed seconds accrue: per component (the most first), its seconds, its main
    reason, the forward where the most accrued."""
    lines = []
    for name in POLICIES:
        row = result.rows.get(name)
        if row is None or row.timing is None or not row.timing.exposure:
            continue
        parts = []
        for e in row.timing.exposure[:3]:
            index, use, step, seconds = e.worst
            reason = e.main_reason()
            share = e.by_reason.get(reason, 0.0) / e.total if e.total else 0.0
            parts.append(f"{e.component} {e.total:.3f} s ({share:.0%} {reason}; most at use {use} step {step}: "
                         f"{seconds:.3f} s)")
        more = len(row.timing.exposure) - 3
        lines.append(f"exposed, {name}: " + "; ".join(parts) + (f"; {more} more" if more > 0 else "") + ".")
    return lines


def _notes(result: BlockSimulation) -> list[str]:
    ours, model = result.ours, result.model
    moved = [key for key in model.keys if ours.loads(key)]
    notes = [f"h2d: host-to-device bytes per steady-state call; first call: the call that also loads what stays "
             f"resident. Ours keeps {len(ours.resident)} of {len(model.keys)} blocks resident and moves "
             f"{len(moved)} every call ({len(ours.streamed)} of them more than once); the peak counts room for "
             f"{'two blocks' if model.prefetch else 'one block'} in flight."]
    for name, row in result.rows.items():
        notes.append(f"{name}: {DESCRIPTIONS[name]}" + (f" ({row.note})" if row.note else "") + ".")
    if result.whole_too_small:
        notes.append(f"component: does not fit: {result.whole_too_small}.")
    over = [name for name, row in result.rows.items() if row.over_budget]
    if over:
        notes.append(f"! over the budget: {', '.join(over)} (they do not take a budget, or cannot keep within it).")
    if ours.exact:
        notes.append("ours is exact (HiGHS, relative gap 0); the LP bound is its fractional relaxation.")
    else:
        notes.append(f"ours is not proven optimal: {ours.note}.")
    pinned, pageable = result.bandwidth
    per = result.block_seconds
    compute = (f"{per * 1e3:g} ms of compute per block (--block-ms)" if isinstance(per, (int, float)) else
               f"compute per block kind (--block-ms): {per.describe()}")
    notes.append(f"time model: {pinned / 1e9:g} GB/s from pinned, {pageable / 1e9:g} GB/s from pageable host memory "
                 f"(--bandwidth), {compute}; exposed is the transfer time compute does not hide. The peers pin "
                 "every host copy.")
    notes += _exposed_notes(result)
    pin = result.pinning
    notes.append(f"host: the host copies hold {human(pin.host_bytes)}; {pin.note}.")
    return notes
