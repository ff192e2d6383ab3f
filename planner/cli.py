"""`planner`: argument parsing and formatting only; the work is the core's and the executor's.

Exit status: see EXIT_STATUS. `apply` and `tiny` check every argument they can before any work, and before
importing torch: a mistake costs what `validate` costs, never a long run.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import re
import stat
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from planner import __version__
from planner.discover import Entry, discover
from planner.folder.sizes import TORCH_DTYPES
from planner.plan import PlanError, Problem
from planner.report import FORMATS
from planner.report.common import is_error, visible
from planner.tiny import KINDS  # a constant: importing it loads no torch
from planner.validate import check, load_plan

EXIT_STATUS = """\
exit status:
  0    all good
  1    a problem was found (a plan, a pipeline, a run)
  2    a usage error (a bad flag, a missing file, an output that cannot be written, a missing extra)
  130  interrupted (Ctrl-C)
  141  the output was closed early (planner show PLAN | head -1), as for any Unix tool"""
APPLY_EXTRA = "pip install 'offload-planner[apply]'"


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv) and return its exit status (EXIT_STATUS); argparse's
    usage errors and --help/--version exit through SystemExit as usual."""
    if sys.stdout is None:  # started with stdout closed (`planner show PLAN >&-`): there is nowhere to answer
        if sys.stderr is not None:
            sys.stderr.write("planner: error: standard output is closed: nothing can be written\n")
        return 2
    try:
        try:
            parser = _parser()
            args = parser.parse_args(argv)
            return args.run(args, parser)
        finally:
            sys.stdout.flush()  # a reader that left shows up here, in the handler below, not at interpreter exit
    except KeyboardInterrupt:
        sys.stderr.write("planner: interrupted\n")
        return 130
    except BrokenPipeError:
        _discard_output()
        return 141
    except OSError as exc:  # stdout on a full disk or a device that refuses it (planner inspect DIR > /dev/full)
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        _discard_output(keep_stderr=True)
        sys.stderr.write(f"planner: error: cannot write the output: {exc.strerror or exc}\n")
        return 2


