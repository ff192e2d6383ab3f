"""The values everything else reads: `Problem`, `PlanError` and the frozen `Plan`.

Nothing here reads a file or imports another planner module: the driver (`planner.validate`) builds these
values from the loader's document and the rules' checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan, located in its source.

    `line` and `column` are 1-based; 0 means the problem has no place in a file (a command-line override, a
    pipeline that lacks a component), and formatters then print the path alone. `rule` is the rule's id;
    `severity` is "error" or "warning" (a warning fails validation only under `planner validate --strict`).
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
        kind = "" if self.severity == "error" else f"{self.severity}: "
        return f"{where}: {kind}{self.rule} {self.text}"


class PlanError(Exception):
    """A plan that cannot be used; `problems` holds every reason (warnings too), in source order."""

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
    policy: str = "chain"  # "chain" (diffusers' own offload, exactly) or "budget" (planner.budget's residency)
    budget: int | None = None  # bytes of weights that may be resident on the device at once (policy budget)
    reserve: int | None = None  # bytes kept free for activations when the budget comes from the free memory
    keep_host_copy: bool = True  # keep unchanged weights on the host too: an eviction moves nothing back
    uses: tuple[str, ...] | None = None  # the components in the order one pipeline call uses them, when not `sequence`
    granularity: str = "component"  # what the budget policy moves: "component" or "block" (planner.budget.blocks)
    steps: int | None = None  # denoising steps per call, for the block schedule (None: 1, or the caller's)
    prefetch: bool = True  # block granularity: copy the next streamed block while the current one computes
    pin: str = "auto"  # pin the host copies of streamed blocks: "auto", "true" or "false" (planner.budget.host)
    own_hook: frozenset[str] = frozenset()
    pipes: Mapping[str, str] = field(default_factory=dict)  # component -> its connected pipeline (combined classes)
    pipeline_class: str | None = None
    pipeline_source: str | None = None
    torch_dtype: str | None = None
    variant: str | None = None
    locations: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    text: str | None = field(default=None, compare=False, repr=False)  # the YAML it was read from, unless overridden
    # the values `text` describes: a copy made with dataclasses.replace keeps them, and then no longer matches them
    text_of: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "locations", MappingProxyType(dict(self.locations)))
        object.__setattr__(self, "pipes", MappingProxyType(dict(self.pipes)))
        if self.text is not None and not self.text_of:
            object.__setattr__(self, "text_of", self._values())

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if f.compare)

    @property
    def call_order(self) -> tuple[str, ...]:
        """The order one pipeline call uses the plan's components in: `uses` when the plan gives it (it may also
        name excluded components), else the sequence. A name may repeat (img2img: the vae encodes, then decodes)."""
        return self.uses if self.uses is not None else self.sequence

    @property
    def chains(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """The chains the plan asks for, as (connected pipeline or None, its names in order): one chain of the
        whole sequence, or for a combined pipeline one per connected pipeline, in order of first appearance."""
        if not self.pipes:
            return ((None, self.sequence),)
        chains: dict[str | None, list[str]] = {}
        for name in self.sequence:
            chains.setdefault(self.pipes.get(name), []).append(name)
        return tuple((pipe, tuple(names)) for pipe, names in chains.items())

    @property
    def offload_seq(self) -> str:
        """The sequence in diffusers' `model_cpu_offload_seq` spelling; chains of connected pipelines are shown
        as `prior_pipe(a->b) decoder_pipe(c->d)`."""
        if not self.pipes:
            return "->".join(self.sequence)
        return " ".join(f"{pipe}({'->'.join(names)})" for pipe, names in self.chains)

    def to_yaml(self) -> str:
        """The plan as YAML text that `planner validate` checks and `load_plan` reads back to an equal `Plan`: the
        text it was read from when it came from one unchanged (comments kept), else written from its fields."""
        if self.text is not None and self.text_of == self._values():
            return self.text
        lines = [f"version: {self.version}"]
        pipeline = [(key, value) for key, value in (("class", self.pipeline_class), ("source", self.pipeline_source),
                                                    ("torch_dtype", self.torch_dtype), ("variant", self.variant))
                    if value is not None]
        if pipeline:
            lines += ["pipeline:"] + [f"  {key}: {_quoted(value)}" for key, value in pipeline]
        lines.append(f"device: {_quoted(self.device)}")
        if self.gpu_id is not None:
            lines.append(f"gpu_id: {self.gpu_id}")
        if self.policy != "chain":
            lines.append(f"policy: {self.policy}")
            for key in ("budget", "reserve"):
                if getattr(self, key) is not None:
                    lines.append(f"{key}: {getattr(self, key)}")  # bytes: a size every reader parses exactly
            if not self.keep_host_copy:
                lines.append("keep_host_copy: false")
            if self.granularity != "component":
                lines.append(f"granularity: {self.granularity}")
            if not self.prefetch:
                lines.append("prefetch: false")
            if self.pin != "auto":
                lines.append(f"pin: {self.pin}")
        if self.steps is not None:
            lines.append(f"steps: {self.steps}")
        after: dict[str, list[str]] = {}
        for before, name in self.edges:
            after.setdefault(name, []).append(before)
        if not self.sequence:
            lines.append("components: []")
        else:
            lines.append("components:")
            for name in self.sequence:
                keys = [f"pipe: {_quoted(self.pipes[name])}"] if name in self.pipes else []
                if after.get(name):
                    keys.append(f"after: [{', '.join(map(_quoted, after[name]))}]")
                lines.append(f"  {_quoted(name)}: {{{', '.join(keys)}}}")
        for key in ("exclude", "own_hook"):
            if getattr(self, key):
                lines.append(f"{key}: [{', '.join(map(_quoted, sorted(getattr(self, key))))}]")
        if self.uses is not None:
            lines.append(f"uses: [{', '.join(map(_quoted, self.uses))}]")
        return "\n".join(lines) + "\n"

    def problem(self, key: str, rule, message: str, fix: str | None = None) -> Problem:
        """A problem located at `key` of this plan's source (or at the file when the key has no place). `rule` is
        a rule object (`planner.rules.PLN301`: its fix and severity unless `fix` is given) or a rule id."""
        line, column = self.locations.get(key, (0, 0))
        if isinstance(rule, str):
            return Problem(self.path, line, column, rule, message, fix or "")
        return rule.problem(self.path, message, fix, line, column)


def _quoted(value) -> str:
    """A string as a YAML scalar that reads back as itself: plain when it is a plain name, else JSON's quoting
    (which is YAML's)."""
    import json
    import re

    if not isinstance(value, str):
        return str(value)
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:-]*", value) and not value.endswith(":") and \
        value.lower() not in ("y", "n", "yes", "no", "on", "off", "true", "false", "null")
    return value if plain else json.dumps(value)
