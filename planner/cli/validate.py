"""`planner validate`, `planner show` and `planner schema`: the commands that read plan files and nothing else.

Each returns its exit status (1: a problem was found); a usage error exits 2 through argparse.
"""

from __future__ import annotations

import argparse
import json

from planner.cli.common import existing, fail, usage, visible_text, write
from planner.discover import Entry, discover
from planner.plan import PlanError, Problem
from planner.report import FORMATS
from planner.report.common import is_error, visible
from planner.validate import check, load_plan


def _plan_files(paths: list[str], exclude: list[str], parser: argparse.ArgumentParser) -> list[Entry]:
    found = discover(paths, exclude)
    if found.missing:
        parser.error(f"{', '.join(visible(raw) for raw in found.missing)}: no such file or folder")
    return list(found.entries)


def validate(args, parser) -> int:
    entries = _plan_files(args.paths, args.exclude, parser)
    problems = [p for entry in entries for p in ([entry.problem] if entry.problem else check(entry.path))]
    tables = []
    if args.model is not None:
        if not args.model.strip():
            usage(parser, "validate", "--model: an empty name: name a folder holding model_index.json, or a hub id")
        tables, found = _against_model(args.model, entries)
        order = {entry.path: i for i, entry in enumerate(entries)}  # each plan's in source order, then the folder's
        problems = sorted(problems + found, key=lambda p: (order.get(p.path, len(order)), p.line, p.column))
    report = FORMATS[args.format](problems, [entry.path for entry in entries])
    if tables and args.format == "json":
        from planner.report.common import neutral_json

        report = neutral_json(json.dumps({**json.loads(report), "sizes": [t.to_json() for t in tables]},
                                         indent=2)) + "\n"
    elif tables and args.format == "text":
        from planner.folder.text import render_text

        report = "".join(visible_text(render_text(t)) + "\n" for t in tables) + report
    write(report)
    return 1 if any(args.strict or is_error(p) for p in problems) else 0  # warnings fail only under --strict


def _against_model(model: str, entries: list[Entry]) -> tuple[list, list[Problem]]:
    """`validate --model`: the sizes read and the problems of the model folder and of each plan against it. A
    plan with errors is not compared (its own problems are reported already)."""
    from planner.folder import check as folder_check

    plans = []
    for entry in entries:
        if entry.problem is None:
            try:
                plans.append(load_plan(entry.path))
            except PlanError:
                pass
    return folder_check.check_plans(model, plans)


def show(args, parser) -> int:
    try:
        plan = load_plan(existing(args.plan, parser, "show"))
    except PlanError as exc:
        return fail(exc.problems)
    print(plan.offload_seq)
    print(f"device: {plan.device}")
    print(f"gpu_id: {plan.gpu_id if plan.gpu_id is not None else '(unset: 0, or the index in device)'}")
    print(f"exclude: {', '.join(sorted(plan.exclude)) or '(none)'}")
    if plan.own_hook:
        print(f"own_hook: {', '.join(sorted(plan.own_hook))}")
    if plan.policy == "budget":
        from planner.units import human

        budget = f"{human(plan.budget)} ({plan.budget} bytes)" if plan.budget is not None else \
            "(unset: the free memory minus reserve)"
        print(f"policy: budget, {budget}, granularity {plan.granularity}")
        if plan.granularity == "block":
            print(f"steps: {plan.steps or 1}, prefetch: {str(plan.prefetch).lower()}, pin: {plan.pin}")
    return 0


def schema(args, parser) -> int:
    from planner.rules.schema import schema_text

    write(schema_text())
    return 0
