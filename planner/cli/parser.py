"""The `planner` command line's argparse parser: every command, its flags, and the types that check their values.

Each command's `run` is its function in `planner.cli.validate`, `.folder`, `.simulate` or `.apply`. The types raise
`argparse.ArgumentTypeError`, which argparse turns into a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import re

from planner import __version__
from planner.cli import apply as apply_commands
from planner.cli import folder as folder_commands
from planner.cli import simulate as simulate_commands
from planner.cli import validate as validate_commands
from planner.cli.common import EXIT_STATUS
from planner.folder.sizes import TORCH_DTYPES
from planner.report import FORMATS
from planner.tiny import KINDS  # a constant: importing it loads no torch


def parser() -> argparse.ArgumentParser:
    """The `planner` parser: each command's flags, the function that runs it (`run`) and its exit status words."""
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
    validate.set_defaults(run=validate_commands.validate)

    show = sub.add_parser("show", help="print a plan's resolved sequence, device and exclusions")
    show.add_argument("plan", metavar="PLAN", help="a plan file")
    show.set_defaults(run=validate_commands.show)

    schema = sub.add_parser("schema", help="print the plan JSON Schema")
    schema.set_defaults(run=validate_commands.schema)

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
    inspect.set_defaults(run=folder_commands.inspect)

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
    init.add_argument("--budget", type=_size_text, metavar="SIZE", help="with --model: a budget plan within SIZE "
                      "(12GiB, bytes), at the granularity that fits (whole components when they do, else block by "
                      "block), with what planner simulate predicts for it as comments")
    init.add_argument("--steps", type=_steps, metavar="N", help="with --budget: the denoising steps per call the "
                      "plan is written for (steps: N)")
    init.add_argument("-o", "--output", metavar="FILE", help="write the plan here instead of printing it; an "
                      "existing file is kept unless --force")
    init.add_argument("--force", action="store_true", help="overwrite FILE")
    init.set_defaults(run=folder_commands.init)

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
    apply.add_argument("--granularity", metavar="GRANULARITY", help="override the plan's granularity: component "
                       "(whole components) or block (block by block, as planner simulate --granularity); checked "
                       "by the same rules")
    apply.add_argument("--dry-run", action="store_true",
                       help="install the same hooks with the CPU as execution device and trace what would move")
    apply.add_argument("--trace-json", metavar="PATH", help="write the transfer trace as JSON; missing folders are "
                       "created")
    apply.add_argument("--events", action="store_true", help="print every load and offload event after the summary")
    apply.add_argument("--quiet", action="store_true", help="no progress bars (shown only when stderr is a terminal)")
    apply.set_defaults(run=apply_commands.apply)

    tiny = sub.add_parser("tiny", help="build a tiny random-weight pipeline folder (offline) to try plans on",
                          description="Build a tiny random-weight pipeline and save it to FOLDER, offline. FOLDER "
                          "must be missing, empty, or a previous tiny build: nothing else is ever overwritten.")
    tiny.add_argument("kind", choices=KINDS, help="the pipeline to build (a library family: sd is Stable Diffusion "
                      "1.5, wan-i2v Wan 2.1 image-to-video, ...)")
    tiny.add_argument("folder", metavar="FOLDER", help="where to save it (reused when it holds this kind already)")
    tiny.add_argument("--quiet", action="store_true", help="no progress bars (shown only when stderr is a terminal)")
    tiny.set_defaults(run=apply_commands.tiny)

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
    block_flags = simulate.add_argument_group("granularity block", "block-granular residency (planner.budget.blocks): "
                                            "sizes per block from --model or the plan's source; one steady call")
    block_flags.add_argument("--granularity", choices=["component", "block"],
                           help="what the budget policy moves (default: the plan's granularity)")
    block_flags.add_argument("--steps", type=_steps, metavar="N", help="denoising steps per call: the denoiser runs "
                           "once per step (default: the plan's steps, else 1)")
    block_flags.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                           help="room for the next streamed block in flight (default: the plan's prefetch, true)")
    block_flags.add_argument("--bandwidth", type=_bandwidth, metavar="PINNED[,PAGEABLE]",
                           help="host-to-device GB/s from pinned and from pageable memory (default: 24,12; one "
                           "figure: pageable is half of it)")
    block_flags.add_argument("--block-ms", type=_block_ms, metavar="MS|KIND=MS,...|@FILE",
                           help="compute time of a block in milliseconds, for how much prefetch hides (default: 0): "
                           "one figure for every block, or per block kind (component/kind, kind or default: "
                           "transformer/transformer_blocks=2.6,default=0.5), or @FILE.json holding {\"block_ms\": "
                           "{KIND: MS}} (benchmarks/gpu_suite.py writes it)")
    block_flags.add_argument("--host-spare", type=_size, metavar="SIZE",
                           help="host memory pinning may take (default: what this host can spare, its container's "
                           "limit included)")
    simulate.set_defaults(run=simulate_commands.simulate)
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
_ms = _number_in(0.0, 1e6, "milliseconds from 0 to 1000000")
_KIND = re.compile(r"[A-Za-z0-9_.]+(/[A-Za-z0-9_.]+)?")


