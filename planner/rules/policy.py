"""The residency policy's keys (PLN217-219): `budget`, `reserve` and `keep_host_copy` say how the budget policy
keeps components on the device, so the chain ignores them (a warning); `uses` says in which order one pipeline
call uses the components, for every policy that schedules (the budget policy, `planner simulate`), so it may name
only what the plan offloads or excludes, and should name everything it offloads.

Decisions, and why:
- `uses` with `policy: chain` is fine: it describes the pipeline, not the policy; the library's chain plans carry it
  for `planner simulate`.
- an excluded component in `uses` is fine: it stays resident, so a use costs nothing and the schedule skips it.
- an `own_hook` component in `uses` is an error: it is left out of every schedule (loaded at its first forward,
  kept on the device until the call ends), so an order for it would promise what no policy does.
- a `budget` below the `reserve` is not a problem: they measure different things (weights that may stay
  resident; headroom for activations, used only when there is no budget). A budget too small for the components
  is found with the sizes (`planner validate --model`, PLN409).
The schema already made sure of each value's type (PLN214 for a size that does not parse, PLN102 otherwise).
"""

from __future__ import annotations

import re

from planner import units
from planner.rules import PLN214, PLN217, PLN218, PLN219
from planner.rules.context import Context, did_you_mean, some

BUDGET_KEYS = ("budget", "reserve", "keep_host_copy", "granularity", "prefetch", "pin")  # the budget policy's alone
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # the schema's name pattern: anything else is PLN215 already


def check(ctx: Context, names: list[str], excluded: list[str], own_hook: list[str]) -> None:
    """PLN217 for each budget key of a chain plan, PLN218 for each `uses` entry the plan neither offloads nor
    excludes, PLN219 for each offloaded component that `uses` leaves out."""
    data = ctx.data
    for key in ("budget", "reserve"):  # the schema's pattern takes any number of digits; a size has a bound
        value = data.get(key)
        if isinstance(value, (int, str)) and not isinstance(value, bool) and _too_large(value):
            ctx.add((key,), PLN214, f"{key} {ctx.describe((key,), value)[:40]} is too large: a size is at most "
                    f"{units.MAX_SIZE} bytes (16 EiB)")
    if data.get("policy", "chain") == "chain":
        chain = "policy chain" if "policy" in data else "policy chain (the default)"
        for key in BUDGET_KEYS:
            if key in data:
                ctx.add((key,), PLN217, f"{key} is ignored by {chain}: diffusers' chain loads every component in "
                        "turn, whatever the memory", f"write `policy: budget` to use it, or remove {key}", key=True)
    uses = data.get("uses")
    if isinstance(uses, list) and uses and isinstance(data.get("components"), (list, dict)):
        _uses(ctx, uses, names, excluded, own_hook)  # against the components only when they could be read


def _uses(ctx: Context, uses: list, names: list[str], excluded: list[str], own_hook: list[str]) -> None:
    known, used = set(names) | set(excluded), set(uses)
    if known.issuperset(used) and used.issuperset(names):
        return  # the common case: every entry planned, every offloaded component used
    candidates = [*names, *excluded]
    hooked = set(own_hook)
    reported: set[str] = set()
    for i, name in enumerate(uses):
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in known or name in reported:
            continue  # the schema said what is wrong with a name that is no identifier; one problem per name
        reported.add(name)
        if name in hooked:
            ctx.add(("uses", i), PLN218, f"uses names {name!r}, which has a hook of its own (own_hook): no policy "
                    "schedules it", f"remove {name!r} from uses, or move it from own_hook to components")
            continue
        hint = ctx.suggest.closest(name, candidates)
        ctx.add(("uses", i), PLN218, f"uses names {name!r}, which the plan neither offloads nor excludes",
                did_you_mean([hint]) if hint else f"name one of {some(candidates)}")
    if not all(isinstance(name, str) and _NAME.fullmatch(name) for name in uses):
        return  # a list with an entry that is no name is wrong already: what it leaves out is not yet known
    for name in names:
        if name not in used:
            ctx.add(("uses",), PLN219, f"uses leaves out {name!r}, which the plan offloads: the budget policy does "
                    "not expect it to run, and loads it outside its schedule when it does", key=True)


def _too_large(value: int | str) -> bool:
    """A size the schema took (its grammar) that `planner.units.parse_size` refuses for its magnitude or length;
    a value outside the grammar is the schema's PLN214 already."""
    if isinstance(value, int):
        return value > units.MAX_SIZE
    if not re.fullmatch(units.SIZE_PATTERN, value):
        return False
    try:
        units.parse_size(value)
    except ValueError:
        return True
    return False
