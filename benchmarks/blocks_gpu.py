"""Block residency on a GPU: time per image and peak GPU memory of an SDXL-sized and a Flux-sized pipeline (their
published configs, random weights: no download) with no offload, with diffusers' group offloading on CUDA streams,
and with our plan (`policy: budget`, `granularity: block`) at a budget below the model's size, in one run per
model; beside each, the time model's prediction (`planner.timing.timing`) from the bandwidth and compute time
measured in the same run.

    python benchmarks/blocks_gpu.py [--models sdxl flux] [--images 2] [--steps 20] [--size 1024]
                                    [--sdxl-budget 6GiB] [--flux-budget 16GiB] [--json PATH] [--allow-cpu-skip]

What it measures, in order, per model:
- host-to-device bandwidth: a 1 GiB tensor copied from pinned and from pageable host memory (median of 5, after
  one warm-up);
- no offload (when the weights fit the GPU): the pipeline on the GPU, CUDA events around each forward of every
  component the pipeline calls (the vae decodes through `decode`, not `forward`: it is not timed); the denoiser's
  median forward over the blocks one forward runs is the per-block compute time;
- ours: `planner.apply(pipe, plan)` with `policy: budget`, `granularity: block`, `steps` the run's, `pin: true`
  (every streamed block pinned: what the time model then assumes);
- group offloading: `pipe.enable_group_offload(onload_device, offload_device="cpu", offload_type="block_level",
  num_blocks_per_group=1, use_stream=True)` (every component; diffusers pins every host copy). It cannot be taken
  off again, so it runs last.
Each configuration makes one warm-up image, then `--images` timed ones (the median is reported); peak memory is
`torch.cuda.max_memory_allocated` over the timed images (weights and activations). A configuration that fails
(out of memory, an executor error) is reported as failed and the run goes on.

The time model gets the blocks' bytes from the pipeline's own modules as the executor groups them
(`planner.executor.blocks.partition`), the schedule `planner.budget.solve.solve` makes for the plan, the measured
bandwidths (moved blocks pinned) and the measured per-block time, applied to every block alike (`timing` takes
one figure: encoder layers are far cheaper than denoiser blocks, so the model's compute over-counts the encoders).
It prints two predictions: the model's own (compute + exposed transfer) and the measured no-offload time plus the
model's exposed transfer.

The pipelines: SDXL as `benchmarks/budget_gpu.py` builds it (fp16, on the CPU); Flux with FLUX.1-dev's published
transformer, the full T5 v1.1 XXL encoder, CLIP-L and the FLUX vae, in bfloat16: 33.7 GB of weights, so even with
a pinned copy of every one (group offloading pins them all) a 128 GiB host needs no smaller text encoder. Each
Flux component is built (randomly initialised) on the GPU when it has room, where that is fast, and moved to the
host at once. Tokenizers are planner.tiny's byte-level ones (ids within the real vocabularies).

Without a CUDA device it prints why and exits 1 (it measured nothing), or 0 with --allow-cpu-skip.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _progress import progress  # noqa: E402
from budget_gpu import time_images  # noqa: E402

from planner.budget import blocks, peers, timing  # noqa: E402
from planner.budget import solve as solve_mod  # noqa: E402
from planner.units import parse_size  # noqa: E402

GIB = 1 << 30
GB = 10 ** 9
COPY_BYTES = 1 << 30  # the bandwidth probe's tensor
COPY_REPEATS = 5
FLUX_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                      num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)  # FLUX.1-dev's scheduler


@dataclass(frozen=True)
class Spec:
    """One pipeline to measure: its label, builder, denoiser attribute, components in call order, its plan in
    published_sizes.json and the call's extra keyword arguments."""

    label: str
    build: object  # (folder, device) -> pipeline on the host
    denoiser: str
    components: tuple[str, ...]
    published: str  # its plan in benchmarks/published_sizes.json: where to build is chosen before building
    extra: dict = field(default_factory=dict)


