"""Block residency on real model sizes: host-to-device bytes per steady call of our block schedule (`granularity:
block`), its LP bound, the whole-component optimum, diffusers' chain, diffusers' group offloading and mmgp's rule,
with the time model for ours and group offloading. Pure simulation (`planner.blocks`, HiGHS): no torch.

    .venv/bin/python benchmarks/blocks.py [--budgets 6,8,12,16,24] [--bandwidth 24,12] [--block-ms 0]
                                          [--pin true] [--time-limit 60] [--json PATH]

Sizes are each plan's per-block bytes at its torch_dtype (`benchmarks/published_sizes.json`, "blocks"); each
plan's call order (`uses`, else its sequence) and exclusions; the denoiser's forwards per call (SDXL 30 steps,
FLUX.1 dev 28, Wan 2.1 14B 50 steps with separate guidance forwards: 100), prefetch on. It prints one markdown
table and checks the goals, one PASS or FAIL line each; it exits 1 when one fails:
- SDXL at 6 GiB: ours moves at most 0.09 of the chain's bytes;
- FLUX.1 dev at 16 GiB: ours moves at most 0.35 of group offloading's bytes;
- ours is never above the whole-component optimum where both fit;
- the LP bound is never above ours;
- replaying our schedule block by block moves what the schedule counts, and its peak keeps within the budget.
A budget that cannot hold one pass of a component (its rest and its largest block in flight, twice with
prefetch) says "does not fit" for ours; the peers' rules take no budget and are shown anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _progress import progress  # noqa: E402
from transfers import Goal, published_sizes  # noqa: E402

from planner import load_plan  # noqa: E402
from planner.blocknames import REST  # noqa: E402
from planner.budget import blocks, peers, timing  # noqa: E402
from planner.budget import components as schedule  # noqa: E402
from planner.budget import solve as solve_mod  # noqa: E402
from planner.budget.blocks import BlockSchedule, BlocksTooSmall, Model  # noqa: E402
from planner.budget.timing import Timing  # noqa: E402
from planner.simulate import components as simulate  # noqa: E402
from planner.units import human  # noqa: E402

SIZES_JSON = Path(__file__).resolve().parent / "published_sizes.json"
GIB = 1 << 30
GB = 10 ** 9
# (label, plan stem, the denoiser's forwards per call): SDXL batches its guidance into one forward per step (30
# steps), FLUX.1 dev is guidance-distilled (28 steps, one forward each), Wan 2.1 runs the conditional and the
# unconditional forward one after the other (50 steps at guidance 5: 100 forwards)
MODELS = (("SDXL", "sdxl-base", 30), ("FLUX.1 dev", "flux.1-dev", 28), ("Wan 2.1 14B t2v", "wan-2.1-t2v-14b", 100))
BUDGETS_GIB = (6, 8, 12, 16, 24)
# (model, budget, the peer, the most of its bytes ours may move): the two goals
CHAIN_GOAL = ("SDXL", 6 * GIB, "chain", 0.09)
GROUP_GOAL = ("FLUX.1 dev", 16 * GIB, "group offloading", 0.35)


@dataclass(frozen=True)
class Settings:
    """The time model's inputs (bytes per second, seconds per block, whether moved blocks are pinned) and the
    solver's time limit (seconds)."""

    pinned_bandwidth: float = timing.PINNED_BANDWIDTH
    pageable_bandwidth: float = timing.PAGEABLE_BANDWIDTH
    block_seconds: float = 0.0
    pin: bool = True
    time_limit: float = solve_mod.TIME_LIMIT

    def to_json(self) -> dict:
        return {"pinned_bandwidth_gb_s": self.pinned_bandwidth / GB, "pageable_bandwidth_gb_s":
                self.pageable_bandwidth / GB, "block_seconds": self.block_seconds, "pin": self.pin,
                "time_limit_s": self.time_limit}


