"""`planner simulate --plot`: the residency timeline of a component simulation, drawn with matplotlib (the `plot`
extra), imported only when drawing. Raises ImportError without matplotlib."""

from __future__ import annotations

from planner.simulate.components import BUDGET, DESCRIPTIONS, Simulation, label
from planner.units import human

PLOT_EXTRA = "pip install 'offload-planner[plot]'"


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
    ax.set_title(f"{label(policy)}: {DESCRIPTIONS[policy]}  |  {moved}", loc="left", fontsize=10)
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def _resident_bytes(ax, result: Simulation, policies: list[str], slots: int) -> None:
    """Bytes on the device during each of the first `slots` uses, per policy, against the budget."""
    styles = {"chain": {"color": "tab:gray"}, BUDGET: {"color": "tab:blue"}}
    for name in policies:
        values = [step.resident_bytes / GIB for step in result.schedules[name].steps[:slots]]
        if values:
            ax.stairs(values, range(len(values) + 1), label=label(name), linewidth=2, baseline=None,
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