# Errors of writing the output itself (not of a file the command reads): a full disk, a quota, a device error.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _discard_output(keep_stderr: bool = False) -> None:
    """Point stdout and stderr at /dev/null, as Python's documentation advises on a broken pipe: what is still
    buffered is flushed there at exit instead of failing again with an "Exception ignored" message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout,) if keep_stderr else (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor (captured, closed)
            pass
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="planner", description="Checked model CPU offload plans for diffusers.",
                                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check plan files (CI, pre-commit)")
    validate.add_argument("paths", nargs="+", metavar="PATH",
                          help="plan files (any extension), or folders to search for *.yaml/*.yml (hidden folders "
                               "and virtual environments skipped; a folder with no plan file is a problem)")
    validate.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                          help="leave out files and folders matching GLOB (name, path relative to the folder given, "
                               "or path as printed; repeatable)")
    validate.add_argument("--format", default="text", choices=list(FORMATS))
    validate.add_argument("--strict", action="store_true", help="warnings fail validation too (exit 1)")
    validate.add_argument("--model", metavar="PATH_OR_HUB_ID",
                          help="check each plan against this diffusers folder (or hub id) too, from its "
                               "safetensors headers: its components, its class, every weights file whole; text "
                               "output prints its sizes")
    validate.set_defaults(run=_validate)

    show = sub.add_parser("show", help="print a plan's resolved sequence, device and exclusions")
    show.add_argument("plan", metavar="PLAN", help="a plan file")
    show.set_defaults(run=_show)

    schema = sub.add_parser("schema", help="print the plan JSON Schema")
    schema.set_defaults(run=_schema)

    inspect = sub.add_parser("inspect", help="sizes of a diffusers folder or hub repo, from its safetensors headers",
                             description="Print each model component's class, stored dtype and size, its size "
                             "at --dtype and its repeated blocks, read from model_index.json and the safetensors "
                             "headers alone: no weights are read, no torch is imported. A hub id is read by range "
                             "requests (nothing downloaded but the headers).")
    inspect.add_argument("source", metavar="PATH_OR_HUB_ID", help="a folder holding model_index.json, or org/name")
    inspect.add_argument("--dtype", choices=list(TORCH_DTYPES),
                         help="the torch_dtype it will be loaded at (default: as from_pretrained without one)")
    inspect.add_argument("--variant", metavar="NAME", help="read the weights of this variant (*.fp16.safetensors), "
                         "as from_pretrained(variant=...) chooses them")
    inspect.add_argument("--revision", metavar="REV", help="the hub revision (a hub id only)")
    inspect.add_argument("--format", default="text", choices=["text", "json"])
    inspect.set_defaults(run=_inspect)

    init = sub.add_parser("init", help="write the plan that reproduces diffusers' offload for a class or a folder",
                          description="Print (or write with -o) the plan that reproduces what diffusers' "
                          "enable_model_cpu_offload hooks for a pipeline class, from the shipped index (no torch): "
                          "its chain, its exclusions, the models left to a hook of their own, with a comment per "
                          "component (its size, for --model).")
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline-class", metavar="NAME", help="a diffusers pipeline class name")
    source.add_argument("--model", metavar="PATH_OR_HUB_ID", help="a diffusers folder (model_index.json) or hub id: "
                        "its class, its source and its sizes (headers only, no weights read)")
    init.add_argument("--dtype", choices=list(TORCH_DTYPES),
                      help="pipeline.torch_dtype, and the dtype the sizes are shown at")
    init.add_argument("--variant", metavar="NAME", help="pipeline.variant (weights such as *.fp16.safetensors)")
    init.add_argument("--device", default="cuda", help="the plan's device (default: %(default)s)")
    init.add_argument("-o", "--output", metavar="FILE", help="write the plan here instead of printing it; an "
                      "existing file is kept unless --force")
    init.add_argument("--force", action="store_true", help="overwrite FILE")
    init.set_defaults(run=_init)

    apply = sub.add_parser("apply", help="load the plan's pipeline, apply the plan and generate",
                           description="Load the plan's pipeline, apply the plan, generate, and print what moved. "
                           "The plan, the flags, the paths and the source folder are checked first, without torch; "
                           "then the device; only then are the weights loaded.")
    apply.add_argument("plan", metavar="PLAN", help="a plan file")
    apply.add_argument("--source", metavar="DIR_OR_HUB_ID",
                       help="load this instead of the plan's pipeline.source (a local folder or a hub id)")
    apply.add_argument("--prompt", default="an astronaut riding a horse", help="the prompt (default: %(default)r)")
    apply.add_argument("--negative-prompt", metavar="TEXT", help="a negative prompt (default: none)")
    apply.add_argument("--steps", type=_positive, default=2, metavar="N",
                       help="denoising steps per call (default: %(default)s; a block plan is scheduled for them)")
    apply.add_argument("--seed", type=_seed, default=0, metavar="N", help="the generator's seed (default: %(default)s)")
    apply.add_argument("--height", type=_positive, metavar="PX", help="image height (default: the pipeline's)")
    apply.add_argument("--width", type=_positive, metavar="PX", help="image width (default: the pipeline's)")
    apply.add_argument("--image", metavar="IMAGE", help="an input image for pipelines that take one (ControlNet, "
                       "img2img)")
    apply.add_argument("--calls", type=_positive, default=1, metavar="N",
                       help="pipeline calls to make (default: %(default)s)")
    apply.add_argument("--out", metavar="IMAGE", help="write the last image here; its extension picks the format "
                       "(.png, .jpg, .webp, ...); missing folders are created")
    apply.add_argument("--device", help="override the plan's device (checked by the same rules)")
    apply.add_argument("--gpu-id", type=_integer, metavar="N",
                       help="override the plan's gpu_id (checked by the same rules)")
    apply.add_argument("--dtype", metavar="DTYPE", help="override the plan's pipeline.torch_dtype (checked by the "
                       f"same rules: {', '.join(TORCH_DTYPES)})")
    apply.add_argument("--variant", metavar="NAME", help="override the plan's pipeline.variant (checked by the same "
                       "rules, and against the source folder's files)")
    apply.add_argument("--policy", metavar="POLICY", help="override the plan's policy: chain (diffusers' own "
                       "offload) or budget (keep what fits within the budget); checked by the same rules")
    apply.add_argument("--budget", metavar="SIZE", help="override the plan's budget (8GiB, 512MB, bytes; checked by "
                       "the same rules): the bytes of weights the budget policy may keep on the device")
    apply.add_argument("--dry-run", action="store_true",
                       help="install the same hooks with the CPU as execution device and trace what would move")
    apply.add_argument("--trace-json", metavar="PATH", help="write the transfer trace as JSON; missing folders are "
                       "created")
    apply.add_argument("--events", action="store_true", help="print every load and offload event after the summary")
    apply.add_argument("--quiet", action="store_true", help="no progress bars (shown only when stderr is a terminal)")
    apply.set_defaults(run=_apply)

    tiny = sub.add_parser("tiny", help="build a tiny random-weight pipeline folder (offline) to try plans on",
                          description="Build a tiny random-weight pipeline and save it to FOLDER, offline. FOLDER "
                          "must be missing, empty, or a previous tiny build: nothing else is ever overwritten.")
    tiny.add_argument("kind", choices=KINDS, help="the pipeline to build (a library family: sd is Stable Diffusion "
                      "1.5, wan-i2v Wan 2.1 image-to-video, ...)")
    tiny.add_argument("folder", metavar="FOLDER", help="where to save it (reused when it holds this kind already)")
    tiny.add_argument("--quiet", action="store_true", help="no progress bars (shown only when stderr is a terminal)")
    tiny.set_defaults(run=_tiny)

    simulate = sub.add_parser("simulate", help="bytes moved per policy (chain, budget, the peers) on known sizes",
                              description="Simulate the plan's residency over --calls pipeline calls within a "
                              "budget: diffusers' chain, the budget policy (the fewest host-to-device bytes, proven "
                              "optimal), the peers' rules (diffusers' ComponentsManager, ComfyUI) and the lower "
                              "bound. Sizes from --sizes, else --model, else the plan's pipeline.source when it is "
                              "a local folder (safetensors headers only). No torch.")
    simulate.add_argument("plan", metavar="PLAN", help="a plan file")
    sized = simulate.add_mutually_exclusive_group()
    sized.add_argument("--sizes", action="append", type=_sizes, metavar="NAME=SIZE,...",
                       help="each component's size as loaded (8GiB, 512MB, bytes), or NAME=none for one the "
                       "pipeline lacks; repeatable")
    sized.add_argument("--model", metavar="PATH_OR_HUB_ID", help="read the sizes from this diffusers folder (or hub "
                       "id) at the plan's variant and torch_dtype")
    simulate.add_argument("--calls", type=_calls, metavar="N",
                          help="pipeline calls to simulate, at most 1000 (default: 4); granularity component only")
    simulate.add_argument("--budget", type=_size, metavar="SIZE", help="bytes of weights that may be on the device "
                          "at once (default: the plan's budget)")
    simulate.add_argument("--format", default="text", choices=["text", "json"])
    simulate.add_argument("--plot", metavar="IMAGE", help="draw the residency timeline (chain and budget) here; "
                          "needs the plot extra (matplotlib); granularity component only")
    blockwise = simulate.add_argument_group("granularity block", "block-granular residency (planner.budget.blocks): "
                                            "sizes per block from --model or the plan's source; one steady call")
    blockwise.add_argument("--granularity", choices=["component", "block"],
                           help="what the budget policy moves (default: the plan's granularity)")
    blockwise.add_argument("--steps", type=_steps, metavar="N", help="denoising steps per call: the denoiser runs "
                           "once per step (default: the plan's steps, else 1)")
    blockwise.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                           help="room for the next streamed block in flight (default: the plan's prefetch, true)")
    blockwise.add_argument("--bandwidth", type=_bandwidth, metavar="PINNED[,PAGEABLE]",
                           help="host-to-device GB/s from pinned and from pageable memory (default: 24,12; one "
                           "figure: pageable is half of it)")
    blockwise.add_argument("--block-ms", type=_block_ms, metavar="MS",
                           help="compute time of one block in milliseconds, for how much prefetch hides (default: 0)")
    blockwise.add_argument("--host-spare", type=_size, metavar="SIZE",
                           help="host memory pinning may take (default: what this host can spare, its container's "
                           "limit included)")
    simulate.set_defaults(run=_simulate)
    for command in sub.choices.values():  # every command documents its exit status
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = f"{command.epilog}\n\n{EXIT_STATUS}" if command.epilog else EXIT_STATUS
    return parser


def _integer_in(low: int | None, high: int | None, words: str):
    """An argparse type: an integer with `low <= value < high` (None: unbounded), refused as "must be `words`,
    not 'x'", in words that name no internal function."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not a number, or more digits than int() takes
            value = None
        if value is None or (low is not None and value < low) or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"must be {words}, not {text!r}")
        return value

    convert.__name__ = words  # argparse's own messages name the type by it
    return convert


