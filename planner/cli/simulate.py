"""`planner simulate`: the bytes each policy moves on known sizes, at component or block granularity; no torch.

Sizes come from --sizes, --model or the plan's local source folder (safetensors headers only). Returns the exit
status (1: a problem was found); a usage error exits 2 through argparse.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from planner.cli.common import existing, fail, fail_lines, usage, visible_text, working, write
from planner.cli.paths import output_problem
from planner.plan import PlanError
from planner.report.common import is_error, visible
from planner.validate import check, load_plan


def simulate(args, parser) -> int:
    from planner.simulate import components as simulate

    given = _merged_sizes(args.sizes, parser) if args.sizes else None
    try:
        path = existing(args.plan, parser, "simulate")
        found = [p for p in check(path) if is_error(p)]  # validate's checks, the class's against the index too
        if found:
            raise PlanError(found)
        plan = load_plan(path)
    except PlanError as exc:
        return fail(exc.problems)
    plan = _simulated(plan, args)
    if plan.granularity == "block":
        if args.calls is not None:
            usage(parser, "simulate", "--calls: granularity block simulates one steady call (and the first): "
                  "leave --calls out, or pass --granularity component")
        return _simulate_blocks(args, parser, plan)
    blockwise = [flag for flag, value in (("--steps", args.steps), ("--prefetch", args.prefetch),
                                          ("--bandwidth", args.bandwidth), ("--block-ms", args.block_ms),
                                          ("--host-spare", args.host_spare)) if value is not None]
    if blockwise:
        usage(parser, "simulate", f"{blockwise[0]} applies to granularity block: pass --granularity block, or "
              f"leave {blockwise[0]} out")
    if args.plot is not None:
        _plot_usable(parser, args.plot)
    if args.budget is None and plan.budget is None:
        usage(parser, "simulate", simulate.no_budget(plan))
    try:
        sizes, where = (given, "--sizes") if given is not None else _folder_sizes(args, plan, parser)
        calls = args.calls if args.calls is not None else simulate.DEFAULT_CALLS
        with working("simulate", f"simulating {calls} call{'s' if calls != 1 else ''} of {len(plan.call_order)} "
                     "component uses under every policy", args):
            result = simulate.simulate(plan, sizes, calls, args.budget, where=where, complete=given is not None)
    except PlanError as exc:
        return _fail_simulation(exc)
    _write_simulation(args, result, simulate.render_text)
    if args.plot is not None:
        try:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            from planner.simulate import plot

            plot.plot(result, args.plot)
        except OSError as exc:
            sys.stderr.write(f"planner simulate: error: {exc}\n")
            return 1
        (sys.stdout if args.format == "text" else sys.stderr).write(f"timeline written to {visible(args.plot)}\n")
    return 0


def _simulated(plan, args):
    """The plan with simulate's overrides of its block keys (--granularity, --steps, --prefetch)."""
    from dataclasses import replace

    changes = {key: value for key, value in (("granularity", args.granularity), ("steps", args.steps),
                                             ("prefetch", args.prefetch)) if value is not None}
    return replace(plan, **changes) if changes else plan


def _simulate_blocks(args, parser, plan) -> int:
    """`planner simulate` at granularity block: per-block sizes from a folder, one steady call per policy."""
    from planner.simulate import blocks as blocksim

    if args.sizes:
        usage(parser, "simulate", "granularity block needs each component's blocks, which --sizes cannot give: "
              "pass --model FOLDER (safetensors headers only), or --granularity component")
    if args.plot is not None:
        usage(parser, "simulate", "--plot draws whole components: leave it out at granularity block, or pass "
              "--granularity component")
    if args.budget is None and plan.budget is None:
        from planner.simulate import components

        usage(parser, "simulate", components.no_budget(plan))
    try:
        table, _ = _folder_table(args, plan, parser)
        dtype = plan.torch_dtype or table.torch_dtype
        component_blocks = {name: c.blocks(dtype) for name, c in table.components.items()}
        per_block = _block_seconds(args.block_ms, component_blocks, parser)
        with working("simulate", solving_message(component_blocks, plan.steps), args):
            result = blocksim.simulate(plan, component_blocks, args.budget if args.budget is not None else plan.budget,
                                       pieces=lambda name, splits: table.components[name].blocks(dtype, splits),
                                       bandwidth=args.bandwidth, block_seconds=per_block, spare=args.host_spare,
                                       budget_flag="--budget" if args.budget is not None else None)
    except PlanError as exc:
        return _fail_simulation(exc)
    _write_simulation(args, result, blocksim.render_text)
    return 0


