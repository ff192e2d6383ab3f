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

from planner.cli.common import fail_lines, usage, visible_text, write
from planner.cli.paths import clobbers, output_problem
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
    except scaffold.NoPlan as exc:
        return fail_lines([exc.problem])
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