def _block_ms(text: str):
    """An argparse type: `--block-ms MS` (every block, REST aside: a float of milliseconds, as before), a table
    `KIND=MS,...` or `@FILE.json` ({"block_ms": {KIND: MS}}) -> `planner.budget.timing.BlockTimes`. KIND is
    `component/kind`, `kind` (every component) or `default`."""
    from planner.budget.timing import BlockTimes

    if text.startswith("@"):
        return BlockTimes.from_ms(_block_ms_file(text[1:]))
    if "=" not in text:
        return _ms(text)
    table: dict[str, float] = {}
    for item in text.split(","):
        kind, equals, ms = item.strip().partition("=")
        kind = kind.strip()
        if not equals or not _KIND.fullmatch(kind):
            raise argparse.ArgumentTypeError(f"must be MS, KIND=MS,... or @FILE.json, not {item!r} in {text!r}")
        if kind in table:
            raise argparse.ArgumentTypeError(f"{kind!r} given twice in {text!r}: keep one")
        try:
            table[kind] = _ms(ms.strip())
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{kind}: {exc}") from None
    return BlockTimes.from_ms(table)


def _block_ms_file(name: str) -> dict[str, float]:
    """The {kind: ms} table of a `--block-ms @FILE.json` file: {"block_ms": {KIND: MS, ...}} (other keys ignored);
    a file that is missing, not a regular file (a FIFO), not JSON or not that shape is refused in one line."""
    from pathlib import Path

    from planner.folder.files import read_json

    if not name:
        raise argparse.ArgumentTypeError("@: name a JSON file after the @ (@block_ms.json)")
    data, why = read_json(Path(name))
    if why:
        raise argparse.ArgumentTypeError(f"@{name}: {why}")
    table = data.get("block_ms") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table:
        raise argparse.ArgumentTypeError(f"@{name}: must hold {{\"block_ms\": {{KIND: MS, ...}}}}, a kind to "
                                         "milliseconds table")
    found = {}
    for kind, ms in table.items():
        if not _KIND.fullmatch(kind):
            raise argparse.ArgumentTypeError(f"@{name}: {kind!r} is not a block kind (component/kind, kind or "
                                             "default)")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms <= 1e6:
            raise argparse.ArgumentTypeError(f"@{name}: {kind}: must be milliseconds from 0 to 1000000, not "
                                             f"{json.dumps(ms)}")
        found[kind] = float(ms)
    return found


_block_ms.__name__ = "MS, KIND=MS,... or @FILE.json"


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


def _size_text(text: str) -> str | int:
    """An argparse type: a size as `_size` checks it, kept as written (the plan says `budget: 12GiB`); bytes as an
    integer."""
    size = _size(text)
    return size if text.strip().isdigit() else text.strip()


def _sizes(text: str) -> dict:
    """An argparse type: `--sizes NAME=SIZE,...` (`planner.simulate.components.parse_sizes`)."""
    from planner.simulate.components import parse_sizes

    try:
        return parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# argparse's own messages name the type by it
_size.__name__, _sizes.__name__, _size_text.__name__ = "a size", "NAME=SIZE,...", "a size"
