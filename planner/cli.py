"""`planner`: argument parsing and formatting only; the work is the core's and the executor's.

Exit status: 0 all good, 1 a problem was found (a plan, a pipeline, a run), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.executor.tiny import KINDS  # a constant: importing it loads no torch
from planner.plan import PlanError, Problem, check, load_plan
from planner.report import FORMATS


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, parser)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="planner", description="Checked model CPU offload plans for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check plan files (CI, pre-commit)")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="plan files, or folders to search for *.yaml/*.yml")
    validate.add_argument("--format", default="text", choices=list(FORMATS))
    validate.set_defaults(run=_validate)

    show = sub.add_parser("show", help="print a plan's resolved sequence, device and exclusions")
    show.add_argument("plan", metavar="PLAN")
    show.set_defaults(run=_show)

    schema = sub.add_parser("schema", help="print the plan JSON Schema")
    schema.set_defaults(run=_schema)

    apply = sub.add_parser("apply", help="load the plan's pipeline, apply the plan and generate")
    apply.add_argument("plan", metavar="PLAN")
    apply.add_argument("--source", help="override pipeline.source (a local folder or a hub id)")
    apply.add_argument("--prompt", default="an astronaut riding a horse")
    apply.add_argument("--negative-prompt")
    apply.add_argument("--steps", type=_positive, default=2)
    apply.add_argument("--seed", type=int, default=0)
    apply.add_argument("--height", type=_positive)
    apply.add_argument("--width", type=_positive)
    apply.add_argument("--image", help="an input image for pipelines that take one (ControlNet, img2img)")
    apply.add_argument("--calls", type=_positive, default=1, help="pipeline calls to make (default 1)")
    apply.add_argument("--out", help="write the last image here (PNG)")
    apply.add_argument("--device", help="override the plan's device")
    apply.add_argument("--gpu-id", type=int, help="override the plan's gpu_id")
    apply.add_argument("--dry-run", action="store_true",
                       help="install the same hooks with the CPU as execution device and trace what would move")
    apply.add_argument("--trace-json", metavar="PATH", help="write the transfer trace as JSON")
    apply.set_defaults(run=_apply)

    tiny = sub.add_parser("tiny", help="build a tiny random-weight pipeline folder (offline) to try plans on")
    tiny.add_argument("kind", choices=KINDS)
    tiny.add_argument("folder")
    tiny.set_defaults(run=_tiny)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _plan_files(paths: list[str], parser: argparse.ArgumentParser) -> list[str]:
    files = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        elif path.is_file():
            files.append(raw)
        else:
            parser.error(f"{raw}: no such file or folder")
    return files


def _validate(args, parser) -> int:
    files = _plan_files(args.paths, parser)
    problems = [p for f in files for p in check(f)]
    sys.stdout.write(FORMATS[args.format](problems, files))
    return 1 if problems else 0


def _show(args, parser) -> int:
    try:
        plan = load_plan(_existing(args.plan, parser))
    except PlanError as exc:
        return _fail(exc.problems)
    print(plan.offload_seq)
    print(f"device: {plan.device}")
    print(f"gpu_id: {plan.gpu_id if plan.gpu_id is not None else '(unset: 0, or the index in device)'}")
    print(f"exclude: {', '.join(sorted(plan.exclude)) or '(none)'}")
    return 0


def _schema(args, parser) -> int:
    from planner.rules import schema_text

    sys.stdout.write(schema_text())
    return 0


def _apply(args, parser) -> int:
    overrides = {key: value for key, value in (("device", args.device), ("gpu_id", args.gpu_id)) if value is not None}
    try:
        plan = load_plan(_existing(args.plan, parser), overrides)
    except PlanError as exc:
        return _fail(exc.problems)
    from planner.executor import generate

    try:
        report = generate.run(plan, generate.Request.from_args(args))
    except PlanError as exc:
        return _fail(exc.problems)
    sys.stdout.write(report)
    return 0


def _tiny(args, parser) -> int:
    from planner.executor import generate, tiny

    generate.quiet()
    print(f"tiny {args.kind} pipeline in {tiny.build(args.kind, args.folder)}")
    return 0


def _existing(path: str, parser: argparse.ArgumentParser) -> str:
    if not Path(path).is_file():
        parser.error(f"{path}: no such file")
    return path


def _fail(problems: list[Problem]) -> int:
    from planner.report import text

    sys.stderr.write(text.render(problems, sorted({p.path for p in problems})))
    return 1


if __name__ == "__main__":
    sys.exit(main())
