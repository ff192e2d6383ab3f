"""`planner init`: the plan that reproduces what diffusers' `enable_model_cpu_offload` hooks for a pipeline class,
written from the shipped index alone (no torch, no diffusers import).

The plan holds the class's effective chain (`model_cpu_offload_seq` with a repeated name kept at its first place,
names that are no component dropped, a name that the class also excludes chained, as diffusers does), the
exclusions diffusers honours, and in `own_hook` the models diffusers leaves to a hook of their own. A combined
class whose override hooks each connected pipeline with its own chain gets one chain per pipeline (`pipe:`). With a
model folder's sizes, each component's line says its class and size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from planner import index
from planner.folder.sizes import ModelSizes
from planner.rules import PLN501, PLN502, PLN506
from planner.rules.context import did_you_mean

MODELINE = "# yaml-language-server: $schema={}"
COMMENT_COLUMN = 40  # where a component's comment starts, as in the library plans


class NoPlan(ValueError):
    """The class cannot take a plan: `problem` says why (PLN501 not a class, PLN502 left out of the index, PLN506
    an override that ignores any sequence), located at `where` (a flag, or a model_index.json)."""

    def __init__(self, problem):
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class Options:
    """What `init` writes besides the chain: the folder or hub id (`pipeline.source`), the dtype and variant asked
    for, the sizes read from the folder, the device, and the schema path for the modeline."""

    source: str | None = None
    torch_dtype: str | None = None
    variant: str | None = None
    sizes: ModelSizes | None = None
    device: str = "cuda"
    schema: str = "plan.schema.json"
    budget: str | int | None = None  # `policy: budget` within this size (8GiB, bytes), at `granularity`
    granularity: str | None = None
    steps: int | None = None
    notes: tuple[str, ...] = ()  # comment lines after the header (what `planner simulate` predicts)


def plan_text(class_name: str, options: Options = Options(), where: str = "--pipeline-class") -> str:
    """The plan for `class_name` as YAML text; raises `NoPlan` (its problem located at `where`) for a class no plan
    can describe."""
    record = index.get(class_name)
    version = index.load().diffusers_version
    if record is None:
        reason = index.skip_reason(class_name)
        if reason is not None:
            raise NoPlan(PLN502.problem(where, f"{class_name} is not in the index of diffusers {version} ({reason})",
                                        "write the plan by hand: planner apply checks it against the pipeline"))
        hints = index.close(class_name)
        raise NoPlan(PLN501.problem(where, f"{class_name!r} is not a pipeline class of diffusers {version}",
                                    did_you_mean(hints) if hints else None))
    if record.offload == "custom":
        raise NoPlan(PLN506.problem(where, f"{class_name} replaces enable_model_cpu_offload with a fixed order of its "
                                    "own: no plan can be put in force on it"))
    layout = _Layout.of(record)
    lines = [MODELINE.format(options.schema), *_header(record, layout)]
    lines += [wrapped for note in options.notes for wrapped in _wrap(f"# {note}")]
    lines += ["version: 1", "pipeline:", f"  class: {class_name}"]
    if options.source is not None:
        lines.append(f"  source: {_scalar(options.source)}")
    if options.torch_dtype:
        lines.append(f"  torch_dtype: {options.torch_dtype}")
    if options.variant:
        lines.append(f"  variant: {_scalar(options.variant)}")
    lines.append(f"device: {options.device}")
    if options.budget is not None:
        budget = options.budget
        lines += ["policy: budget", f"budget: {budget if isinstance(budget, int) else _scalar(str(budget))}"]
        if options.granularity is not None:
            lines.append(f"granularity: {options.granularity}")
    if options.steps is not None:
        lines.append(f"steps: {options.steps}")
    lines += _components(record, layout, options)
    if layout.exclude:
        lines.append(f"exclude: [{', '.join(layout.exclude)}]")
    if layout.own_hook:
        lines.append(f"own_hook: [{', '.join(layout.own_hook)}]")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Layout:
    """What the plan writes: each chain (connected pipeline or None, names), the exclusions, the own hooks."""

    chains: tuple[tuple[str | None, tuple[str, ...]], ...]
    exclude: tuple[str, ...]
    own_hook: tuple[str, ...]

    @classmethod
    def of(cls, record: index.Pipeline) -> "_Layout":
        if record.offload == "none":  # no sequence: its models (or maybe models) in declaration order, to reorder
            chains = ((None, tuple(n for n, c in record.components.items() if c.model is not False)),)
            exclude = tuple(n for n in record.exclude if n in record.components and n not in chains[0][1])
        else:
            chains = tuple((c.pipe, c.sequence) for c in record.chains)
            exclude = tuple(n for c in record.chains for n in c.exclude)
        chained = {n for _, names in chains for n in names}
        own_hook = tuple(n for n in record.models if n not in chained and n not in exclude)
        return cls(chains, exclude, own_hook)

    @property
    def chained(self) -> set[str]:
        return {n for _, names in self.chains for n in names}


def _header(record: index.Pipeline, layout: _Layout) -> list[str]:
    """Comment lines: where the chain comes from, and everything in it that is not written as diffusers wrote it."""
    version = index.load().diffusers_version
    if record.offload == "connected":
        parts = ", ".join(f"{p.attribute} ({p.pipeline_class})" for p in record.connected)
        lines = [f"# {record.name} (diffusers {version}): its enable_model_cpu_offload hooks each connected pipeline",
                 f"# with a chain of its own: {parts}; `pipe` says which chain holds each component."]
    elif record.offload == "none":
        lines = [f"# {record.name} (diffusers {version}) has no model_cpu_offload_seq: diffusers refuses model offload",
                 "# for it. Put its models in the order the pipeline calls them (nothing checks this order)."]
    else:
        lines = [f"# {record.name} (diffusers {version}): model_cpu_offload_seq "
                 f"{record.model_cpu_offload_seq or '(empty)'}, as enable_model_cpu_offload hooks it."]
    sequence = record.sequence
    repeated = sorted({n for n in sequence if sequence.count(n) > 1})
    if repeated:
        lines.append(f"# {', '.join(repeated)}: named more than once in the sequence; diffusers hooks a module once, "
                     "at its first place.")
    if record.unknown_in_sequence:
        lines.append(f"# {', '.join(record.unknown_in_sequence)}: in the sequence but no component of the class; "
                     "diffusers skips it.")
    both = [n for n in record.exclude if n in layout.chained]
    if both and record.offload == "connected":
        lines.append(f"# {', '.join(both)}: in the combined class's _exclude_from_cpu_offload, which its override does "
                     "not read: the connected pipeline chains it.")
    elif both:
        lines.append(f"# {', '.join(both)}: also in _exclude_from_cpu_offload, yet chained: diffusers applies the "
                     "exclusion only to components outside the sequence.")
    unsure = [n for n in record.undetermined if n not in layout.chained and n not in layout.exclude]
    if unsure:
        lines.append(f"# {', '.join(unsure)}: its declaration does not say whether it is a torch module; if it is, "
                     "diffusers gives it a hook of its own (add it to own_hook to say so).")
    if layout.own_hook:
        lines.append("# own_hook: not in the sequence, so diffusers gives each a hook of its own, loaded at its first "
                     "forward and kept on the device until the call ends.")
    return [wrapped for line in lines for wrapped in _wrap(line)]


def _wrap(comment: str, width: int = 118) -> list[str]:
    import textwrap

    return textwrap.wrap(comment[2:], width - 2, initial_indent="# ", subsequent_indent="#   ",
                         break_long_words=False, break_on_hyphens=False)


def _components(record: index.Pipeline, layout: _Layout, options: Options) -> list[str]:
    """`components:` as a block list (one chain), or a mapping with `pipe` and `after` (one chain per connected
    pipeline), each line commented with the component's class and size when known."""
    optional = set(record.optional)
    if record.offload == "connected":
        lines, previous = ["components:"], None
        for pipe, names in layout.chains:
            for name in names:
                after = f", after: [{previous}]" if previous else ""
                entry = f"  {name}: {{pipe: {pipe}{after}}}"
                lines.append(_commented(entry, _note(record, name, optional, options)))
                previous = name
        return lines
    names = layout.chains[0][1] if layout.chains else ()
    if not names:
        return ["components: []                          # the class's sequence chains no model"]
    return ["components:"] + [_commented(f"  - {name}", _note(record, name, optional, options)) for name in names]


