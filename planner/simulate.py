"""`planner simulate`: a plan's residency over several pipeline calls under every policy, on known sizes.

Pure (no torch): the plan and the per-component sizes go in, `planner.schedule` makes the schedules, and a
`Simulation` comes out with the figures each policy costs: diffusers' chain (the plan's sequence, its exclusions
resident), ours (`budget`: the fewest host-to-device bytes within the budget, `schedule.optimal`), the peers'
published rules (`schedule.PEERS`) and the lower bound. Every policy sees the same inputs: the plan's call order
(`uses`, else its sequence), the same sizes, budget and number of calls.

    inputs = simulate.inputs(plan, {"text_encoder": 246120960, "unet": 1719041928, "vae": 167307726})
    result = simulate.run(inputs, budget=8 << 30, calls=4)      # or simulate.simulate(plan, sizes, 4, 8 << 30)
    result.to_json(); simulate.render_text(result); simulate.plot(result, "timeline.png")

Sizes map a component to its bytes as loaded, or to None for a component the pipeline lacks (None in the
folder): skipped, as diffusers skips it. A component of the plan without either is a problem (PLN410); so is a
budget that cannot hold the largest component used beside the excluded ones (PLN409), for every policy but the
chain, which ignores the budget. A combined pipeline's connected chains are simulated as the one chain of the plan's
sequence: for a call order that follows the sequence they move the same bytes.

`plot` draws with matplotlib (the `plot` extra), imported only there.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from planner import schedule
from planner.plan import Plan, PlanError, Problem
from planner.rules import PLN409, PLN410
from planner.rules.context import did_you_mean, some
from planner.units import human, parse_size

BUDGET = "budget"  # our policy's name in every output
POLICIES = ("chain", BUDGET, *schedule.PEERS)  # the order every output lists them in
DEFAULT_CALLS = 4
PLOT_EXTRA = "pip install 'offload-planner[plot]'"
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


# -- the inputs from a plan and its sizes ------------------------------------------------------------------------
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


# -- running the policies --------------------------------------------------------------------------------------
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
    for name, peer in schedule.PEERS.items():
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
    result = run(given, chosen, calls)
    if result.too_small is not None:
        raise SimulationError([_too_small(plan, result.too_small, budget_flag if budget is not None else None)])
    return result


def no_budget(plan: Plan) -> str:
    """Why `plan` gives no budget to simulate with, and what to pass."""
    if plan.reserve is not None:
        return (f"the plan's budget is the device's free memory at apply time minus its reserve "
                f"({human(plan.reserve)}), which a simulation cannot know: pass --budget SIZE (e.g. --budget 8GiB)")
    return "the plan sets no budget: pass --budget SIZE (e.g. --budget 8GiB), or write budget: in the plan"


def _too_small(plan: Plan, error: schedule.BudgetTooSmall, flag: str | None) -> Problem:
    """PLN409 with the numbers, at `flag` when the budget came from it, else at the plan's `budget`."""
    parts = []
    if error.component is not None:
        parts.append(f"{error.component} ({human(error.needed - error.resident_bytes)}, the largest component "
                     "it uses)")
    if error.resident_bytes:
        parts.append(f"the excluded components kept resident ({human(error.resident_bytes)})")
    message = (f"a budget of {human(error.budget)} ({error.budget} bytes) cannot hold {' beside '.join(parts)}: "
               f"at least {human(error.needed)} ({error.needed} bytes) is needed")
    return too_small_at(plan, message, error.needed, flag)


def too_small_at(plan: Plan, message: str, needed: int, flag: str | None) -> Problem:
    """PLN409 saying `message`, with the fix naming the least budget `needed`: at `flag` when the budget came from
    it, else at the plan's `budget` (both granularities' simulations)."""
    if flag is not None:
        return PLN409.problem(flag, message, f"pass {flag} {needed} or more ({human(needed)})")
    return plan.problem("budget", PLN409, message, f"raise budget to at least {needed} bytes ({human(needed)})")