_integer = _integer_in(None, None, "an integer")
_positive = _integer_in(1, None, "a positive integer")
_seed = _integer_in(-(2**63), 2**64, "an integer from -2**63 to 2**64-1")  # what torch's generator accepts
_calls = _integer_in(1, 1001, "a whole number from 1 to 1000")  # a simulated call costs about 1 ms per use
_steps = _integer_in(1, 10001, "a whole number from 1 to 10000")  # the schema's bound on the plan's steps


def _number_in(low: float, high: float, words: str, *, low_open: bool = False):
    """An argparse type: a finite decimal number within [low, high] ((low, high] with `low_open`)."""

    def convert(text: str) -> float:
        try:
            value = float(text) if re.fullmatch(r"[0-9]+(\.[0-9]+)?|\.[0-9]+", text.strip()) else None
        except ValueError:
            value = None
        if value is None or value > high or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be {words}, not {text!r}")
        return value

    convert.__name__ = words
    return convert


_gbps = _number_in(0.0, 10_000.0, "a speed in GB/s above 0 and at most 10000", low_open=True)
_block_ms = _number_in(0.0, 1e6, "milliseconds from 0 to 1000000")


def _bandwidth(text: str) -> tuple[float, float]:
    """An argparse type: `--bandwidth PINNED[,PAGEABLE]` in GB/s -> (pinned, pageable) bytes per second."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"must be PINNED or PINNED,PAGEABLE (GB/s), not {text!r}")
    pinned = _gbps(parts[0])
    pageable = _gbps(parts[1]) if len(parts) == 2 else pinned / 2
    return pinned * 1e9, pageable * 1e9


_bandwidth.__name__ = "PINNED[,PAGEABLE]"


def _size(text: str) -> int:
    """An argparse type: a size in bytes (`planner.units`: 8GiB, 512MB, 1073741824)."""
    from planner.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sizes(text: str) -> dict:
    """An argparse type: `--sizes NAME=SIZE,...` (`planner.simulate.components.parse_sizes`)."""
    from planner.simulate.components import parse_sizes

    try:
        return parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_size.__name__, _sizes.__name__ = "a size", "NAME=SIZE,..."  # argparse's own messages name the type by it


def _plan_files(paths: list[str], exclude: list[str], parser: argparse.ArgumentParser) -> list[Entry]:
    found = discover(paths, exclude)
    if found.missing:
        parser.error(f"{', '.join(visible(raw) for raw in found.missing)}: no such file or folder")
    return list(found.entries)


def _validate(args, parser) -> int:
    entries = _plan_files(args.paths, args.exclude, parser)
    problems = [p for entry in entries for p in ([entry.problem] if entry.problem else check(entry.path))]
    tables = []
    if args.model is not None:
        if not args.model.strip():
            _usage(parser, "validate", "--model: an empty name: name a folder holding model_index.json, or a hub id")
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

        report = "".join(_visible_text(render_text(t)) + "\n" for t in tables) + report
    _write(report)
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


def _write(text: str) -> None:
    """`text` on stdout; an output encoding that cannot show a name's characters gets escapes, never a failure."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _visible_text(text: str) -> str:
    """`text` with every line's names shown as data (`visible`), its line breaks kept."""
    return "\n".join(visible(line) for line in text.split("\n"))