def _note(record: index.Pipeline, name: str, optional: set[str], options: Options) -> str:
    component = record.components.get(name)
    kind = ""
    sizes = options.sizes
    found = sizes.components.get(name) if sizes is not None else None
    if found is not None:
        kind = f"{found.class_name}, {_size(found.bytes_at(options.torch_dtype))}"
        dtype = found.load_dtype(options.torch_dtype)
        kind += f" ({dtype})" if dtype else ""
    elif sizes is not None and name in sizes.absent:
        kind = "absent in the folder: skipped"
    elif component is not None:
        kind = " or ".join(t.rsplit(".", 1)[-1] for t in component.types if t != "None")
    if name in optional and found is None and not (sizes is not None and name in sizes.absent):
        kind += ("; " if kind else "") + "optional: skipped when None"
    return kind


def _commented(line: str, note: str) -> str:
    if not note:
        return line
    return f"{line.ljust(COMMENT_COLUMN - 1)} # {note}" if len(line) < COMMENT_COLUMN - 1 else f"{line}  # {note}"


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n} B"


def _scalar(text: str) -> str:
    """`text` as a YAML scalar that reads back as the same string (quoted when plain would not)."""
    import json

    plain = text and text.strip() == text and all(c.isalnum() or c in "-_./" for c in text) and \
        text[0] not in "-." and text.lower() not in _YAML_WORDS and not _looks_numeric(text)
    return text if plain else json.dumps(text)


_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace("_", ""))
    except ValueError:
        return text[:2].lower() in ("0x", "0o", "0b")
    return True


def schema_path(target: str | os.PathLike | None) -> str:
    """The modeline's schema path, relative to the plan file `target` (stdout: the current folder): a
    `plan.schema.json` beside it, else `schemas/plan.schema.json` in it or a folder above; else `plan.schema.json`
    (written there with `planner schema > plan.schema.json`)."""
    folder = Path(target).resolve().parent if target is not None else Path.cwd().resolve()
    if (folder / "plan.schema.json").is_file():
        return "plan.schema.json"
    for above in (folder, *folder.parents):
        candidate = above / "schemas" / "plan.schema.json"
        if candidate.is_file():
            return os.path.relpath(candidate, folder).replace(os.sep, "/")
    return "plan.schema.json"
