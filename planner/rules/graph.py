"""The components, their order and the exclusions (PLN207-212): names listed twice, `after` naming what the plan
does not have or the component itself, cycles (with their path), a name both offloaded and excluded."""

from __future__ import annotations

from planner import order
from planner.rules import PLN208, PLN209, PLN210, PLN211, PLN212
from planner.rules.context import Context, did_you_mean, some


def components(ctx: Context) -> tuple[list[str], list[tuple[str, str]]]:
    """The plan's component names in declaration order (each once) and its edges (a, b): b runs after a."""
    comps = ctx.data.get("components")
    names: list[str] = []
    edges: list[tuple[str, str]] = []
    if isinstance(comps, list):
        seen: set[str] = set()
        for i, name in enumerate(comps):
            if not isinstance(name, str):
                continue
            if name in seen:
                ctx.add(("components", i), PLN208, f"component {name!r} is listed twice")
                continue
            if names:
                edges.append((names[-1], name))
            names.append(name)
            seen.add(name)
    elif isinstance(comps, dict):
        names = [n for n in comps if isinstance(n, str)]
        known = set(names)
        for name, spec in comps.items():
            after = spec.get("after") if isinstance(spec, dict) else None
            if not after or not isinstance(after, list):
                continue
            if len(after) == 1 and after[0] in known and after[0] != name:
                edges.append((after[0], name))  # the common case, what `_after_edges` finds for it
            else:
                edges += _after_edges(ctx, name, after, names, known)
    return names, edges


def _after_edges(ctx: Context, name: str, after: list, names: list[str], known: set[str]) -> list[tuple[str, str]]:
    edges, seen = [], set()
    for i, before in enumerate(after):
        if not isinstance(before, str):
            continue
        if before in seen:
            ctx.add(("components", name, "after", i), PLN208, f"{before!r} is listed twice in the `after` of {name!r}")
        elif before == name:
            ctx.add(("components", name, "after", i), PLN210, f"component {name!r} runs after itself",
                    f"remove {name!r} from its `after`")
        elif before not in known:
            hint = ctx.suggest.closest(before, names)
            ctx.add(("components", name, "after", i), PLN209,
                    f"{name!r} runs after {before!r}, which is not a component of this plan",
                    did_you_mean([hint]) if hint else f"name one of {some(names)}")
        else:
            edges.append((before, name))
        seen.add(before)
    return edges


def sequence(ctx: Context, names: list[str], edges: list[tuple[str, str]]) -> tuple[str, ...] | None:
    """The one order of the components (see `planner.order`), or None with a PLN211 problem per cycle."""
    found, cycles = order.resolve(names, edges)
    comps = ctx.data.get("components")
    for cycle in cycles:
        at = ("components", cycle[0], "after", comps[cycle[0]]["after"].index(cycle[-2]))
        ctx.add(at, PLN211, f"components form a cycle: {' -> '.join(cycle)}")
    return found


def exclude(ctx: Context, names: list[str]) -> list[str]:
    """The excluded names (each once), with a problem for a name listed twice or also offloaded."""
    excluded = ctx.data.get("exclude")
    known, seen = set(names), {}
    for i, name in enumerate(excluded if isinstance(excluded, list) else ()):
        if not isinstance(name, str):
            continue
        if name in seen:
            ctx.add(("exclude", i), PLN208, f"{name!r} is listed twice in exclude")
        elif name in known:
            ctx.add(("exclude", i), PLN212, f"component {name!r} is both offloaded and excluded",
                    f"keep {name!r} in components (offloaded) or in exclude (kept on the device), not both")
        seen.setdefault(name, i)
    return list(seen)
