"""The values everything else reads: `Problem`, `PlanError` and the frozen `Plan`, plus `load_plan` / `check`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan, located in its source.

    `line` and `column` are 1-based; 0 means the problem has no place in a file (a command-line override, a
    pipeline that lacks a component), and formatters then print the path alone.
    """

    path: str
    line: int
    column: int
    rule: str
    message: str
    fix: str = ""
    severity: str = "error"

    @property
    def text(self) -> str:
        """The message and its fix as one sentence, the way every reporter shows it."""
        return f"{self.message}: {self.fix}" if self.fix else self.message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line else self.path
        return f"{where}: {self.rule} {self.text}"


class PlanError(Exception):
    """A plan that cannot be used; `problems` holds every reason, in source order."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Plan:
    """A checked plan: the offload sequence in order and where each thing goes.

    `locations` maps a key such as `device` or `components.unet` to its (line, column) in the source, so the
    executor can point at the plan when the pipeline disagrees with it.
    """

    path: str
    version: int
    device: str
    gpu_id: int | None
    sequence: tuple[str, ...]
    exclude: frozenset[str]
    edges: tuple[tuple[str, str], ...]
    policy: str = "chain"
    pipeline_class: str | None = None
    pipeline_source: str | None = None
    torch_dtype: str | None = None
    variant: str | None = None
    locations: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "locations", MappingProxyType(dict(self.locations)))

    @property
    def offload_seq(self) -> str:
        """The sequence in diffusers' `model_cpu_offload_seq` spelling."""
        return "->".join(self.sequence)

    def problem(self, key: str, rule: str, message: str, fix: str = "") -> Problem:
        """A problem located at `key` of this plan's source (or at the file when the key has no place)."""
        line, column = self.locations.get(key, (0, 0))
        return Problem(self.path, line, column, rule, message, fix)


def check(path: str | Path, overrides: Mapping[str, object] | None = None) -> list[Problem]:
    """Every problem of the plan file at `path` (empty when it is valid); never raises for a bad plan."""
    return _build(path, overrides)[1]


def load_plan(path: str | Path, overrides: Mapping[str, object] | None = None) -> Plan:
    """The `Plan` in the file at `path`, with command-line style `overrides` (such as {"device": "xpu"}) applied
    and checked by the same rules; raises `PlanError` with every problem found."""
    plan, problems = _build(path, overrides)
    if problems:
        raise PlanError(problems)
    return plan


def _build(path, overrides):
    from planner import loader, rules

    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return None, [Problem(path, 0, 0, "PLN000", f"cannot read the plan: {exc.strerror or exc}",
                              "check the path")]
    return rules.check_document(loader.load(raw, path), overrides)
