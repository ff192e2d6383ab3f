"""The components, their order, the exclusions and the own hooks (PLN207-212): names listed twice, `after` naming
what the plan does not have or the component itself, cycles (with their path), a name in two of `components`,
`exclude` and `own_hook`."""

from __future__ import annotations

from planner import order
from planner.rules import PLN207, PLN208, PLN209, PLN210, PLN211, PLN212, PLN216
from planner.rules.context import Context, did_you_mean, some


def components(ctx: Context) -> tuple[list[str], list[tuple[str, str]]]:
    """The plan's component names in declaration order (each once) and its edges (a, b): b runs after a. Empty
    components are PLN207 unless `own_hook` names models (every one left to a hook of its own, as diffusers does
    for a class whose sequence chains none)."""
    comps = ctx.data.get("components")
    if isinstance(comps, (list, dict)) and not comps and not ctx.data.get("own_hook"):
        ctx.add(("components",), PLN207, "components is empty")
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


def pipes(ctx: Context, names: list[str]) -> dict[str, str]:
    """Each component's connected pipeline (`pipe:`, combined classes only), or {} when no component names one;
    PLN216 at each component without one when others have one (every chain must be said)."""
    comps = ctx.data.get("components")
    if not isinstance(comps, dict):
        return {}
    found = {name: spec["pipe"] for name, spec in comps.items()
             if isinstance(spec, dict) and isinstance(spec.get("pipe"), str)}
    if found:
        for name in names:
            if name not in found:
                ctx.add(("components", name), PLN216, f"{name!r} names no pipe while other components do "
                        f"({some(sorted(set(found.values())))})", key=True)
    return found


def exclude(ctx: Context, names: list[str]) -> list[str]:
    """The excluded names (each once), with a problem for a name listed twice or also offloaded."""
    return _listed(ctx, "exclude", {name: "components" for name in names})


def own_hook(ctx: Context, names: list[str], excluded: list[str]) -> list[str]:
    """The `own_hook` names (each once), with a problem for a name listed twice, offloaded or excluded."""
    return _listed(ctx, "own_hook", {**{name: "components" for name in names}, **dict.fromkeys(excluded, "exclude")})


# What each list of names means, for PLN212's fix.
_MEANING = {"components": "offloaded", "exclude": "kept on the device", "own_hook": "a hook of its own"}


def _listed(ctx: Context, key: str, taken: dict[str, str]) -> list[str]:
    """The names of the list `key` (each once): PLN208 for a name listed twice, PLN212 for one that `taken` (name
    -> the key that has it already) holds."""
    listed = ctx.data.get(key)
    seen = {}
    for i, name in enumerate(listed if isinstance(listed, list) else ()):
        if not isinstance(name, str):
            continue
        if name in seen:
            ctx.add((key, i), PLN208, f"{name!r} is listed twice in {key}")
        elif name in taken:
            other = taken[name]
            ctx.add((key, i), PLN212, f"component {name!r} is in both {other} and {key}",
                    f"keep {name!r} in {other} ({_MEANING[other]}) or in {key} ({_MEANING[key]}), not both")
        seen.setdefault(name, i)
    return list(seen)
