"""Bytes moved per image by each policy on real model sizes: diffusers' chain, ours (the budget policy), the peers'
published rules (diffusers' ComponentsManager auto offload, ComfyUI's current and older unloading), and the lower
bound, on the same sizes, budgets and calls. Pure simulation (`planner.simulate`): no torch, a second or two.

    .venv/bin/python benchmarks/transfers.py [--calls 4] [--budgets 6,8,12,16,24,48] [--json PATH]

Sizes are the plans library's at each plan's torch_dtype (`benchmarks/published_sizes.json`, from the published
configs); each plan's call order (`uses`, else its sequence) and exclusions are the simulation's. It prints one
markdown table (GiB per call, the mean over the calls: host to device / device to host, and each policy's
host-to-device bytes over ours) and checks the goals, one PASS or FAIL line each; it exits 1 when one fails:
- ours equals the lower bound (the proven optimum) in every row that fits;
- no other policy moves fewer bytes host to device than ours anywhere;
- ours copies nothing back (device to host 0) while host copies are kept;
- SDXL at 8 GiB over the calls: ours moves at most a quarter of the chain's bytes.
A budget below what one use needs (the largest used component beside the excluded ones) cannot run a policy that
keeps within it: such a row says "does not fit" and shows the chain alone, which ignores the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _progress import progress  # noqa: E402

from planner import load_plan  # noqa: E402
from planner.simulate import components as simulate  # noqa: E402
from planner.units import human  # noqa: E402

SIZES_JSON = Path(__file__).resolve().parent / "published_sizes.json"
GIB = 1 << 30
# (label, plan stem): the models of the README's table
MODELS = (("SD 1.5", "stable-diffusion-1.5"), ("SDXL", "sdxl-base"), ("SD3 medium", "sd3-medium"),
          ("FLUX.1 dev", "flux.1-dev"), ("Wan 2.1 14B t2v", "wan-2.1-t2v-14b"))
BUDGETS_GIB = (6, 8, 12, 16, 24, 48)
CALLS = 4
REFERENCE = ("SDXL", 8 * GIB, 0.25)  # (model, budget, most of the chain's bytes ours may move)
OTHERS = ("chain", *simulate.peers.PEERS)  # every policy compared with ours


@dataclass(frozen=True)
class Row:
    """One model at one budget: its simulation (`result.too_small` set when only the chain could run)."""

    model: str
    result: simulate.Simulation


@dataclass(frozen=True)
class Goal:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


def published_sizes(stem: str, table: Mapping | None = None) -> dict[str, int | None]:
    """{component: bytes, or None for one the repository does not ship} for library plan `stem`: its models and
    the others the plan excludes (SD 1.5's safety_checker), from published_sizes.json. Raises KeyError for a
    plan the file does not size."""
    entry = (table if table is not None else json.loads(SIZES_JSON.read_text(encoding="utf-8")))[stem]
    if entry["unknown"]:
        raise KeyError(f"{stem}: sizes unknown ({'; '.join(entry['unknown'].values())})")
    return {**entry["components"], **{name: other["bytes"] for name, other in entry["others"].items()},
            **{name: None for name in entry["absent"]}}


def rows(models: list[tuple[str, object, Mapping[str, int | None]]], budgets: list[int], calls: int) -> list[Row]:
    """Every (model, budget): `models` holds (label, plan, sizes); each plan's own call order and exclusions."""
    found = []
    for label, plan, sizes in models:
        given = simulate.inputs(plan, sizes)
        found += [Row(label, simulate.run(given, budget, calls)) for budget in budgets]
    return found


def library_models(chosen=MODELS) -> list[tuple[str, object, dict]]:
    """(label, plan, sizes) of the library plans `chosen` ((label, stem) pairs)."""
    table = json.loads(SIZES_JSON.read_text(encoding="utf-8"))
    return [(label, load_plan(ROOT / "plans" / f"{stem}.yaml"), published_sizes(stem, table))
            for label, stem in chosen]


# -- the table ---------------------------------------------------------------------------------------------------
def markdown(found: list[Row]) -> str:
    """The table: per row, the lower bound and each policy's GiB per call host to device / device to host, with
    its host-to-device bytes over ours."""
    head = ["model", "budget", "lower bound", "ours (budget)", *OTHERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in found:
        result = row.result
        cells = [row.model, human(result.budget)]
        if result.too_small is not None:
            needed = result.too_small.needed
            cells += [f"does not fit (needs {human(needed)})", "does not fit", _cell(result, "chain")]
            cells += ["does not fit"] * (len(OTHERS) - 1)
        else:
            cells += [_gib(result.bound.h2d_bytes, result.calls), _cell(result, simulate.BUDGET)]
            cells += [_cell(result, name) for name in OTHERS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _gib(total: int, calls: int) -> str:
    return f"{total / calls / GIB:.2f}"


def _cell(result: simulate.Simulation, policy: str) -> str:
    found = result.schedules[policy]
    ratio = result.ratio(policy)
    shown = f"{_gib(found.h2d_bytes, result.calls)} / {_gib(found.d2h_bytes, result.calls)}"
    if policy != simulate.BUDGET and ratio is not None:
        shown += f" (×{ratio:.2f})"
    return shown + (f" over budget (peak {human(found.peak_bytes)})" if found.over_budget else "")


# -- the goals ---------------------------------------------------------------------------------------------------
def goals(found: list[Row], reference: tuple[str, int, float] = REFERENCE) -> list[Goal]:
    """The four goals over `found`, each PASS or FAIL with what decided it."""
    fits = [row for row in found if row.result.too_small is None]
    return [_optimal(fits), _nobody_below(fits), _nothing_back(fits), _reference(found, reference)]


def _name(row: Row) -> str:
    return f"{row.model} at {human(row.result.budget)}"


def _optimal(fits: list[Row]) -> Goal:
    wrong = [_name(r) for r in fits
             if not (r.result.bound.exact and r.result.ours.h2d_bytes == r.result.bound.h2d_bytes)]
    detail = f"{len(fits) - len(wrong)} of {len(fits)} rows that fit"
    return Goal("ours equals the lower bound in every row", bool(fits) and not wrong,
                detail + (f"; not in {', '.join(wrong)}" if wrong else ""))


def _nobody_below(fits: list[Row]) -> Goal:
    """Among the schedules that keep within the budget: the chain ignores it, and a chain that went over is no
    schedule within the budget (it is named, not counted)."""
    within = [(r, name) for r in fits for name in OTHERS if not r.result.schedules[name].over_budget]
    below = [f"{name} in {_name(r)}" for r, name in within
             if r.result.schedules[name].h2d_bytes < r.result.ours.h2d_bytes]
    ratios = [r.result.ratio(name) for r, name in within if r.result.ratio(name) is not None]
    detail = f"the least ratio to ours is {min(ratios):.2f}" if ratios else "nothing to compare"
    over = [f"{name} in {_name(r)} (peak {human(r.result.schedules[name].peak_bytes)})" for r in fits
            for name in OTHERS if r.result.schedules[name].over_budget]
    if over:
        detail += f"; over the budget, so not compared: {', '.join(over)}"
    return Goal("no other policy within the budget below ours", bool(fits) and not below,
                detail + (f"; below: {', '.join(below)}" if below else ""))


def _nothing_back(fits: list[Row]) -> Goal:
    kept = [r for r in fits if r.result.inputs.keep_host_copy]
    back = [_name(r) for r in kept if r.result.ours.d2h_bytes]
    return Goal("device to host 0 with host copies", bool(kept) and not back,
                f"{len(kept) - len(back)} of {len(kept)} rows" + (f"; bytes back in {', '.join(back)}" if back else ""))


def _reference(found: list[Row], reference: tuple[str, int, float]) -> Goal:
    model, budget, most = reference
    name = f"{model} at {human(budget)}: ours at most {most:g} of the chain"
    row = next((r for r in found if r.model == model and r.result.budget == budget), None)
    if row is None or row.result.too_small is not None:
        return Goal(name, False, "no such row" if row is None else f"does not fit: {row.result.too_small}")
    ours, chain = row.result.ours.h2d_bytes, row.result.schedules["chain"].h2d_bytes
    share = ours / chain if chain else 0.0
    return Goal(name, ours <= most * chain, f"{human(ours)} against {human(chain)} over {row.result.calls} calls: "
                f"{share:.3f}")


def report(found: list[Row]) -> str:
    calls = found[0].result.calls if found else CALLS
    return (f"GiB per call over {calls} calls, host to device / device to host; (×r): host-to-device bytes over "
            "ours.\n\n" + markdown(found))


def _budgets(text: str) -> list[int]:
    """`--budgets 6,8,12`: GiB -> bytes."""
    try:
        found = [int(float(b) * GIB) for b in text.split(",")]
    except ValueError:
        found = []
    if not found or min(found) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write GiB figures separated by commas, such as 6,8,12")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, choices=range(1, 1001), default=CALLS, metavar="N",
                        help="pipeline calls, 1 to 1000 (default: %(default)s)")
    parser.add_argument("--budgets", type=_budgets, default=[b * GIB for b in BUDGETS_GIB], metavar="GIB,...",
                        help=f"budgets in GiB (default: {','.join(map(str, BUDGETS_GIB))})")
    parser.add_argument("--json", metavar="PATH", help="also write every row's simulation (figures, no events)")
    args = parser.parse_args(argv)
    found = []
    for label, plan, sizes in library_models():
        progress(f"{label}: {len(args.budgets)} budgets, {args.calls} calls")
        found += rows([(label, plan, sizes)], args.budgets, args.calls)
    print(report(found))
    checked = goals(found)
    for goal in checked:
        print(goal.line())
    if args.json:
        Path(args.json).write_text(json.dumps([_json(r) for r in found], indent=1), encoding="utf-8")
    return 0 if all(goal.passed for goal in checked) else 1


def _json(row: Row) -> dict:
    data = row.result.to_json()
    for policy in data["policies"].values():
        del policy["events"]
    return {"model": row.model, **data}


if __name__ == "__main__":
    sys.exit(main())
