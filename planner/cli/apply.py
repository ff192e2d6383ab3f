"""`planner apply` and `planner tiny`: the commands that need the apply extra (torch, diffusers), imported last.

Every argument and path is checked before torch is imported; each command returns its exit status (1: a problem
was found, or an output could not be written at the end), and a usage error exits 2 through argparse.
"""

from __future__ import annotations

import os
import sys

from planner.cli.common import APPLY_EXTRA, existing, fail, progress, require_apply_extra, usage, write
from planner.cli.paths import apply_path_problem, clobbers, folder_problem
from planner.plan import PlanError
from planner.validate import load_plan


def apply(args, parser) -> int:
    require_apply_extra(parser, "apply")
    problem = apply_path_problem(args)
    if problem:
        usage(parser, "apply", problem)
    overrides = {key: value for key, value in (("device", args.device), ("gpu_id", args.gpu_id),
                                               ("pipeline.torch_dtype", args.dtype), ("pipeline.variant", args.variant),
                                               ("policy", args.policy), ("budget", args.budget),
                                               ("granularity", args.granularity))
                 if value is not None}
    try:
        plan = load_plan(existing(args.plan, parser, "apply"), overrides)
    except PlanError as exc:
        return fail(exc.problems)
    source = args.source or plan.pipeline_source
    folders = [s for s in (source, os.path.join(os.path.dirname(args.plan), source or "")) if s and os.path.isdir(s)]
    for flag, value in (("--out", args.out), ("--trace-json", args.trace_json)):
        problem = value and clobbers(value, [args.plan, args.image], folders)
        if problem:
            usage(parser, "apply", f"{flag}: {problem}")
    from planner.executor import CompatError, run  # no torch: run() checks the source folder before it does

    try:
        report = run.run(plan, run.Request.from_args(args, progress=progress(args)))
    except PlanError as exc:
        return fail(exc.problems)
    except CompatError as exc:  # the installed diffusers/accelerate moved what the executor reads
        sys.stderr.write(f"planner apply: error: {exc}\n")
        return 1
    except ImportError as exc:  # the apply extra is there but does not import (a broken or partial install)
        usage(parser, "apply", f"cannot import {exc.name or 'a dependency'} ({exc}): {APPLY_EXTRA}")
    except OSError as exc:  # writing the outputs at the end: the disk filled up, a folder went away
        sys.stderr.write(f"planner apply: error: {exc}\n")
        return 1
    write(report)
    return 0


def tiny(args, parser) -> int:
    require_apply_extra(parser, "tiny")
    from planner import tiny
    from planner.executor import run

    if not args.folder or not tiny.built(args.kind, args.folder):  # "" would name the working folder
        problem = folder_problem(args.folder) or tiny.folder_problem(args.folder)
        if problem:
            usage(parser, "tiny", problem)
    try:
        with run.console(progress(args)):
            folder = tiny.build(args.kind, args.folder)
    except (tiny.FolderInUse, tiny.Unavailable) as exc:  # filled between the check and the build; an old diffusers
        usage(parser, "tiny", str(exc))
    except OSError as exc:
        sys.stderr.write(f"planner tiny: error: {exc}\n")
        return 1
    print(f"tiny {args.kind} pipeline in {folder}")
    kind = tiny.KINDS[args.kind]
    if kind.hint():  # the flags a quick call of this one needs: say them once, here
        image = f" (IMAGE: {kind.image})" if kind.image else ""
        print(f"call it with: planner apply plans/{kind.plans[0]}.yaml --source {folder} --dry-run "
              f"{kind.hint()}{image}")
    return 0
