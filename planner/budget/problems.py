"""The budget's feasibility problems, built here alone and worded once for every command that asks: a budget below
the least that works (PLN307 when a plan is applied, PLN409 when it is checked against a folder or simulated), no
budget to be had (PLN307), `pin: true` beyond what the host can spare (PLN411).

Pure. `Asker` says who asks (the rule, where problems are located, the flag that set the budget, what the sizes
are of), so that the same shortfall reads the same from `planner validate --model`, `simulate` and `apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from planner.plan import Plan, Problem
from planner.rules import PLN307, PLN409, PLN411, Rule
from planner.units import human

Locate = Callable[..., Problem]  # at(key, rule, message, fix) -> Problem


@dataclass(frozen=True)
class Asker:
    """Who asks a budget question: `rule` (PLN307 applying a plan, PLN409 checking or simulating it), `at` (locates
    a problem at a plan key: `plan.problem`, or the CLI's locator pointing at its flags), `flag` (the command-line
    flag the budget came from, when one did: the fix then names it), `of` (what the sizes are of, for the message:
    "the model folder F at float16"), `free` (the budget is the device's free memory minus reserve)."""

    rule: Rule
    at: Locate
    flag: str | None = None
    of: str = ""
    free: bool = False

    @classmethod
    def applying(cls, plan: Plan, at: Locate | None = None) -> "Asker":
        """PLN307, located by `at` (default `plan.problem`); the fix names the flag `at` points the budget at."""
        at = at or plan.problem
        free = plan.budget is None
        probe = at("policy" if free else "budget", PLN307, "", None)
        flag = probe.path if not probe.line and probe.path.startswith("--") else None
        return cls(PLN307, at, flag, free=free)

    @classmethod
    def checking(cls, plan: Plan, flag: str | None = None, of: str = "") -> "Asker":
        if flag is None:
            return cls(PLN409, plan.problem, of=of)
        return cls(PLN409, lambda key, rule, message, fix=None: rule.problem(flag, message, fix), flag, of)

    @property
    def key(self) -> str:
        """The plan key a budget problem is located at: `budget`, or `policy` when the plan gives no budget."""
        return "policy" if self.free else "budget"


def _budget(asker: Asker, budget: int) -> str:
    source = " (the device's free memory minus reserve)" if asker.free else ""
    return f"a budget of {human(budget)} ({budget} bytes){source}"


def _fix(asker: Asker, needed: int) -> str:
    if asker.flag is not None:
        return f"pass {asker.flag} {needed} or more ({human(needed)})"
    return f"raise budget to at least {needed} bytes ({human(needed)})"


def _needs(asker: Asker, needed: int) -> str:
    where = f" for {asker.of}" if asker.of else ""
    return f"at least {human(needed)} ({needed} bytes) is needed{where}"


def components_too_small(asker: Asker, budget: int, needed: int, component: str | None, size: int,
                         resident: int) -> Problem:
    """A budget below the excluded components (`resident` bytes) plus `component`, the largest one that moves
    (`size` bytes; None when nothing moves): no whole-component schedule fits."""
    what = [f"{component} ({human(size)}, the largest component it moves)"] if component else []
    if resident:
        what.append(f"the excluded components ({human(resident)}, resident throughout)")
    message = f"{_budget(asker, budget)} cannot hold {' beside '.join(what)}: {_needs(asker, needed)}"
    return asker.at(asker.key, asker.rule, message, _fix(asker, needed))


def blocks_too_small(asker: Asker, budget: int, needed: int, component: str, in_flight: int,
                     piece: str | None = None, piece_size: int = 0) -> Problem:
    """A budget below the least any block schedule needs: `component`'s worst forward, its parts outside the blocks
    held and `in_flight` blocks arriving, beside what stays resident; `piece`, when its blocks were split as far as
    they go, is its largest piece, which cannot be split further."""
    flight = "two blocks" if in_flight == 2 else "one block"
    largest = f", its largest piece {piece} ({human(piece_size)}) split no further" if piece else ""
    message = (f"{_budget(asker, budget)} cannot run {component} block by block (its parts outside the blocks held, "
               f"room for {flight} in flight{largest}) beside what stays resident: {_needs(asker, needed)}")
    return asker.at(asker.key, asker.rule, message, _fix(asker, needed))


def solver_failed(asker: Asker, why: str) -> Problem:
    """HiGHS found no block schedule where one should exist (a numerical tolerance)."""
    return asker.at(asker.key, asker.rule, why, "raise the budget")


def cannot_fit(asker: Asker, budget: int, what: str, size: int) -> Problem:
    """While the pipeline runs: `what` cannot be put on the device within the budget beside what must stay (a
    forward nobody planned, a component grown by a LoRA)."""
    return asker.at("budget", asker.rule, f"{what} ({human(size)}) cannot fit within the budget of {human(budget)} "
                    "beside what must stay on the device", "raise the budget")


NO_BUDGET_FIX = "write `budget: 8GiB` (the bytes of weights that may stay on the device) in the plan, or pass --budget"


def no_budget_in_dry_run(at: Locate) -> Problem:
    return at("policy", PLN307, "the budget policy without a budget takes the device's free memory minus `reserve`, "
              "and a dry run has no device to read it from", NO_BUDGET_FIX)


def no_free_memory(at: Locate, device_type: str) -> Problem:
    return at("policy", PLN307, f"{device_type} does not report its free memory, which the budget policy without a "
              "budget needs", NO_BUDGET_FIX)


def pin_beyond_spare(at: Locate, message: str) -> Problem:
    """PLN411: `pin: true` asks to pin more than the host can spare (`message`: what pinning needs and why)."""
    return at("pin", PLN411, message.split(";")[0], "write pin: auto (it pins what the host can spare), or raise "
              "the container's memory limit")