# -- building -------------------------------------------------------------------------------------------------------
def build_sdxl(folder: Path, device: str):
    """budget_gpu.py's SDXL-sized pipeline (built on the CPU, fp16), whatever `device`."""
    import budget_gpu

    return budget_gpu.build_sdxl(folder)


def build_flux(folder: Path, device: str):
    """FluxPipeline from FLUX.1-dev's published configs (benchmarks/published.py), random bfloat16 weights, each
    component built on `device` and moved to the host."""
    import published
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from planner.tiny import tokenizers

    torch.manual_seed(0)
    factories = {"transformer": lambda: FluxTransformer2DModel(**published.FLUX_DEV),
                 "text_encoder_2": lambda: T5EncoderModel(T5Config(**published.T5_XXL)),
                 "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**published.CLIP_L)),
                 "vae": lambda: AutoencoderKL(**published.FLUX_VAE)}
    parts = {}
    for name, factory in factories.items():
        progress(f"building the Flux {name} on {device}")
        parts[name] = random_module(factory, device, torch.bfloat16)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), tokenizer=tokenizers.clip(
        folder / "clip"), tokenizer_2=tokenizers.t5(folder / "t5"), **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_module(factory, device: str, dtype):
    """`factory()` built with its random initialisation on `device` in `dtype`, then on the host, in eval mode
    without gradients."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = factory()
    finally:
        torch.set_default_dtype(previous)
    module = module.to("cpu", dtype).eval().requires_grad_(False)
    if device != "cpu":
        torch.cuda.empty_cache()
    return module


SPECS = {
    "sdxl": Spec("SDXL-sized", build_sdxl, "unet", ("text_encoder", "text_encoder_2", "unet", "vae"), "sdxl-base"),
    "flux": Spec("Flux-sized", build_flux, "transformer", ("text_encoder", "text_encoder_2", "transformer", "vae"),
                 "flux.1-dev", {"guidance_scale": 3.5, "max_sequence_length": 512}),
}


def plan_text(spec: Spec, budget: str, steps: int) -> str:
    """The plan ours applies: the budget policy at block granularity, `steps` per call, every streamed block pinned."""
    return (f"version: 1\ndevice: cuda\npolicy: budget\nbudget: {budget}\ngranularity: block\nsteps: {steps}\n"
            f"prefetch: true\npin: true\ncomponents: [{', '.join(spec.components)}]\n")


# -- measuring ------------------------------------------------------------------------------------------------------
def bandwidths() -> dict[str, float]:
    """Host-to-device bytes per second from pinned and from pageable memory: a 1 GiB copy, median of 5 after a
    warm-up."""
    import torch

    target = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    found = {}
    for kind in ("pinned", "pageable"):
        source = torch.ones(COPY_BYTES, dtype=torch.uint8, pin_memory=kind == "pinned")
        times = []
        for _ in range(COPY_REPEATS + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            target.copy_(source, non_blocking=kind == "pinned")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        found[kind] = COPY_BYTES / statistics.median(times[1:])
        del source
    del target
    torch.cuda.empty_cache()
    return found


class ForwardTimer:
    """CUDA events around each forward of `module` (a pre-hook and a hook), until `remove()`."""

    def __init__(self, module):
        import torch

        self._event = lambda: torch.cuda.Event(enable_timing=True)
        self.pairs: list[list] = []
        self._handles = [module.register_forward_pre_hook(self._before), module.register_forward_hook(self._after)]

    def _before(self, module, args):
        event = self._event()
        event.record()
        self.pairs.append([event, None])

    def _after(self, module, args, output):
        event = self._event()
        event.record()
        self.pairs[-1][1] = event

    def seconds(self) -> list[float]:
        import torch

        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in self.pairs if end is not None]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _attempt(name: str, results: dict, action) -> None:
    """`action()` into results[name]; a failure is recorded as such and the run goes on."""
    import torch

    try:
        results[name] = action()
        progress(f"{name}: " + ", ".join(f"{t:.3f}s" for t in results[name]["each"]))
    except Exception as exc:  # noqa: BLE001 - any failure of one configuration is a figure to report, not a stop
        results[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        progress(f"{name}: failed: {results[name]['failed']}")
    gc.collect()
    torch.cuda.empty_cache()


# -- one model ------------------------------------------------------------------------------------------------------
def measure(key: str, args, measured_bandwidth: dict[str, float]) -> dict:
    """Every configuration of SPECS[key] in one run, with the time model's predictions."""
    import torch

    from planner import load_plan

    spec = SPECS[key]
    budget_text = args.sdxl_budget if key == "sdxl" else args.flux_budget
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "plan.yaml"
        plan_path.write_text(plan_text(spec, budget_text, args.steps), encoding="utf-8")
        plan = load_plan(plan_path)
        found = _configurations(spec, Path(tmp), plan_path, budget_text, args)  # the pipeline lives only in there
    gc.collect()
    torch.cuda.empty_cache()
    sizes, timers = found.pop("blocks"), found.pop("timers")
    block_seconds = _block_seconds(timers, spec, sizes)
    return {"label": spec.label, "steps": args.steps, "size": args.size, "images": args.images,
            "budget": budget_text, "blocks": sizes, **found, "block_seconds": block_seconds,
            "forward_seconds": {name: statistics.median(s) for name, s in timers.items() if s},
            "predictions": predictions(plan, sizes, parse_size(budget_text), args.steps, measured_bandwidth,
                                       block_seconds, found["results"].get("no offload", {}).get("seconds"))}