def _inspect(args, parser) -> int:
    from dataclasses import asdict

    from planner.folder import reader, sizes, text
    from planner.report.common import neutral_json

    if not args.source.strip():
        _usage(parser, "inspect", "an empty name: name a folder holding model_index.json, or a hub id (org/name)")
    if args.variant is not None and not args.variant.strip():
        _usage(parser, "inspect", "--variant: an empty name: name a variant such as fp16, or leave it out")
    found, problems = reader.read(args.source, variant=args.variant, torch_dtype=args.dtype, revision=args.revision)
    if args.format == "json":
        shown = found or sizes.ModelSizes(None, args.source, {}, variant=args.variant, torch_dtype=args.dtype)
        _write(neutral_json(json.dumps({**shown.to_json(), "problems": [asdict(p) for p in problems]},
                                       indent=2)) + "\n")
    elif found is not None:
        _write(_visible_text(text.render_text(found)))
    if args.format == "text" and problems:
        sys.stdout.flush()  # the table first, then what kept components out of it
        _fail_lines(problems)
    return 1 if any(is_error(p) for p in problems) else 0


def _show(args, parser) -> int:
    try:
        plan = load_plan(_existing(args.plan, parser, "show"))
    except PlanError as exc:
        return _fail(exc.problems)
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


def _schema(args, parser) -> int:
    from planner.rules.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def _init(args, parser) -> int:
    from planner import scaffold
    from planner.rules.device import device_problems

    if args.variant == "":
        _usage(parser, "init", "--variant: an empty name: leave --variant out, or name one (fp16)")
    if args.output is not None:
        problem = _output_problem(args.output)
        if problem is None and args.model is not None:
            problem = _clobbers(args.output, [], [args.model] if os.path.isdir(args.model) else [])
        if problem is None and os.path.lexists(args.output) and not args.force:
            problem = f"{visible(args.output)!r} exists: pass --force to overwrite it"
        if problem:
            _usage(parser, "init", problem)
    found = device_problems(args.device, None)
    if found:
        return _fail_lines([rule.problem("--device", message, fix) for _, rule, message, fix in found])
    options = scaffold.Options(torch_dtype=args.dtype, variant=args.variant, device=args.device,
                               schema=scaffold.schema_path(args.output))
    cls, where = args.pipeline_class, "--pipeline-class"
    if args.model is not None:
        from planner.folder import reader

        read, problems = reader.read(args.model, variant=args.variant, torch_dtype=args.dtype)
        if problems:
            return _fail_lines(problems)
        cls, where = read.class_name, os.path.join(args.model, "model_index.json")
        options = replace(options, source=_source_for(args.model, args.output), sizes=read)
    try:
        text = scaffold.plan_text(cls, options, where)
    except scaffold.NoPlan as exc:
        return _fail_lines([exc.problem])
    if args.output is None:
        sys.stdout.write(text)
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


