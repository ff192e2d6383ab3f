"""`planner simulate` at component granularity: a plan's residency over several pipeline calls under every policy,
on known sizes.

Pure (no torch): the plan and the per-component sizes go in, `planner.budget` makes the schedules, and a
`Simulation` comes out with the figures each policy costs: diffusers' chain (the plan's sequence, its exclusions
resident), ours (`budget`: the fewest host-to-device bytes within the budget, `schedule.optimal`), the peers'
published rules (`peers.PEERS`) and the lower bound. Every policy sees the same inputs: the plan's call order
(`uses`, else its sequence), the same sizes, budget and number of calls.

    inputs = components.inputs(plan, {"text_encoder": 246120960, "unet": 1719041928, "vae": 167307726})
    result = components.run(inputs, budget=8 << 30, calls=4)    # or components.simulate(plan, sizes, 4, 8 << 30)
    result.to_json(); components.render_text(result); plot.plot(result, "timeline.png")

Sizes map a component to its bytes as loaded, or to None for a component the pipeline lacks (None in the
folder): skipped, as diffusers skips it. A component of the plan without either is a problem (PLN410); so is a
budget that cannot hold the largest component used beside the excluded ones (PLN409), for every policy but the
chain, which ignores the budget. A combined pipeline's connected chains are simulated as the one chain of the plan's
sequence: for a call order that follows the sequence they move the same bytes.

The timeline is `planner.simulate.plot`; the table layout `planner.simulate.table`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from planner.budget import components as schedule
from planner.budget import decide, peers
from planner.budget.problems import Asker
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN410
from planner.rules.context import did_you_mean, some
from planner.simulate.table import aligned
from planner.units import human, parse_size

BUDGET = "budget"  # our policy's name in every output


POLICIES = ("chain", BUDGET, *peers.PEERS)  # the order every output lists them in


DEFAULT_CALLS = 4


DESCRIPTIONS = {"chain": "diffusers' enable_model_cpu_offload",
                BUDGET: "the fewest host-to-device bytes within the budget",
                "components_manager": "diffusers' ComponentsManager auto offload",
                "comfyui": "ComfyUI's free_memory (smallest first)",
                "comfyui_lru": "ComfyUI's older rule (least recently used first)"}


class SimulationError(PlanError):
    """Inputs no simulation can be made from; `problems` says why, each located at the plan key or the flag."""


@dataclass(frozen=True)
class Inputs:
    """What every policy is given: the chain's `sequence`, one call's `uses`, the `sizes` of the components
    simulated (absent ones left out, pipeline order kept), the `resident` components (the plan's exclusions),
    the `skipped` ones (None in the pipeline), and whether ours keeps host copies."""

    sequence: tuple[str, ...]
    uses: tuple[str, ...]
    sizes: Mapping[str, int]
    resident: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    keep_host_copy: bool = True
    plan: str = ""  # the plan's path, for titles
    policy: str = "chain"  # the plan's own policy

    def __post_init__(self):
        object.__setattr__(self, "sizes", MappingProxyType(dict(self.sizes)))


@dataclass(frozen=True)
class Simulation:
    """Every policy's schedule on the same inputs, budget and calls. `too_small` is set when the budget cannot
    hold the largest used component beside the resident ones: then only the chain ran (`schedules` holds it
    alone) and `bound` is None."""

    inputs: Inputs
    calls: int
    budget: int
    schedules: Mapping[str, schedule.Schedule] = field(default_factory=dict)
    bound: schedule.Bound | None = None
    too_small: schedule.BudgetTooSmall | None = None

    @property
    def ours(self) -> schedule.Schedule | None:
        return self.schedules.get(BUDGET)

    def ratio(self, policy: str) -> float | None:
        """`policy`'s host-to-device bytes over ours; None when ours did not run or moved nothing."""
        ours = self.ours
        if ours is None or policy not in self.schedules or ours.h2d_bytes == 0:
            return None
        return self.schedules[policy].h2d_bytes / ours.h2d_bytes

    def to_json(self) -> dict:
        """The `planner simulate --format json` document: {"calls", "budget_bytes", "lower_bound_h2d_bytes",
        "policies": {name: {"h2d_bytes", "d2h_bytes", "peak_bytes", per call, "events", ...}}} and the inputs."""
        inputs = self.inputs
        policies = {}
        for name, found in self.schedules.items():
            policies[name] = {**found.to_json(), "over_budget": found.over_budget, "h2d_ratio": self.ratio(name)}
        data = {"plan": inputs.plan, "plan_policy": inputs.policy, "calls": self.calls, "budget_bytes": self.budget,
                "lower_bound_h2d_bytes": self.bound.h2d_bytes if self.bound else None,
                "lower_bound_exact": self.bound.exact if self.bound else None,
                "keep_host_copy": inputs.keep_host_copy, "sizes": dict(inputs.sizes), "uses": list(inputs.uses),
                "resident": list(inputs.resident), "skipped": list(inputs.skipped), "policies": policies}
        if self.bound and self.bound.note:
            data["lower_bound_note"] = self.bound.note
        if self.too_small:
            data["does_not_fit"] = str(self.too_small)
        return data


def inputs(plan: Plan, sizes: Mapping[str, int | None], *, where: str = "--sizes",
           complete: bool = True) -> Inputs:
    """The inputs of `plan` on `sizes` ({name: bytes, or None for a component the pipeline lacks}).

    With `complete` (sizes given by hand), every component the plan offloads, excludes or uses needs an entry and
    every entry must name one of the plan's components (own_hook included); each miss is a PLN410 problem located
    at `where`. Without it (sizes read from a folder, already checked against the plan), a plan component without
    a size is absent. Raises `SimulationError` with every problem."""
    planned = list(dict.fromkeys([*plan.sequence, *sorted(plan.exclude), *plan.call_order]))
    if complete:
        problems = _coverage(planned, [*planned, *sorted(plan.own_hook)], sizes, where)
        if problems:
            raise SimulationError(problems)
    known = {name: size for name, size in sizes.items() if size is not None and name in planned}
    return Inputs(sequence=tuple(plan.sequence), uses=tuple(n for n in plan.call_order if n in known), sizes=known,
                  resident=tuple(sorted(n for n in plan.exclude if n in known)),
                  skipped=tuple(n for n in planned if n not in known), keep_host_copy=plan.keep_host_copy,
                  plan=plan.path, policy=plan.policy)


def _coverage(planned: list[str], allowed: list[str], sizes: Mapping[str, int | None], where: str) -> list[Problem]:
    """PLN410 for each planned component `sizes` lacks and each entry naming no plan component."""
    problems = []
    for name in planned:
        if name not in sizes:
            problems.append(PLN410.problem(where, f"{name!r}, a component of the plan, has no size",
                                           f"add {name}=SIZE, or {name}=none when the pipeline has none"))
    unsized = [name for name in planned if name not in sizes]
    for name in sizes:
        if name not in allowed:
            hint = difflib.get_close_matches(name, unsized, n=1) or difflib.get_close_matches(name, allowed, n=1)
            problems.append(PLN410.problem(where, f"{name!r} is not a component of the plan (it has "
                                           f"{some(allowed)})", did_you_mean(hint) if hint else
                                           f"remove {name}=... from {where}"))
    return problems


ABSENT = "none"  # a --sizes value for a component the pipeline lacks (None in its folder)


def parse_sizes(text: str) -> dict[str, int | None]:
    """`--sizes` as written: `name=SIZE,name=SIZE,...` (SIZE as `planner.units.parse_size` reads it, or `none` for
    a component the pipeline lacks) -> {name: bytes or None}, in the order given. Raises ValueError saying what is
    wrong with the first bad entry (no `=`, an empty name, a name given twice, a size that does not parse)."""
    found: dict[str, int | None] = {}
    for entry in text.split(","):
        name, equals, value = (part.strip() for part in entry.partition("="))
        if not equals or not name:
            raise ValueError(f"{entry.strip()!r} is not NAME=SIZE: write e.g. unet=4.78GiB,vae=160MiB")
        if name in found:
            raise ValueError(f"{name!r} is given twice: keep one")
        try:
            found[name] = None if value == ABSENT else parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return found


def run(given: Inputs, budget: int, calls: int = DEFAULT_CALLS) -> Simulation:
    """Every policy on `given` within `budget` bytes over `calls` calls. The chain always runs (it ignores the
    budget); when the budget cannot hold what one use needs, the others cannot and `too_small` says why."""
    sizes, uses, resident = given.sizes, given.uses, given.resident
    schedules = {"chain": schedule.chain(given.sequence, uses, sizes, calls, resident=resident, budget=budget)}
    try:
        bound = schedule.lower_bound(uses, sizes, budget, calls, resident=resident)
    except schedule.BudgetTooSmall as too_small:
        return Simulation(given, calls, budget, MappingProxyType(schedules), None, too_small)
    schedules[BUDGET] = schedule.optimal(uses, sizes, budget, calls, resident=resident,
                                         keep_host_copy=given.keep_host_copy)
    for name, peer in peers.PEERS.items():
        schedules[name] = peer(uses, sizes, budget, calls, resident=resident)
    return Simulation(given, calls, budget, MappingProxyType(schedules), bound)


def simulate(plan: Plan, sizes: Mapping[str, int | None], calls: int = DEFAULT_CALLS, budget: int | None = None, *,
             where: str = "--sizes", complete: bool = True, budget_flag: str = "--budget") -> Simulation:
    """`planner simulate`: `run` on `inputs(plan, sizes)` with `budget` (else the plan's). Raises
    `SimulationError`: sizes that do not cover the plan (PLN410), a budget too small for the components (PLN409,
    at `budget_flag` when `budget` is given, else at the plan's `budget`). Raises ValueError when there is no
    budget at all (the caller's usage error: the plan's own budget may come from the free memory at apply time)."""
    given = inputs(plan, sizes, where=where, complete=complete)
    chosen = budget if budget is not None else plan.budget
    if chosen is None:
        raise ValueError(no_budget(plan))
    asker = Asker.checking(plan, budget_flag if budget is not None else None)
    try:
        used = {name: size for name, size in given.sizes.items() if name in given.uses or name in given.resident}
        decide.check_components(plan, used, chosen, asker)  # what one call uses, beside the exclusions
    except PlanError as error:
        raise SimulationError(error.problems) from None
    return run(given, chosen, calls)


def no_budget(plan: Plan) -> str:
    """Why `plan` gives no budget to simulate with, and what to pass."""
    if plan.reserve is not None:
        return (f"the plan's budget is the device's free memory at apply time minus its reserve "
                f"({human(plan.reserve)}), which a simulation cannot know: pass --budget SIZE (e.g. --budget 8GiB)")
    return "the plan sets no budget: pass --budget SIZE (e.g. --budget 8GiB), or write budget: in the plan"


def render_text(result: Simulation) -> str:
    """The text report: the inputs, then one row per policy (host-to-device and device-to-host bytes in total and
    per call, the peak resident, the ratio of its host-to-device bytes to ours), then the lower bound."""
    given = result.inputs
    lines = [f"plan {given.plan}: {result.calls} call{'s' if result.calls != 1 else ''}, budget "
             f"{human(result.budget)} ({result.budget} bytes), the plan's policy: {given.policy}",
             f"uses per call: {' -> '.join(given.uses) or '(none)'}",
             "sizes: " + (", ".join(f"{n} {human(b)}" for n, b in given.sizes.items()) or "(none)")]
    if given.resident:
        lines.append("kept resident (exclude): " + ", ".join(given.resident))
    if given.skipped:
        lines.append("skipped (None in the pipeline): " + ", ".join(given.skipped))
    lines += ["", *_table(result), ""]
    lines += _notes(result)
    return "\n".join(lines) + "\n"


def _table(result: Simulation) -> list[str]:
    rows = [("policy", "h2d total", "h2d/call", "d2h total", "d2h/call", "peak", "h2d vs ours")]
    calls = result.calls
    for name in POLICIES:
        found = result.schedules.get(name)
        if found is None:
            rows.append((label(name), "does not fit", "", "", "", "", ""))
            continue
        ratio = result.ratio(name)
        rows.append((label(name), human(found.h2d_bytes), human(found.h2d_bytes // calls), human(found.d2h_bytes),
                     human(found.d2h_bytes // calls), human(found.peak_bytes) + (" !" if found.over_budget else ""),
                     f"{ratio:.2f}" if ratio is not None else "-"))
    if result.bound is not None:
        bound = result.bound.h2d_bytes
        rows.append(("lower bound", human(bound), human(bound // calls), "", "", "", ""))
    return aligned(rows)


def label(name: str) -> str:
    return f"{name} (ours)" if name == BUDGET else name


def _notes(result: Simulation) -> list[str]:
    """What the figures mean, and what the table cannot say."""
    notes = [f"h2d: host to device, d2h: device to host; per call is the mean over {result.calls} calls "
             "(--format json gives each call and every event)."]
    chain = result.schedules["chain"]
    if chain.over_budget:
        notes.append(f"! the chain ignores the budget: it held {human(chain.peak_bytes)} on the device, over the "
                     f"budget of {human(result.budget)}.")
    over = [name for name, found in result.schedules.items() if name != "chain" and found.over_budget]
    if over:  # the scheduler's own contract forbids it: say so loudly rather than hide it
        notes.append(f"! over the budget: {', '.join(over)}.")
    if result.too_small is not None:
        notes.append(f"does not fit: {result.too_small}.")
    ours = result.ours
    if ours is not None:
        if result.inputs.keep_host_copy:
            notes.append("ours keeps the host copies, so an eviction copies nothing back; the chain and the peers "
                         "move modules with .to(), so their offloads copy the bytes back.")
        else:
            notes.append("ours keeps no host copies (keep_host_copy: false): its evictions copy the bytes back, as "
                         "the chain's and the peers' do.")
        if not ours.exact:
            notes.append(f"ours is not proven optimal here: {ours.note}.")
    if result.bound is not None:
        kind = "the exact optimum" if result.bound.exact else f"a bound ({result.bound.note})"
        notes.append(f"lower bound: the least host-to-device bytes any schedule within the budget moves, "
                     f"{kind}.")
    return notes