class Chain(NamedTuple):
    """diffusers' chain in a steady call: host-to-device bytes and the most bytes on the device (it takes no
    budget)."""

    h2d_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class Row:
    """One model at one budget. `ours` is None when the budget cannot hold one pass (`too_small` says why), `whole`
    None when no whole-component schedule fits; `replayed` is our schedule played block by block over two calls
    (bytes per call, peak bytes); `seconds` the wall time the row took."""

    model: str
    budget: int
    steps: int
    chain: Chain
    ours: BlockSchedule | None
    too_small: BlocksTooSmall | None
    whole: BlockSchedule | None
    group: BlockSchedule
    mmgp: BlockSchedule
    ours_time: Timing | None
    group_time: Timing
    replayed: tuple[tuple[int, ...], int] | None
    seconds: float


# -- the inputs ----------------------------------------------------------------------------------------------------
def published_blocks(stem: str, table: Mapping | None = None) -> dict[str, dict[str, int]]:
    """{component: {block: bytes} in run order} of library plan `stem` from published_sizes.json: its per-block
    bytes, a component without them (and an excluded one the file sizes under "others") as one REST block.
    Components the repository does not ship are absent. Raises KeyError for a plan the file does not size."""
    entry = (table if table is not None else json.loads(SIZES_JSON.read_text(encoding="utf-8")))[stem]
    if entry["unknown"]:
        raise KeyError(f"{stem}: sizes unknown ({'; '.join(entry['unknown'].values())})")
    found = {name: dict(entry["blocks"].get(name) or {REST: size}) for name, size in entry["components"].items()}
    for name, other in entry["others"].items():
        found.setdefault(name, {REST: other["bytes"]})
    return found


def chain_of(plan, sizes: Mapping[str, int | None]) -> Chain:
    """diffusers' chain (`enable_model_cpu_offload`, the plan's sequence) in a steady call, as
    `planner.schedule.chain` counts it (the second of two calls): every used component once."""
    given = simulate.inputs(plan, sizes, complete=False)
    found = schedule.chain(given.sequence, given.uses, given.sizes, 2, resident=given.resident)
    return Chain(found.h2d_per_call[-1], found.peak_bytes)


def library_models(chosen=MODELS) -> list[tuple[str, object, dict, Chain, int]]:
    """(label, plan, blocks, chain, steps) of the library plans `chosen` ((label, stem, steps) triples)."""
    table = json.loads(SIZES_JSON.read_text(encoding="utf-8"))
    found = []
    for label, stem, steps in chosen:
        plan = load_plan(ROOT / "plans" / f"{stem}.yaml")
        found.append((label, plan, published_blocks(stem, table), chain_of(plan, published_sizes(stem, table)),
                      steps))
    return found


# -- one row -------------------------------------------------------------------------------------------------------
def pinned_keys(found: BlockSchedule, settings: Settings) -> frozenset[tuple[str, str]]:
    """The blocks the time model copies at the pinned bandwidth: every block that moves with `pin` (as `pin: true`
    pins them, and as group offloading with streams pins every group), none without."""
    if not settings.pin:
        return frozenset()
    return frozenset(key for key in found.model.keys if found.loads(key) > 0)


def time_of(found: BlockSchedule, settings: Settings) -> Timing:
    return timing.timing(found, pinned=pinned_keys(found, settings), pinned_bandwidth=settings.pinned_bandwidth,
                         pageable_bandwidth=settings.pageable_bandwidth, block_seconds=settings.block_seconds)


def build_row(label: str, model: Model, chain: Chain, settings: Settings = Settings()) -> Row:
    """Every figure of `model` (one call's uses, blocks, budget, steps): ours solved exactly (within the time
    limit), the whole-component optimum, the peers' rules on the same blocks, the time model, the replay."""
    start = time.perf_counter()
    ours = too_small = ours_time = replayed = None
    try:
        ours = solve_mod.solve(model, time_limit=settings.time_limit)
    except BlocksTooSmall as exc:
        too_small = exc
    try:
        whole = solve_mod.solve(blocks.whole_components(model), time_limit=settings.time_limit)
    except BlocksTooSmall:
        whole = None
    if ours is not None:
        ours_time = time_of(ours, settings)
        moved, peak = blocks.replay(ours)
        replayed = (tuple(moved), peak)
    group = peers.group_offloading(model)
    return Row(label, model.budget, model.steps, chain, ours, too_small, whole, group, peers.mmgp(model),
               ours_time, time_of(group, settings), replayed, time.perf_counter() - start)


