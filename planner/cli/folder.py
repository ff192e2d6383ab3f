"""`planner inspect` and `planner init`: the commands that read a model folder (or a class in the index), no torch.

Each returns its exit status (1: a problem was found); a usage error exits 2 through argparse.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from planner.cli.common import fail_lines, usage, visible_text, working, write
from planner.cli.paths import clobbers, output_problem
from planner.plan import PlanError
from planner.report.common import is_error, visible


def inspect(args, parser) -> int:
    from dataclasses import asdict

    from planner.folder import reader, sizes, text
    from planner.report.common import neutral_json

    if not args.source.strip():
        usage(parser, "inspect", "an empty name: name a folder holding model_index.json, or a hub id (org/name)")
    if args.variant is not None and not args.variant.strip():
        usage(parser, "inspect", "--variant: an empty name: name a variant such as fp16, or leave it out")
    found, problems = reader.read(args.source, variant=args.variant, torch_dtype=args.dtype, revision=args.revision)
    if args.format == "json":
        shown = found or sizes.ModelSizes(None, args.source, {}, variant=args.variant, torch_dtype=args.dtype)
        write(neutral_json(json.dumps({**shown.to_json(), "problems": [asdict(p) for p in problems]},
                                      indent=2)) + "\n")
    elif found is not None:
        write(visible_text(text.render_text(found)))
    if args.format == "text" and problems:
        sys.stdout.flush()  # the table first, then what kept components out of it
        fail_lines(problems)
    return 1 if any(is_error(p) for p in problems) else 0


def init(args, parser) -> int:
    from planner import scaffold
    from planner.rules.device import device_problems

    if args.variant == "":
        usage(parser, "init", "--variant: an empty name: leave --variant out, or name one (fp16)")
    if args.output is not None:
        problem = output_problem(args.output)
        if problem is None and args.model is not None:
            problem = clobbers(args.output, [], [args.model] if os.path.isdir(args.model) else [])
        if problem is None and os.path.lexists(args.output) and not args.force:
            problem = f"{visible(args.output)!r} exists: pass --force to overwrite it"
        if problem:
            usage(parser, "init", problem)
    if args.budget is None and args.steps is not None:
        usage(parser, "init", "--steps: the steps of a budget plan: pass --budget SIZE too, or leave --steps out")
    if args.budget is not None and args.model is None:
        usage(parser, "init", "--budget needs --model FOLDER: the component sizes decide the granularity")
    found = device_problems(args.device, None)
    if found:
        return fail_lines([rule.problem("--device", message, fix) for _, rule, message, fix in found])
    options = scaffold.Options(torch_dtype=args.dtype, variant=args.variant, device=args.device,
                               schema=scaffold.schema_path(args.output))
    cls, where = args.pipeline_class, "--pipeline-class"
    if args.model is not None:
        from planner.folder import reader

        read, problems = reader.read(args.model, variant=args.variant, torch_dtype=args.dtype)
        if problems:
            return fail_lines(problems)
        cls, where = read.class_name, os.path.join(args.model, "model_index.json")
        options = replace(options, source=_source_for(args.model, args.output), sizes=read)
    try:
        text = scaffold.plan_text(cls, options, where)
        if args.budget is not None:
            text = _budget_plan(cls, options, where, args)
    except scaffold.NoPlan as exc:
        return fail_lines([exc.problem])
    except PlanError as exc:  # a budget below what any schedule needs (PLN409), a pin the host cannot hold
        return fail_lines(exc.problems)
    if args.output is None:
        write(text)
        return 0
    target = Path(args.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.parent, delete=False,
                                     prefix=f".{target.name}.", suffix=".tmp") as out:
        out.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out.name, 0o666 & ~umask)  # as an ordinary new file, not the temporary file's 0600
    os.replace(out.name, target)  # never a half-written plan, even when interrupted
    print(f"wrote {visible(args.output)}")
    return 0


def _source_for(model: str, output: str | None) -> str:
    """`pipeline.source` for `--model`: a hub id as given; a folder relative to the plan file's folder (the plan
    resolves a relative source against the current folder, then against its own folder)."""
    if not os.path.exists(model) or output is None:
        return model
    return os.path.relpath(os.path.abspath(model), os.path.dirname(os.path.abspath(output))).replace(os.sep, "/")


def _budget_plan(cls: str, options, where: str, args) -> str:
    """The budget plan `init --budget` writes: the granularity `planner.budget.decide` picks for the folder's sizes,
    and as comments what `planner simulate` predicts for it (one steady call against the chain and group
    offloading, the time model's seconds, the host memory its copies hold). Raises PlanError (located at --budget
    when the budget is below what any schedule needs)."""
    from planner import scaffold
    from planner.budget import decide
    from planner.cli.simulate import solving_message
    from planner.simulate import blocks as blocksim
    from planner.units import human
    from planner.validate import load_text

    read = options.sizes
    options = replace(options, budget=args.budget, steps=args.steps, granularity="component")
    plan = load_text(scaffold.plan_text(cls, options, where), args.output or "<planner init>")
    granularity = decide.granularity_for(plan, read.loaded_bytes(), plan.budget)
    blocks = {name: c.blocks(read.torch_dtype) for name, c in read.components.items()}
    with working("init", solving_message(blocks, plan.steps)):
        found = blocksim.simulate(replace(plan, granularity="block"), blocks, plan.budget, budget_flag="--budget")
    ours = found.rows[blocksim.OURS if granularity == "block" else blocksim.WHOLE]
    steps = found.model.steps
    against = [f"{human(found.rows[name].h2d_bytes)} for {label}"
               f"{' (over the budget)' if found.rows[name].over_budget else ''}" for name, label in
               (("chain", "diffusers' chain"), ("group_offloading", "group offloading")) if name in found.rows]
    notes = [f"planner simulate predicts, for one steady call of {steps} step{'s' if steps != 1 else ''} within "
             f"{human(plan.budget)} ({granularity} by {granularity}): {human(ours.h2d_bytes)} host to device, "
             f"against {' and '.join(against)}."]
    if ours.timing is not None:
        pinned, pageable = found.bandwidth
        notes.append(f"About {ours.timing.transfer:.2f} s of transfer per call ({ours.timing.exposed:.2f} s not "
                     f"hidden by compute) at {pinned / 1e9:g} GB/s pinned, {pageable / 1e9:g} GB/s pageable.")
    notes.append(f"The host copies hold {human(found.pinning.host_bytes)} of host memory.")
    return scaffold.plan_text(cls, replace(options, granularity=granularity, notes=tuple(notes)), where)