def _apply(args, parser) -> int:
    _require_apply_extra(parser, "apply")
    problem = _apply_path_problem(args)
    if problem:
        _usage(parser, "apply", problem)
    overrides = {key: value for key, value in (("device", args.device), ("gpu_id", args.gpu_id),
                                               ("pipeline.torch_dtype", args.dtype), ("pipeline.variant", args.variant),
                                               ("policy", args.policy), ("budget", args.budget))
                 if value is not None}
    try:
        plan = load_plan(_existing(args.plan, parser, "apply"), overrides)
    except PlanError as exc:
        return _fail(exc.problems)
    source = args.source or plan.pipeline_source
    folders = [s for s in (source, os.path.join(os.path.dirname(args.plan), source or "")) if s and os.path.isdir(s)]
    for flag, value in (("--out", args.out), ("--trace-json", args.trace_json)):
        problem = value and _clobbers(value, [args.plan, args.image], folders)
        if problem:
            _usage(parser, "apply", f"{flag}: {problem}")
    from planner.executor import CompatError, run  # no torch: run() checks the source folder before it does

    try:
        report = run.run(plan, run.Request.from_args(args, progress=_progress(args)))
    except PlanError as exc:
        return _fail(exc.problems)
    except CompatError as exc:  # the installed diffusers/accelerate moved what the executor reads
        sys.stderr.write(f"planner apply: error: {exc}\n")
        return 1
    except ImportError as exc:  # the apply extra is there but does not import (a broken or partial install)
        _usage(parser, "apply", f"cannot import {exc.name or 'a dependency'} ({exc}): {APPLY_EXTRA}")
    except OSError as exc:  # writing the outputs at the end: the disk filled up, a folder went away
        sys.stderr.write(f"planner apply: error: {exc}\n")
        return 1
    sys.stdout.write(report)
    return 0