def _configurations(spec: Spec, folder: Path, plan_path: Path, budget_text: str, args) -> dict:
    """The pipeline built, then no offload, ours and group offloading on it, in that order: {"results",
    "blocks", "weights_bytes", "timers" (each component's forward seconds without offload),
    "executor_trace_h2d_bytes"}."""
    import torch

    from planner import apply

    pipe = spec.build(folder, build_device(spec))
    from planner.executor.blocks import partition  # the blocks as the executor groups them

    sizes = {name: dict(partition(getattr(pipe, name)).sizes) for name in spec.components}
    weights = sum(sum(b.values()) for b in sizes.values())
    kwargs = dict(prompt="an astronaut riding a horse", num_inference_steps=args.steps, height=args.size,
                  width=args.size, output_type="np", **spec.extra)
    results: dict = {}
    timers: dict = {}
    trace: dict = {}
    progress(f"{spec.label}: no offload")
    if weights < torch.cuda.get_device_properties(0).total_memory:
        _attempt("no offload", results, lambda: _no_offload(pipe, spec, kwargs, args.images, timers))
    else:
        results["no offload"] = {"failed": "the weights alone exceed the GPU's memory"}
    progress(f"{spec.label}: ours")
    _attempt(f"ours (budget {budget_text}, block)", results,
             lambda: _ours(pipe, plan_path, kwargs, args.images, trace, apply))
    progress(f"{spec.label}: group offloading with streams")
    _attempt("group offloading (streams)", results, lambda: _group(pipe, kwargs, args.images))
    return {"results": results, "blocks": sizes, "weights_bytes": weights, "timers": timers,
            "executor_trace_h2d_bytes": trace.get("h2d")}


def build_device(spec: Spec) -> str:
    """cuda when the GPU holds the model's published bytes with a quarter to spare (random initialisation there is
    fast; each component moves to the host once built), else cpu."""
    import torch

    table = json.loads((ROOT / "benchmarks" / "published_sizes.json").read_text(encoding="utf-8"))
    largest = max(table[spec.published]["components"].values())
    return "cuda" if largest * 1.25 < torch.cuda.get_device_properties(0).total_memory else "cpu"