def _block_seconds(block_ms, component_blocks, parser):
    """--block-ms as the time model takes it: seconds for every block (a number), or its table of kinds, each of
    which must name some block of the model (else a usage error naming the flag)."""
    if block_ms is None or isinstance(block_ms, (int, float)):
        return (block_ms or 0.0) / 1000
    keys = [(c, b) for c, blocks in component_blocks.items() for b in blocks]
    unmatched = block_ms.unmatched(keys)
    if unmatched:
        from planner.budget.timing import block_kind

        kinds = sorted({f"{c}/{block_kind(b)}" for c, b in keys})
        usage(parser, "simulate", f"--block-ms: {', '.join(map(repr, unmatched))} names no block of the model: its "
              f"kinds are {', '.join(kinds)} (or default)")
    return block_ms


def solving_message(component_blocks: dict, steps: int | None) -> str:
    """What a block simulation says it is doing while it takes long."""
    blocks = sum(len(b) for b in component_blocks.values())
    steps = steps or 1
    return f"solving the block schedule ({blocks} blocks, {steps} step{'s' if steps != 1 else ''} per call)"


def _fail_simulation(exc: PlanError) -> int:
    """A simulation's problems: with the plan's source lines when they have a place in it, else one line each."""
    located = any(p.line for p in exc.problems)
    return fail(exc.problems) if located else fail_lines(exc.problems)


def _write_simulation(args, result, render) -> None:
    """`result` on stdout: its JSON document with --format json, else `render(result)`."""
    if args.format == "json":
        from planner.report.common import neutral_json

        write(neutral_json(json.dumps(result.to_json(), indent=2)) + "\n")
    else:
        write(visible_text(render(result)))


def _plot_usable(parser, path: str) -> None:
    """Exit 2 when --plot cannot be drawn: no matplotlib (the plot extra), a path that cannot be written, an
    extension matplotlib writes no format for."""
    from planner.simulate import plot as simulate

    if not simulate.plot_available():
        usage(parser, "simulate", f"--plot needs the plot extra (matplotlib not installed): {simulate.PLOT_EXTRA}")
    problem = output_problem(path)
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    formats = simulate.plot_formats()
    if problem is None and extension not in formats:
        problem = (f"{path!r} has {f'the extension .{extension}' if extension else 'no extension'}, which names no "
                   f"format matplotlib writes: use .png, .svg or .pdf")
    if problem:
        usage(parser, "simulate", f"--plot: {problem}")


def _merged_sizes(given: list[dict], parser) -> dict:
    """The --sizes flags as one mapping; a name in two of them is a usage error."""
    merged: dict = {}
    for sizes in given:
        twice = sorted(set(merged) & set(sizes))
        if twice:
            usage(parser, "simulate", f"--sizes: {', '.join(map(repr, twice))} given twice: keep one")
        merged.update(sizes)
    return merged


def _folder_sizes(args, plan, parser) -> tuple[dict, str]:
    """The plan's component sizes from --model, else from its pipeline.source when that is a local folder, checked
    against the plan (`planner validate --model`'s checks); raises PlanError with the problems."""
    table, source = _folder_table(args, plan, parser)
    return dict(table.loaded_bytes()), source


def _folder_table(args, plan, parser):
    """(`planner.folder.sizes.ModelSizes`, its source) for --model, else the plan's pipeline.source when that is a local
    folder, checked against the plan (`planner validate --model`'s checks); raises PlanError with the problems."""
    from planner import rules
    from planner.folder import check as folder_check

    source = args.model
    if source is None:
        from planner.executor import run  # its source checks import no torch
        from planner.executor import source as sources

        if plan.pipeline_source is None:
            usage(parser, "simulate", "no sizes: pass --sizes NAME=SIZE,... or --model FOLDER (the plan names no "
                  "pipeline.source to read them from)")
        located = sources.locate_source(plan, run.Request())
        if located.folder_class is None:
            usage(parser, "simulate", f"the plan's source {located.name!r} is a hub id: pass --model "
                  f"{located.name} to read its sizes from the hub's safetensors headers, or --sizes")
        source = located.name
    elif not source.strip():
        usage(parser, "simulate", "--model: an empty name: name a folder holding model_index.json, or a hub id")
    tables, problems = folder_check.check_plans(source, [plan])
    if args.budget is not None:  # the plan's own budget is not the one simulated
        problems = [p for p in problems if p.rule != rules.PLN409.id]
    if any(is_error(p) for p in problems) or not tables:
        raise PlanError(problems)
    return tables[0], source