def _tiny(args, parser) -> int:
    _require_apply_extra(parser, "tiny")
    from planner import tiny
    from planner.executor import run

    if not args.folder or not tiny.built(args.kind, args.folder):  # "" would name the working folder
        problem = _folder_problem(args.folder) or tiny.folder_problem(args.folder)
        if problem:
            _usage(parser, "tiny", problem)
    try:
        with run.console(_progress(args)):
            folder = tiny.build(args.kind, args.folder)
    except (tiny.FolderInUse, tiny.Unavailable) as exc:  # filled between the check and the build; an old diffusers
        _usage(parser, "tiny", str(exc))
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


def _simulate(args, parser) -> int:
    from planner.simulate import components as simulate

    given = _merged_sizes(args.sizes, parser) if args.sizes else None
    try:
        path = _existing(args.plan, parser, "simulate")
        found = [p for p in check(path) if is_error(p)]  # validate's checks, the class's against the index too
        if found:
            raise PlanError(found)
        plan = load_plan(path)
    except PlanError as exc:
        return _fail(exc.problems)
    plan = _simulated(plan, args)
    if plan.granularity == "block":
        if args.calls is not None:
            _usage(parser, "simulate", "--calls: granularity block simulates one steady call (and the first): "
                   "leave --calls out, or pass --granularity component")
        return _simulate_blocks(args, parser, plan)
    blockwise = [flag for flag, value in (("--steps", args.steps), ("--prefetch", args.prefetch),
                                          ("--bandwidth", args.bandwidth), ("--block-ms", args.block_ms),
                                          ("--host-spare", args.host_spare)) if value is not None]
    if blockwise:
        _usage(parser, "simulate", f"{blockwise[0]} applies to granularity block: pass --granularity block, or "
               f"leave {blockwise[0]} out")
    if args.plot is not None:
        _plot_usable(parser, args.plot)
    if args.budget is None and plan.budget is None:
        _usage(parser, "simulate", simulate.no_budget(plan))
    try:
        sizes, where = (given, "--sizes") if given is not None else _folder_sizes(args, plan, parser)
        calls = args.calls if args.calls is not None else simulate.DEFAULT_CALLS
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
        _usage(parser, "simulate", "granularity block needs each component's blocks, which --sizes cannot give: "
               "pass --model FOLDER (safetensors headers only), or --granularity component")
    if args.plot is not None:
        _usage(parser, "simulate", "--plot draws whole components: leave it out at granularity block, or pass "
               "--granularity component")
    if args.budget is None and plan.budget is None:
        from planner.simulate import components

        _usage(parser, "simulate", components.no_budget(plan))
    try:
        table, _ = _folder_table(args, plan, parser)
        dtype = plan.torch_dtype or table.torch_dtype
        component_blocks = {name: c.blocks(dtype) for name, c in table.components.items()}
        result = blocksim.simulate(plan, component_blocks, args.budget if args.budget is not None else plan.budget,
                                   bandwidth=args.bandwidth, block_seconds=(args.block_ms or 0.0) / 1000,
                                   spare=args.host_spare, budget_flag="--budget" if args.budget is not None else None)
    except PlanError as exc:
        return _fail_simulation(exc)
    _write_simulation(args, result, blocksim.render_text)
    return 0


def _fail_simulation(exc: PlanError) -> int:
    """A simulation's problems: with the plan's source lines when they have a place in it, else one line each."""
    located = any(p.line for p in exc.problems)
    return _fail(exc.problems) if located else _fail_lines(exc.problems)


def _write_simulation(args, result, render) -> None:
    """`result` on stdout: its JSON document with --format json, else `render(result)`."""
    if args.format == "json":
        from planner.report.common import neutral_json

        _write(neutral_json(json.dumps(result.to_json(), indent=2)) + "\n")
    else:
        _write(_visible_text(render(result)))


