"""The text summary `planner apply` prints: per component its size, per call the bytes moved, the time, the events.

Importing this module loads no torch; it reads only the applied plan's trace.
"""

from __future__ import annotations

from planner.plan import Plan
from planner.report.common import visible


def summary(applied, request, events: bool | None = None) -> str:
    """Per component (in running order: the plan's sequence, then components with a hook of their own, then the
    exclusions) its size; per call the bytes moved each way, the peak resident and the time; with `events`
    (default `request.events`) every transfer of those calls, labelled when the plan did not ask for it.
    `request` is the run's `planner.executor.run.Request`."""
    plan, trace = applied.plan, applied.trace
    mode = " (dry run: hooks executed on the CPU; figures are what the device would have received)" \
        if applied.dry_run else ""
    loaded = "".join(f", {key} {value}" for key, value in (("torch_dtype", plan.torch_dtype),
                                                           ("variant", plan.variant)) if value)
    lines = [f"plan {plan.path}: {plan.offload_seq} on {applied.target}{loaded}{mode}"]
    if applied.budget is not None:
        lines.append(_policy_line(applied))
    if applied.skipped:
        lines.append(f"skipped (None in the pipeline, as diffusers does): {', '.join(applied.skipped)}")
    kept = sorted(plan.exclude - set(applied.skipped))
    if kept:
        lines.append(f"kept on the device: {', '.join(kept)}")
    lines.append("")
    lines.append(f"{'component':<20}{'size':>12}")
    sizes = _component_sizes(trace.sizes)
    for name, role in _running_order(plan, sizes):
        lines.append(f"{name + role:<20}{_mb(sizes[name]):>12}")
    lines.append("")
    back = applied.copied_back  # the budget policy: evictions copy nothing back unless a weight changed
    header = f"{'call':<6}{'loaded':>12}"
    header += f"{'offloaded':>12}" if back is None else f"{'evicted':>12}{'copied back':>13}"
    lines.append(f"{header}{'peak resident':>16}{'time':>10}")
    for stats in sorted(trace.calls.values(), key=lambda s: s.call):
        if stats.call > request.calls:
            continue
        seconds = f"{stats.seconds:.3f}s" if stats.seconds is not None else "-"
        copied = "" if back is None else f"{_mb(back.get(stats.call, 0)):>13}"
        lines.append(f"{stats.call:<6}{_mb(stats.loaded_bytes):>12}{_mb(stats.offloaded_bytes):>12}{copied}"
                     f"{_mb(stats.peak_resident_bytes):>16}{seconds:>10}")
    if request.events if events is None else events:
        lines += _event_lines(trace, request.calls)
    if request.out:
        lines.append(f"\nimage written to {visible(request.out)}")
    if request.trace_json:
        lines.append(f"trace ({len(trace.events)} events) written to {visible(request.trace_json)}")
    return "\n".join(lines) + "\n"


def _policy_line(applied) -> str:
    """The budget policy's line: its budget, and how its schedule was made."""
    from planner.units import human

    schedule = applied.schedule
    how = "schedule: the fewest bytes moved, exact" if schedule is not None and schedule.exact else \
        (schedule.note if schedule is not None else "no schedule fits the budget")
    copies = "host copies kept: an eviction copies back only weights changed on the device" \
        if applied.plan.keep_host_copy else "no host copies: every eviction copies back"
    line = f"policy budget: {human(applied.budget)} on {applied.target} ({how}; {copies})"
    used = applied.host  # what the host holds and pins
    if used is None:
        return line
    host = f"host copies held {human(used.held)}, pinned {human(used.pinned)}: {used.note}"
    if applied.plan.granularity != "block" or applied.schedule is None:  # (no block schedule fits any more)
        return f"{line}\n{host}"
    schedule = applied.schedule
    keys = schedule.model.keys
    moved = sum(1 for key in keys if schedule.loads(key))
    return (f"{line}\ngranularity block: {len(schedule.resident)} of {len(keys)} blocks resident, {moved} moved "
            f"each call ({len(schedule.streamed)} of them more than once), {human(schedule.h2d_bytes)} per steady "
            f"call; {host}")


def _component_sizes(sizes: dict) -> dict:
    """The trace's sizes per component: a block plan's `component/block` names summed into their component."""
    found: dict = {}
    for name, size in sizes.items():
        component = name.split("/", 1)[0]
        found[component] = found.get(component, 0) + size
    return found


def _running_order(plan: Plan, sizes: dict) -> list[tuple[str, str]]:
    """(name, role) of each component the trace knows: the chain in the plan's order, then the components
    outside it with a hook of their own, then the exclusions (both in the pipeline's order)."""
    chained = [(name, "") for name in plan.sequence if name in sizes]
    rest = [name for name in sizes if name not in plan.sequence]
    return (chained + [(name, " (own hook)") for name in rest if name not in plan.exclude]
            + [(name, " (excluded)") for name in rest if name in plan.exclude])


def _event_lines(trace, calls: int) -> list[str]:
    """One line per transfer of the first `calls` calls, then how many came after them (the exclusions going
    back to the device once the last call ended)."""
    shown = [e for e in trace.events if e.call <= calls]
    lines = ["", f"{'call':<6}{'transfer':<10}{'component':<20}{'size':>12}  why"]
    for e in shown:
        lines.append(f"{e.call:<6}{e.event:<10}{e.component:<20}{_mb(e.bytes):>12}  {e.reason or ''}".rstrip())
    after = len(trace.events) - len(shown)
    if after:
        lines.append(f"(and {after} after the last call: {', '.join(_describe(e) for e in trace.events[-after:])})")
    return lines


def _describe(event) -> str:
    reason = f" ({event.reason})" if event.reason else ""
    return f"{event.event} {event.component}{reason}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