def library_rows(models: list[tuple[str, object, dict, Chain, int]], budgets: list[int],
                 settings: Settings = Settings()) -> list[Row]:
    """Every (model, budget) of `models` ((label, plan, blocks, chain, steps)), prefetch on."""
    found = []
    for label, plan, sizes, chain, steps in models:
        for budget in budgets:
            progress(f"{label} at {human(budget)}, {steps} steps")
            model = blocks.model_for(plan, sizes, budget, steps=steps, prefetch=True, granularity="block")
            found.append(build_row(label, model, chain, settings))
    return found


# -- the table -----------------------------------------------------------------------------------------------------
HEAD = ["model", "budget", "forwards", "ours (block)", "LP bound", "whole components", "chain", "group offloading",
        "mmgp", "ours / chain", "ours / group", "bound / group", "ours s: transfer / exposed",
        "group s: transfer / exposed", "row s"]


def markdown(found: list[Row]) -> str:
    """The table: GB (10^9 bytes) host to device per steady call of each policy, the ratios and the time model."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for row in found:
        lines.append("| " + " | ".join(_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def _cells(row: Row) -> list[str]:
    chain, group = row.chain.h2d_bytes, row.group.h2d_bytes
    head = [row.model, human(row.budget), str(row.steps)]
    whole = "does not fit" if row.whole is None else _gb(row.whole.h2d_bytes) + ("" if row.whole.exact else "*")
    chained = _gb(chain) + _over_budget(row.chain.peak_bytes, row.budget)
    peers = [whole, chained, _gb(group) + _over(row.group), _gb(row.mmgp.h2d_bytes) + _over(row.mmgp)]
    timed = _seconds(row.group_time)
    if row.ours is None:
        needed = f"does not fit (needs {human(row.too_small.needed)})"
        return [*head, needed, "-", *peers, "-", "-", "-", "-", timed, f"{row.seconds:.1f}"]
    ours, bound = row.ours.h2d_bytes, row.ours.bound
    return [*head, _gb(ours) + ("" if row.ours.exact else "*"), "-" if bound is None else _gb(bound), *peers,
            _ratio(ours, chain), _ratio(ours, group), "-" if bound is None else _ratio(bound, group),
            _seconds(row.ours_time), timed, f"{row.seconds:.1f}"]


def _gb(value: float) -> str:
    return f"{value / GB:.2f}"


def _ratio(part: float, whole: float) -> str:
    found = _fraction(part, whole)
    return "-" if found is None else f"{found:.3f}"


def _seconds(found: Timing) -> str:
    return f"{found.transfer:.2f} / {found.exposed:.2f}"


def _over(found: BlockSchedule) -> str:
    return _over_budget(found.peak_bytes, found.model.budget)


def _over_budget(peak: int, budget: int) -> str:
    return f" over budget (peak {human(peak)})" if peak > budget else ""


def legend(settings: Settings) -> str:
    pin = "pinned" if settings.pin else "pageable"
    bandwidth = (settings.pinned_bandwidth if settings.pin else settings.pageable_bandwidth) / GB
    return ("GB (10^9 bytes) host to device per steady-state call. ours: the exact block schedule within the budget "
            "(* where the solver's time limit stopped it before proving the optimum); LP bound: its fractional "
            "relaxation, no schedule moves fewer; whole components: the same program with each component one "
            "block; chain: diffusers' enable_model_cpu_offload, every used component once per call; group "
            "offloading: block level, one block per group, streams every block every forward (takes no budget); "
            "mmgp: as many evenly spread denoiser blocks resident as the budget allows (\"over budget\": a policy "
            "that takes no budget, or mmgp with none resident, passing it). Ratios: host-to-device bytes over the "
            f"peer's. Time model: seconds per call copying ({pin} blocks at {bandwidth:g} GB/s) and the part "
            f"compute does not hide, with {settings.block_seconds * 1000:g} ms of compute per block. row s: the "
            "row's wall time, mostly the solver.\n")


# -- the goals -----------------------------------------------------------------------------------------------------
def goals(found: list[Row], chain_goal=CHAIN_GOAL, group_goal=GROUP_GOAL) -> list[Goal]:
    """The five goals over `found`, each PASS or FAIL with what decided it."""
    fits = [row for row in found if row.ours is not None]
    return [_share(found, chain_goal), _share(found, group_goal), _never_above_whole(fits), _bound_below(fits),
            _replay_agrees(fits)]


def _name(row: Row) -> str:
    return f"{row.model} at {human(row.budget)}"


def _share(found: list[Row], goal: tuple[str, int, str, float]) -> Goal:
    model, budget, peer, most = goal
    name = f"{model} at {human(budget)}: ours at most {most:g} of {peer}'s bytes"
    row = next((r for r in found if r.model == model and r.budget == budget), None)
    if row is None or row.ours is None:
        return Goal(name, False, "no such row" if row is None else f"does not fit: {row.too_small}")
    theirs = row.chain.h2d_bytes if peer == "chain" else row.group.h2d_bytes
    ours = row.ours.h2d_bytes
    share = ours / theirs if theirs else 0.0
    return Goal(name, ours <= most * theirs, f"{_gb(ours)} GB against {_gb(theirs)} GB per call at {row.steps} "
                f"steps: {share:.3f}")


def _never_above_whole(fits: list[Row]) -> Goal:
    both = [r for r in fits if r.whole is not None]
    above = [_name(r) for r in both if r.ours.h2d_bytes > r.whole.h2d_bytes]
    return Goal("ours never above the whole-component optimum", bool(both) and not above,
                f"{len(both) - len(above)} of {len(both)} rows where both fit"
                + (f"; above in {', '.join(above)}" if above else ""))


def _bound_below(fits: list[Row]) -> Goal:
    wrong = [_name(r) for r in fits if r.ours.bound is None or r.ours.bound > r.ours.h2d_bytes]
    unproven = [_name(r) for r in fits if not r.ours.exact]
    detail = f"{len(fits) - len(wrong)} of {len(fits)} rows that fit"
    detail += f"; not proven optimal (time limit): {', '.join(unproven)}" if unproven else "; every one proven optimal"
    return Goal("the LP bound never above ours", bool(fits) and not wrong,
                detail + (f"; bound missing or above ours in {', '.join(wrong)}" if wrong else ""))


def _replay_agrees(fits: list[Row]) -> Goal:
    wrong = [_name(r) for r in fits if r.replayed[0][-1] != r.ours.h2d_bytes]
    over = [r for r in fits if r.replayed[1] > r.budget]
    good = len([r for r in fits if r.replayed[0][-1] == r.ours.h2d_bytes and r.replayed[1] <= r.budget])
    detail = f"{good} of {len(fits)} rows"
    if wrong:
        detail += f"; bytes differ in {', '.join(wrong)}"
    if over:
        detail += "; over the budget in " + ", ".join(f"{_name(r)} (peak {human(r.replayed[1])})" for r in over)
    return Goal("the replay moves the schedule's bytes within the budget", bool(fits) and not wrong and not over,
                detail)


# -- JSON, arguments, main -----------------------------------------------------------------------------------------
def row_json(row: Row) -> dict:
    """Every figure of `row`, bytes as integers."""
    data = {"model": row.model, "budget_bytes": row.budget, "steps": row.steps, "row_seconds": row.seconds,
            "chain_h2d_bytes": row.chain.h2d_bytes, "chain_peak_bytes": row.chain.peak_bytes,
            "group_offloading": row.group.to_json(), "group_offloading_time": row.group_time.to_json(),
            "mmgp": row.mmgp.to_json(), "whole_components": None if row.whole is None else row.whole.to_json()}
    if row.ours is None:
        data.update(ours=None, does_not_fit=str(row.too_small), least_budget_bytes=row.too_small.needed)
        return data
    ours, bound, group = row.ours.h2d_bytes, row.ours.bound, row.group.h2d_bytes
    data.update(ours=row.ours.to_json(), ours_time=row.ours_time.to_json(),
                replay={"h2d_bytes_per_call": list(row.replayed[0]), "peak_bytes": row.replayed[1]},
                ratios={"ours_over_chain": _fraction(ours, row.chain.h2d_bytes),
                        "ours_over_group_offloading": _fraction(ours, group),
                        "bound_over_group_offloading": None if bound is None else _fraction(bound, group)})
    return data


def _fraction(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _pair(text: str) -> tuple[float, float]:
    """`--bandwidth 24,12`: pinned and pageable GB/s -> bytes per second."""
    try:
        pinned, pageable = (float(part) for part in text.split(","))
    except ValueError:
        pinned = pageable = -1.0
    if not (pinned > 0 and pageable > 0) or pinned == float("inf") or pageable == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: write two GB/s figures above 0, pinned then pageable, "
                                         "such as 24,12")
    return pinned * GB, pageable * GB


def _budgets(text: str) -> list[int]:
    """`--budgets 6,8,12`: GiB -> bytes."""
    try:
        found = [int(float(b) * GIB) for b in text.split(",")]
    except (ValueError, OverflowError):
        found = []
    if not found or min(found) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write GiB figures above 0 separated by commas, such as 6,8,12")
    return found


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: write a number of 0 or more")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write a number above 0")
    return value


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=_budgets, default=[b * GIB for b in BUDGETS_GIB], metavar="GIB,...",
                        help=f"budgets in GiB (default: {','.join(map(str, BUDGETS_GIB))})")
    parser.add_argument("--bandwidth", type=_pair, metavar="PINNED,PAGEABLE",
                        default=(timing.PINNED_BANDWIDTH, timing.PAGEABLE_BANDWIDTH),
                        help=f"host-to-device GB/s from pinned and from pageable memory (default: "
                             f"{timing.PINNED_BANDWIDTH / GB:g},{timing.PAGEABLE_BANDWIDTH / GB:g})")
    parser.add_argument("--block-ms", type=_non_negative, default=0.0, metavar="MS",
                        help="compute time per block in milliseconds (default: 0: nothing hides a copy)")
    parser.add_argument("--pin", choices=("true", "false"), default="true",
                        help="copy the blocks that move from pinned memory (default) or pageable memory")
    parser.add_argument("--time-limit", type=_positive, default=solve_mod.TIME_LIMIT, metavar="S",
                        help="seconds the solver may spend per schedule (default: %(default)g)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure of every row")
    args = parser.parse_args(argv)
    pinned, pageable = args.bandwidth
    return args, Settings(pinned, pageable, args.block_ms / 1000, args.pin == "true", args.time_limit)


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    start = time.perf_counter()
    found = library_rows(library_models(), args.budgets, settings)
    wall = time.perf_counter() - start
    print(legend(settings))
    print(markdown(found))
    checked = goals(found)
    for goal in checked:
        print(goal.line())
    slowest = max(found, key=lambda r: r.seconds)
    print(f"\n{len(found)} rows in {wall:.1f} s (slowest: {_name(slowest)}, {slowest.seconds:.1f} s)")
    if args.json:
        data = {"settings": settings.to_json(), "wall_seconds": wall, "rows": [row_json(r) for r in found],
                "goals": [{"name": g.name, "passed": g.passed, "detail": g.detail} for g in checked]}
        try:
            Path(args.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0 if all(goal.passed for goal in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