def _no_offload(pipe, spec: Spec, kwargs: dict, images: int, timers: dict) -> dict:
    """The pipeline on the GPU; each component's forwards timed (CUDA events) over the timed images."""
    pipe.to("cuda")
    watching: dict[str, ForwardTimer] = {}
    try:
        found = time_images(pipe, kwargs, images, lambda: watching.update(
            {name: ForwardTimer(getattr(pipe, name)) for name in spec.components if name != "vae"}))
        for name, timer in watching.items():
            timers[name] = timer.seconds()
        return found
    finally:
        for timer in watching.values():
            timer.remove()
        pipe.to("cpu")


def _ours(pipe, plan_path: Path, kwargs: dict, images: int, trace: dict, apply) -> dict:
    """Our plan applied (and removed at the end); the executor's own trace of bytes moved, where it keeps one."""
    with apply(pipe, plan_path) as applied:
        found = time_images(applied, kwargs, images)
        calls = getattr(getattr(applied, "trace", None), "calls", None)
        if calls:
            steady = [stats.loaded_bytes for call, stats in sorted(calls.items()) if call > 1]
            trace["h2d"] = statistics.median(steady) if steady else None
    return found


def _group(pipe, kwargs: dict, images: int) -> dict:
    """diffusers' group offloading, block level, one block per group, on a CUDA stream, on every component."""
    import torch

    pipe.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                              offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    return time_images(pipe, kwargs, images)


def _block_seconds(timers: dict, spec: Spec, sizes: dict) -> float | None:
    """The denoiser's median forward over the blocks one of its forwards runs; None when it was not timed."""
    forwards = timers.get(spec.denoiser)
    if not forwards:
        return None
    return statistics.median(forwards) / len(blocks.runs(spec.denoiser, list(sizes[spec.denoiser]), None))


def predictions(plan, sizes: dict, budget: int, steps: int, measured_bandwidth: dict[str, float],
                block_seconds: float | None, no_offload_seconds: float | None) -> dict:
    """The time model per call for ours and for group offloading on the measured blocks, bandwidths (moved blocks
    pinned) and per-block time (0 when not measured): bytes, transfer, exposed, compute, and the predicted time
    per call both ways (the model's compute + exposed; measured no offload + exposed)."""
    model = blocks.model_for(plan, sizes, budget, steps=steps)
    found = {}
    try:
        schedules = {"ours": solve_mod.solve(model), "group offloading": peers.group_offloading(model)}
    except blocks.BlockError as exc:
        schedules = {"group offloading": peers.group_offloading(model)}
        found["ours"] = {"failed": str(exc)}
    for name, schedule in schedules.items():
        moved = frozenset(k for k in schedule.model.keys if schedule.loads(k) > 0)
        timed = timing.timing(schedule, pinned=moved, pinned_bandwidth=measured_bandwidth["pinned"],
                              pageable_bandwidth=measured_bandwidth["pageable"], block_seconds=block_seconds or 0.0)
        found[name] = {"h2d_bytes": schedule.h2d_bytes, "peak_bytes": schedule.peak_bytes, **timed.to_json(),
                       "model_seconds": timed.compute + timed.exposed,
                       "no_offload_plus_exposed_seconds": None if no_offload_seconds is None
                       else no_offload_seconds + timed.exposed}
    return found