# -- text ------------------------------------------------------------------------------------------------------
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
            rows.append((_label(name), "does not fit", "", "", "", "", ""))
            continue
        ratio = result.ratio(name)
        rows.append((_label(name), human(found.h2d_bytes), human(found.h2d_bytes // calls), human(found.d2h_bytes),
                     human(found.d2h_bytes // calls), human(found.peak_bytes) + (" !" if found.over_budget else ""),
                     f"{ratio:.2f}" if ratio is not None else "-"))
    if result.bound is not None:
        bound = result.bound.h2d_bytes
        rows.append(("lower bound", human(bound), human(bound // calls), "", "", "", ""))
    return aligned(rows)


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Table rows as text lines: the first column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def _label(name: str) -> str:
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


# -- the residency timeline ------------------------------------------------------------------------------------
def plot_available() -> bool:
    """Whether matplotlib (the `plot` extra) is installed; found without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def plot_formats() -> dict[str, str]:
    """The file extensions (without the dot) matplotlib can write here, with the format's name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure().canvas.get_supported_filetypes()


GIB = 1 << 30
_PANELS = ("chain", BUDGET)  # the timelines drawn: diffusers' chain against ours
PLOT_CALLS = 12  # calls drawn at most: beyond, bars a pixel wide say nothing (the panel titles count every call)


def plot(result: Simulation, path: str, title: str | None = None) -> None:
    """Draw the residency timeline to `path` (its extension picks the format, as `plot_formats` lists): a panel
    per policy (the chain, then ours) with one row per component and a bar over each use during which it is on
    the device (solid while it is the one in use), the calls separated; below, the bytes resident during each
    use against the budget line, in GiB. The first PLOT_CALLS calls are drawn; the figures in the panel titles
    count them all. Needs matplotlib (the `plot` extra): raises ImportError without it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, whatever the environment says
    from matplotlib.figure import Figure

    policies = [name for name in _PANELS if name in result.schedules]
    names = list(result.inputs.sizes)
    calls = min(result.calls, PLOT_CALLS)
    slots = calls * len(result.inputs.uses)
    heights = [max(1.2, 0.42 * len(names) + 0.7)] * len(policies) + [2.6]
    figure = Figure(figsize=(min(max(10.0, 0.42 * slots + 4.0), 24.0), sum(heights) + 1.6), layout="constrained")
    axes = figure.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    colors = _colors(names)
    for ax, name in zip(axes[:-1], policies, strict=True):
        _timeline(ax, result, name, names, colors, slots)
    _resident_bytes(axes[-1], result, policies, slots)
    _calls_axis(axes, result, calls)
    figure.suptitle(title or _title(result, calls), fontsize=12)
    figure.savefig(path, dpi=110)


def _title(result: Simulation, calls: int) -> str:
    given = result.inputs
    shown = f"the first {calls} of {result.calls} calls" if calls < result.calls else \
        f"{calls} call{'s' if calls != 1 else ''}"
    return f"{given.plan or 'plan'}: residency over {shown}, budget {human(result.budget)}"


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def _timeline(ax, result: Simulation, policy: str, names: list[str], colors: dict, slots: int) -> None:
    """One policy's rows over the first `slots` uses: a pale bar where a component is resident, a solid one where
    it is the use, and a black mark where it was loaded (host to device) just before the use. Adjacent slots are
    drawn as one bar, and each row's bars as one collection."""
    found = result.schedules[policy]
    row = {name: i for i, name in enumerate(names)}
    spans: dict[tuple[str, bool], list[list[int]]] = {}
    loads: list[tuple[int, int]] = []
    for slot, step in enumerate(found.steps[:slots]):
        for name in step.resident:
            runs = spans.setdefault((name, name == step.component), [])
            if runs and runs[-1][0] + runs[-1][1] == slot:
                runs[-1][1] += 1
            else:
                runs.append([slot, 1])
        loads += [(slot, row[name]) for name in step.loaded]
    for (name, solid), runs in spans.items():
        ax.broken_barh([tuple(r) for r in runs], (row[name] - 0.31, 0.62), facecolors=colors[name],
                       alpha=1.0 if solid else 0.32, edgecolor="none")
    if loads:
        ax.vlines([slot + 0.04 for slot, _ in loads], [r - 0.34 for _, r in loads], [r + 0.34 for _, r in loads],
                  color="black", linewidth=2.2)
    ax.set_yticks(range(len(names)), [f"{n} ({human(result.inputs.sizes[n])})" for n in names], fontsize=9)
    ax.set_ylim(max(len(names), 1) - 0.5, -0.5)  # a plan with no component still draws an empty row
    moved = (f"{human(found.h2d_bytes)} host to device, {human(found.d2h_bytes)} back, peak "
             f"{human(found.peak_bytes)}" + (" (over the budget)" if found.over_budget else ""))
    ax.set_title(f"{_label(policy)}: {DESCRIPTIONS[policy]}  |  {moved}", loc="left", fontsize=10)
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def _resident_bytes(ax, result: Simulation, policies: list[str], slots: int) -> None:
    """Bytes on the device during each of the first `slots` uses, per policy, against the budget."""
    styles = {"chain": {"color": "tab:gray"}, BUDGET: {"color": "tab:blue"}}
    for name in policies:
        values = [step.resident_bytes / GIB for step in result.schedules[name].steps[:slots]]
        if values:
            ax.stairs(values, range(len(values) + 1), label=_label(name), linewidth=2, baseline=None,
                      **styles[name])
    ax.axhline(result.budget / GIB, color="tab:red", linestyle="--", linewidth=1.5,
               label=f"budget {human(result.budget)}")
    ax.set_ylabel("resident (GiB)")
    top = max(result.budget, *(s.peak_bytes for s in result.schedules.values())) / GIB
    ax.set_ylim(bottom=0, top=top * 1.15 or 1)
    ax.set_title("weights resident on the device during each use", loc="left", fontsize=10)
    ax.grid(axis="y", color="0.9", linewidth=0.6)


def _calls_axis(axes, result: Simulation, calls: int) -> None:
    """The shared x axis over `calls` calls: one slot per use, named under the last panel; a dotted line between
    calls and the call numbers above the first panel; the legend of the marks."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    uses = result.inputs.uses
    per_call = len(uses)
    slots = calls * per_call
    bounds = [call * per_call for call in range(1, calls)] if per_call else []
    for ax in axes:
        if bounds:
            ax.vlines(bounds, 0, 1, transform=ax.get_xaxis_transform(), color="0.35", linestyle=":", linewidth=1)
        ax.set_xlim(0, max(slots, 1))
    last = axes[-1]
    if slots <= 60:  # beyond that, names would overlap: the call numbers above say enough
        last.set_xticks([i + 0.5 for i in range(slots)], [uses[i % per_call] for i in range(slots)], rotation=60,
                        ha="right", fontsize=8)
    else:
        last.set_xticks([])
    last.set_xlabel("uses, in call order")
    top = axes[0].secondary_xaxis("top")
    top.set_xticks([(call + 0.5) * per_call for call in range(calls)], [f"call {call + 1}" for call in range(calls)],
                   fontsize=9)
    top.tick_params(length=0)
    marks = [Patch(color="0.45", alpha=1.0, label="in use"), Patch(color="0.45", alpha=0.32, label="resident"),
             Line2D([], [], color="black", linewidth=2.2, label="loaded (host to device)")]
    axes[0].legend(handles=marks, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    last.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