def _plot_usable(parser, path: str) -> None:
    """Exit 2 when --plot cannot be drawn: no matplotlib (the plot extra), a path that cannot be written, an
    extension matplotlib writes no format for."""
    from planner.simulate import plot as simulate

    if not simulate.plot_available():
        _usage(parser, "simulate", f"--plot needs the plot extra (matplotlib not installed): {simulate.PLOT_EXTRA}")
    problem = _output_problem(path)
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    formats = simulate.plot_formats()
    if problem is None and extension not in formats:
        problem = (f"{path!r} has {f'the extension .{extension}' if extension else 'no extension'}, which names no "
                   f"format matplotlib writes: use .png, .svg or .pdf")
    if problem:
        _usage(parser, "simulate", f"--plot: {problem}")


def _merged_sizes(given: list[dict], parser) -> dict:
    """The --sizes flags as one mapping; a name in two of them is a usage error."""
    merged: dict = {}
    for sizes in given:
        twice = sorted(set(merged) & set(sizes))
        if twice:
            _usage(parser, "simulate", f"--sizes: {', '.join(map(repr, twice))} given twice: keep one")
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
            _usage(parser, "simulate", "no sizes: pass --sizes NAME=SIZE,... or --model FOLDER (the plan names no "
                   "pipeline.source to read them from)")
        located = sources.locate_source(plan, run.Request())
        if located.folder_class is None:
            _usage(parser, "simulate", f"the plan's source {located.name!r} is a hub id: pass --model "
                   f"{located.name} to read its sizes from the hub's safetensors headers, or --sizes")
        source = located.name
    elif not source.strip():
        _usage(parser, "simulate", "--model: an empty name: name a folder holding model_index.json, or a hub id")
    tables, problems = folder_check.check_plans(source, [plan])
    if args.budget is not None:  # the plan's own budget is not the one simulated
        problems = [p for p in problems if p.rule != rules.PLN409.id]
    if any(is_error(p) for p in problems) or not tables:
        raise PlanError(problems)
    return tables[0], source


def _progress(args) -> bool:
    """Progress bars on stderr: only on a terminal, and not with --quiet."""
    try:
        return not args.quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _require_apply_extra(parser, command: str) -> None:
    """Exit 2 naming the extra to install when the executor's dependencies are missing (a core-only install)."""
    from planner.executor import missing

    absent = missing()
    if absent:
        _usage(parser, command, f"needs the apply extra ({', '.join(absent)} not installed): {APPLY_EXTRA}")


def _apply_path_problem(args) -> str | None:
    """The first input or output path `apply` could not use, found now rather than after loading and generating."""
    for flag, value in (("--out", args.out), ("--trace-json", args.trace_json)):
        problem = _output_problem(value) if value is not None else None
        if problem:
            return f"{flag}: {problem}"
    if args.out is not None and (problem := _image_format_problem(args.out)):
        return f"--out: {problem}"
    if args.out and args.trace_json and os.path.abspath(args.out) == os.path.abspath(args.trace_json):
        return f"--out and --trace-json name the same file {args.out!r}: give each its own"
    if args.image is not None and (problem := _image_problem(args.image)):
        return f"--image: {problem}"
    return None


def _clobbers(output: str, files: list, folders: list) -> str | None:
    """Why writing `output` would destroy an input of the run, or None: it is one of the `files` read (the plan, an
    image), or an existing file inside one of the model `folders` (its model_index.json, a weights file)."""
    if not os.path.lexists(output):
        return None
    try:
        target = Path(output).resolve()
        for name in files:
            if name and os.path.exists(name) and os.path.samefile(name, output):
                return f"{visible(output)!r} is {visible(name)!r}, which this run reads: name another file"
        for folder in folders:
            root = Path(folder).resolve()
            if root in target.parents:
                return (f"{visible(output)!r} is a file of {visible(folder)!r}, the model folder this run reads: "
                        "name a file outside it")
    except (OSError, RuntimeError):  # a path that cannot be resolved is for _output_problem to name
        return None
    return None


def _nearest(path: Path) -> tuple[Path, os.stat_result]:
    """`path` or its nearest ancestor that exists, with its stat; raises OSError (no permission to look) or
    ValueError (a NUL byte)."""
    for place in (path, *path.parents):
        try:
            return place, os.stat(place)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return Path("."), os.stat(".")  # a relative path's parents end at "." itself