# -- the report -----------------------------------------------------------------------------------------------------
def report(found: dict) -> str:
    """One model's figures: the configurations measured, then the time model beside the measured time."""
    lines = [f"\n{found['label']}: {found['size']}x{found['size']}, {found['steps']} steps, median of "
             f"{found['images']} images after one warm-up; weights {found['weights_bytes'] / GB:.2f} GB",
             f"{'configuration':<34}{'s per image':>12}{'peak GiB':>10}{'vs none':>9}"]
    none = found["results"].get("no offload", {}).get("seconds")
    for name, result in found["results"].items():
        if "failed" in result:
            lines.append(f"{name:<34}failed: {result['failed']}")
            continue
        ratio = f"{result['seconds'] / none:>9.3f}" if none else f"{'-':>9}"
        lines.append(f"{name:<34}{result['seconds']:>12.3f}{result['peak_bytes'] / GIB:>10.2f}{ratio}")
    block = found["block_seconds"]
    lines.append("per-block compute time: " + (f"{block * 1000:.3f} ms (the denoiser's median forward over its "
                                               "blocks)" if block is not None else "not measured (taken as 0)"))
    for name, seconds in found["forward_seconds"].items():
        lines.append(f"  {name}: median forward {seconds * 1000:.2f} ms ({len(found['blocks'][name])} blocks)")
    if found["executor_trace_h2d_bytes"] is not None:
        lines.append(f"ours, the executor's trace: {found['executor_trace_h2d_bytes'] / GB:.2f} GB host to device "
                     "per image after the first")
    lines.append(f"{'time model':<20}{'GB/call':>9}{'transfer s':>12}{'exposed s':>11}{'compute s':>11}"
                 f"{'predicted s':>13}{'none+exposed':>14}{'measured s':>12}")
    measured = {"ours": next((r for n, r in found["results"].items() if n.startswith("ours")), {}),
                "group offloading": found["results"].get("group offloading (streams)", {})}
    for name, p in found["predictions"].items():
        if "failed" in p:
            lines.append(f"{name:<20}failed: {p['failed']}")
            continue
        plus = p["no_offload_plus_exposed_seconds"]
        lines.append(f"{name:<20}{p['h2d_bytes'] / GB:>9.2f}{p['transfer_s']:>12.3f}{p['exposed_s']:>11.3f}"
                     f"{p['compute_s']:>11.3f}{p['model_seconds']:>13.3f}"
                     f"{'-' if plus is None else f'{plus:.3f}':>14}"
                     f"{measured[name].get('seconds', float('nan')):>12.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), default=["sdxl", "flux"])
    parser.add_argument("--images", type=int, default=2, choices=range(1, 101), metavar="N",
                        help="timed images per configuration, 1 to 100 (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, choices=range(1, 201), metavar="N",
                        help="denoising steps per image, 1 to 200 (default: %(default)s)")
    parser.add_argument("--size", type=int, default=1024, choices=range(64, 4097, 16), metavar="PX",
                        help="image height and width, a multiple of 16 from 64 to 4096 (default: %(default)s)")
    parser.add_argument("--sdxl-budget", type=_size, default="6GiB", help="our plan's budget for SDXL")
    parser.add_argument("--flux-budget", type=_size, default="16GiB", help="our plan's budget for Flux")
    parser.add_argument("--json", metavar="PATH", help="also write every figure measured")
    parser.add_argument("--allow-cpu-skip", action="store_true", help="exit 0, not 1, where there is no CUDA device")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device here, so nothing was measured; run benchmarks/blocks_gpu.py on a machine "
              "with an NVIDIA GPU (the no-offload rows need the weights on it: 31.4 GiB for Flux) and 128 GiB of "
              "host memory",
              file=sys.stderr)
        return 0 if args.allow_cpu_skip else 1
    import accelerate
    import diffusers

    torch.set_num_threads(min(16, torch.get_num_threads()))
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"accelerate {accelerate.__version__}")
    progress("host-to-device bandwidth (1 GiB, pinned and pageable)")
    measured = bandwidths()
    print(f"host to device: pinned {measured['pinned'] / GB:.2f} GB/s, pageable {measured['pageable'] / GB:.2f} "
          f"GB/s (1 GiB copy, median of {COPY_REPEATS})")
    found = []
    for key in args.models:
        found.append(measure(key, args, measured))
        print(report(found[-1]), flush=True)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps({"bandwidth_bytes_per_s": measured, "models": found}, indent=1),
                                       encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


def _size(text: str) -> str:
    """A budget as the plan writes it, checked with the plan's own parser."""
    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


if __name__ == "__main__":
    sys.exit(main())