def _creatable_in(folder: Path) -> str | None:
    """Why nothing can be created in the existing `folder`, found by doing it: an unnamed temporary file is opened
    there and vanishes (permission bits alone would pass for root, and miss a read-only file system)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"cannot create files in {str(folder)!r}: {exc.strerror or exc}"


def _output_problem(path: str) -> str | None:
    """Why a file could not be written at `path` when the run ends, or None. Missing folders are fine (they are
    created then) when the nearest existing one lets us create an entry; nothing is written now."""
    if not path:
        return "an empty path: name a file"
    if path.endswith(("/", os.sep)):
        return f"{path!r} names a folder: name a file in it"
    try:
        place, info = _nearest(Path(path))
    except (OSError, ValueError) as exc:
        return f"cannot reach {path!r}: {getattr(exc, 'strerror', None) or exc}"
    if place == Path(path):
        if stat.S_ISDIR(info.st_mode):
            return f"{path!r} is a folder: name a file in it"
        if stat.S_ISREG(info.st_mode):
            try:
                open(path, "ab").close()  # opening to append changes neither the content nor the time stamps
            except OSError as exc:
                return f"{path!r} cannot be written: {exc.strerror or exc}"
        return None  # an existing special file (/dev/null, a pipe from the shell) is the user's choice
    if not stat.S_ISDIR(info.st_mode):
        return f"{str(place)!r} is a file, so {path!r} cannot be created under it"
    return _creatable_in(place)


def _folder_problem(path: str) -> str | None:
    """Why the folder `path` could not be created or written to, or None; like `_output_problem` for a folder."""
    if not path:
        return "the folder is an empty string: name a folder"
    try:
        place, info = _nearest(Path(path))
    except (OSError, ValueError) as exc:
        return f"cannot reach {path!r}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISDIR(info.st_mode):
        if place == Path(path):
            return f"{path!r} is a file, not a folder"
        return f"{str(place)!r} is a file, so {path!r} cannot be created under it"
    return _creatable_in(place)


def _image_format_problem(path: str) -> str | None:
    """Why PIL could not write the RGB image to `path` (an extension it does not know or cannot write an RGB
    image in), found by writing a tiny image in that format to memory."""
    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        return (f"{path!r} has {f'the extension {extension!r}' if extension else 'no extension'}, which names no "
                "image format PIL can write: use .png, .jpg or .webp")
    try:
        Image.new("RGB", (8, 8)).save(io.BytesIO(), format=image_format)
    except Exception as exc:  # a plugin without a save handler, or one that takes no RGB images
        return f"PIL cannot write an RGB image as {image_format} ({exc}): use .png, .jpg or .webp"
    return None


def _image_problem(path: str) -> str | None:
    """Why `path` is not an image PIL can read, or None; reads the header only."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        return f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path!r} is {'a folder' if stat.S_ISDIR(info.st_mode) else 'not a regular file'}: name an image"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except UnidentifiedImageError:
        return f"{path!r} is not an image PIL can read"
    except Exception as exc:  # an image too large to decode safely, an unreadable file
        return f"cannot read {path!r} as an image: {type(exc).__name__}: {exc}"


def _existing(path: str, parser, command: str) -> str:
    """`path`, or exit 2 when it is not a regular file (a FIFO or a device would block or never end)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        _usage(parser, command, f"{path}: no such file")
    except (OSError, ValueError) as exc:
        _usage(parser, command, f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}")
    if stat.S_ISDIR(info.st_mode):
        _usage(parser, command, f"{path}: is a folder: name a plan file (planner validate takes folders)")
    if not stat.S_ISREG(info.st_mode):
        _usage(parser, command, f"{path}: not a regular file: name a plan file")
    return path


def _usage(parser, command: str, message: str) -> None:
    """Exit 2 with one line, `planner COMMAND: error: MESSAGE` (argparse's words, without the usage dump)."""
    parser.exit(2, f"{parser.prog} {command}: error: {message}\n")


def _fail_lines(problems: list[Problem]) -> int:
    """Exit 1 with each problem on one line of stderr (escaped as every report is), for commands that read no
    plan file: a summary counting plans would say nothing true."""
    for problem in problems:
        sys.stderr.write(visible(str(problem)) + "\n")
    return 1


def _fail(problems: list[Problem]) -> int:
    from planner.report import text

    sys.stderr.write(text.render(problems, sorted({p.path for p in problems})))
    return 1


if __name__ == "__main__":
    sys.exit(main())
