"""Everything a lent GPU should measure, in one command of at most 8 minutes on one H100: one table on stdout,
every figure in a JSON file, and each model's measured compute per block kind as a `--block-ms @FILE` table.

    python benchmarks/gpu_suite.py --out gpu_suite.json [--quick]

In order:
1. the GPU tests: every test of tests/ decorated with a `gpu = pytest.mark.skipif(not torch.cuda.is_available())`
   marker, run by pytest in a subprocess within a time limit (passed, failed, skipped);
2. host-to-device bandwidth from pinned and from pageable memory (`blocks_gpu.bandwidths`: a 1 GiB copy);
3. an SDXL-sized pipeline (20 steps, ours at 6 GiB) and a FLUX.1-dev-sized one (28 steps, ours at 16 GiB), at
   1024x1024, from their published configs (`benchmarks/published.py`; no download), random weights: built on
   the meta device (`accelerate.init_empty_weights`, buffers real), then each parameter materialised on the CPU in
   fp16 (SDXL) or bf16 (Flux) with `torch.empty` and filled from one small random pool (seconds, not minutes; the
   weights' values do not change the time). Flux's T5 v1.1 XXL is built at its full size that way; `--quick` builds
   SDXL only, at 512x512 and 4 steps. Each configuration: a 2-step warm-up call, then one timed image: no offload,
   `enable_model_cpu_offload`, ours whole components (`granularity: component`), ours block by block
   (`granularity: block`, `pin: true`), group offloading at block level with streams (last: it cannot be undone);
   seconds per image, peak device memory (`torch.cuda.max_memory_allocated`), host-device syncs during the timed
   image (`torch.cuda.set_sync_debug_mode("warn")`, one warning per synchronising call, counted);
4. the time model beside each: the no-offload image times every block with CUDA events (forward hooks on the
   blocks `planner.executor.blocks.partition` finds) and every component's forward; the median per block kind
   (`unet/down_blocks`, the rest as `unet/rest`) is the `--block-ms` table the model is fed (`timing.BlockTimes`),
   with the measured bandwidths; predicted = measured no offload + the model's exposed transfer.

A configuration that fails (out of memory, a budget it cannot keep) is reported as such and the run goes on; one
that would start past the time limit is skipped. Without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _progress import progress  # noqa: E402

from planner.blocknames import REST  # noqa: E402
from planner.budget import blocks, peers, timing  # noqa: E402
from planner.budget import solve as solve_mod  # noqa: E402

GIB = 1 << 30
GB = 10 ** 9
LIMIT_S = 390  # no configuration starts after this many seconds (the longest, Flux's group offloading, takes about
# a minute): the whole suite stays within 8 minutes
TESTS_LIMIT_S = 100
MODELS = {"sdxl": dict(steps=20, budget="6GiB"), "flux": dict(steps=28, budget="16GiB")}
QUICK = {"sdxl": dict(steps=4, budget="6GiB")}
CONFIGURATIONS = ("no offload", "enable_model_cpu_offload", "ours, whole components", "ours, block by block",
                  "group offloading (streams)")
POOL = 1 << 24  # elements of the random pool every parameter is filled from


# -- the GPU tests ---------------------------------------------------------------------------------------------
def gpu_tests(tests: Path = ROOT / "tests") -> list[str]:
    """The node ids (tests/FILE.py::NAME) of every test decorated with a module-level marker assigned from a
    `pytest.mark.skipif(...)` whose condition reads `cuda.is_available`."""
    found = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        markers = {target.id for node in tree.body if isinstance(node, ast.Assign)
                   and "skipif" in ast.unparse(node.value) and "cuda.is_available" in ast.unparse(node.value)
                   for target in node.targets if isinstance(target, ast.Name)}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(isinstance(d, ast.Name) and d.id in markers
                                                         for d in node.decorator_list):
                found.append(f"tests/{path.name}::{node.name}")
    return found


def pytest_summary(output: str) -> dict:
    """pytest's last summary line as counts: {"passed": n, "failed": n, "skipped": n, "error": n}."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", output):
        counts["error" if word.startswith("error") else word] += int(number)
    return counts


def run_gpu_tests(limit: float) -> dict:
    ids = gpu_tests()
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=ROOT,
                              capture_output=True, text=True, timeout=limit,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), None
    return {"tests": len(ids), **pytest_summary(output.splitlines()[-1] if output.strip() else ""),
            "exit": code, "timed_out": code is None, "seconds": time.perf_counter() - start,
            "tail": "\n".join(output.splitlines()[-15:])}


# -- the time model's glue (pure) ------------------------------------------------------------------------------
def kind_table(block_seconds: dict, forward_seconds: dict, runs: dict) -> dict[str, float]:
    """The `--block-ms` table from the no-offload run: `block_seconds` {component: {block: [seconds, ...]}} (each
    block's forwards), `forward_seconds` {component: [seconds, ...]} (the component's forwards) and `runs`
    {component: blocks one forward runs}: {component/kind: median ms} and component/rest: the median forward minus
    the blocks one forward runs (at least 0)."""
    table: dict[str, float] = {}
    for component, found in block_seconds.items():
        kinds: dict[str, list[float]] = {}
        for block, each in found.items():
            kinds.setdefault(timing.block_kind(block), []).extend(each)
        for kind, each in kinds.items():
            if each:
                table[f"{component}/{kind}"] = statistics.median(each) * 1000
        forwards = forward_seconds.get(component)
        if forwards:
            inside = sum(table.get(f"{component}/{timing.block_kind(b)}", 0.0) for b in runs.get(component, ())
                         if b != REST)
            table[f"{component}/{REST}"] = max(0.0, statistics.median(forwards) * 1000 - inside)
    return table


def predictions(plan, sizes: dict, budget: int, steps: int, bandwidth: dict, table: dict,
                none_seconds: float | None) -> dict:
    """The time model per configuration on the measured blocks, bandwidths and `table` (ms per kind):
    {configuration: {"h2d_bytes", "transfer_s", "exposed_s", "compute_s", "predicted_s" (measured no offload plus
    exposed, None without it), "exposed_by_component"} or {"failed": why}}. `plan` (a `planner.plan.Plan`) is ours
    at block granularity; the whole-component schedule is the same program with each component one block."""
    times = timing.BlockTimes.from_ms(table)
    model = blocks.model_for(plan, sizes, budget, steps=steps)
    found: dict = {}

    def timed(name: str, schedule, pinned) -> None:
        t = timing.timing(schedule, pinned=pinned, pinned_bandwidth=bandwidth["pinned"],
                          pageable_bandwidth=bandwidth["pageable"],
                          block_seconds=timing.regrouped(times, model, schedule.model))
        found[name] = {"h2d_bytes": schedule.h2d_bytes, **t.to_json(),
                       "predicted_s": None if none_seconds is None else none_seconds + t.exposed}

    found["no offload"] = {"h2d_bytes": 0, "transfer_s": 0.0, "exposed_s": 0.0, "predicted_s": none_seconds}
    chain = sum(sum(b.values()) for name, b in sizes.items() if name in model.uses)
    found["enable_model_cpu_offload"] = {  # every used component copied once a call, from pageable memory
        "h2d_bytes": chain, "transfer_s": chain / bandwidth["pageable"], "exposed_s": chain / bandwidth["pageable"],
        "predicted_s": None if none_seconds is None else none_seconds + chain / bandwidth["pageable"]}
    for name, make in (("ours, whole components", lambda: solve_mod.solve(blocks.whole_components(model))),
                       ("ours, block by block", lambda: solve_mod.solve(model))):
        try:
            schedule = make()
        except blocks.BlockError as exc:
            found[name] = {"failed": str(exc)}
            continue
        timed(name, schedule, frozenset(k for k in schedule.model.keys if schedule.loads(k)))  # pin: true
    group = peers.group_offloading(model)
    timed("group offloading (streams)", group, frozenset(group.model.keys))  # it pins every host copy
    return found


# -- the report (pure) -----------------------------------------------------------------------------------------
def render(result: dict) -> str:
    """The one table: a row per model and configuration, then the notes."""
    lines = [f"device: {result['device']}"]
    tests = result.get("tests")
    if tests:
        lines.append(f"GPU tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped, "
                     f"{tests['error']} errors of {tests['tests']} selected in {tests['seconds']:.0f} s"
                     + (" (timed out)" if tests["timed_out"] else ""))
    bw = result.get("bandwidth_bytes_per_s")
    if bw:
        lines.append(f"host to device: pinned {bw['pinned'] / GB:.2f} GB/s, pageable {bw['pageable'] / GB:.2f} GB/s")
    head = ("model", "configuration", "s/image", "predicted s", "peak GiB", "syncs", "h2d GB (model)",
            "exposed s (model)")
    rows = [head]
    for key, model in result["models"].items():
        for name in CONFIGURATIONS:
            got = model["measured"].get(name, {"failed": "not run"})
            p = model["predicted"].get(name, {})
            cells = [f"{key} {model['size']}px {model['steps']} steps", name]
            if "failed" in got or "skipped" in got:
                cells += [got.get("failed") or got.get("skipped"), "", "", ""]
            else:
                cells += [f"{got['seconds']:.3f}", "-" if p.get("predicted_s") is None else f"{p['predicted_s']:.3f}",
                          f"{got['peak_bytes'] / GIB:.2f}", str(got["syncs"])]
            cells += ["-", "-"] if "failed" in p or not p else [f"{p['h2d_bytes'] / GB:.2f}", f"{p['exposed_s']:.3f}"]
            rows.append(tuple(cells))
    widths = [max(len(r[i]) for r in rows if len(r[i]) < 40) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for key, model in result["models"].items():
        lines.append(f"{key}: {model['note']}; block_ms table written to {model.get('block_ms_file') or '-'}")
    lines.append("predicted s: measured no offload + the time model's exposed transfer (per block kind compute "
                 "from the no-offload run, the measured bandwidths); syncs: synchronising CUDA calls during the "
                 "timed image (set_sync_debug_mode warn).")
    return "\n".join(lines)


def document(device: str, quick: bool, tests: dict | None, bandwidth: dict | None, models: dict) -> dict:
    """The JSON document --out gets."""
    return {"device": device, "quick": quick, "tests": tests, "bandwidth_bytes_per_s": bandwidth, "models": models}


# -- building (torch) ------------------------------------------------------------------------------------------
def materialise(factory, dtype):
    """`factory()` with its parameters built on the meta device (buffers real: position ids, rotary tables), then
    each parameter a `torch.empty` CPU tensor in `dtype` filled from one random pool (norms 1, biases 0); tied
    parameters tied again (`tie_weights`, where the model has it)."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = factory()
    pool = torch.randn(POOL, dtype=torch.float32).mul_(0.02).to(dtype)
    made: dict[int, torch.nn.Parameter] = {}
    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                tensor = torch.empty(param.shape, dtype=dtype)
                flat = tensor.view(-1)
                if param.dim() == 1:
                    flat.fill_(1.0 if "weight" in name else 0.0)
                else:
                    for start in range(0, flat.numel(), POOL):
                        flat[start:start + POOL].copy_(pool[:min(POOL, flat.numel() - start)])
                made[id(param)] = torch.nn.Parameter(tensor, requires_grad=False)
            owner._parameters[name] = made[id(param)]
    if callable(getattr(module, "tie_weights", None)):  # the meta build unties them (T5's shared embeddings)
        module.tie_weights()
    return module.to(dtype).eval().requires_grad_(False)


def build(key: str, folder: Path):
    """The SDXL-sized (fp16) or FLUX.1-dev-sized (bf16) pipeline on the CPU, random weights, tiny tokenizers."""
    import published
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from planner.tiny import tokenizers

    torch.manual_seed(0)
    if key == "sdxl":
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

        dtype = torch.float16
        parts = {"unet": lambda: UNet2DConditionModel(**published.SDXL_UNET),
                 "vae": lambda: AutoencoderKL(**published.SDXL_VAE, force_upcast=False),
                 "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**published.CLIP_L)),
                 "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**published.CLIP_BIG_G))}
        built = {n: materialise(f, dtype) for n, f in parts.items()}
        tokenizer = tokenizers.clip(folder / "tokenizer")
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="leading")
        pipe = StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler,
                                         add_watermarker=False, **built)
    else:
        from blocks_gpu import FLUX_SCHEDULER
        from diffusers import FluxPipeline, FluxTransformer2DModel

        dtype = torch.bfloat16
        parts = {"transformer": lambda: FluxTransformer2DModel(**published.FLUX_DEV),
                 "text_encoder_2": lambda: T5EncoderModel(T5Config(**published.T5_XXL)),
                 "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**published.CLIP_L)),
                 "vae": lambda: AutoencoderKL(**published.FLUX_VAE)}
        built = {n: materialise(f, dtype) for n, f in parts.items()}
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
                            tokenizer=tokenizers.clip(folder / "clip"), tokenizer_2=tokenizers.t5(folder / "t5"),
                            **built)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- measuring (torch, CUDA) -----------------------------------------------------------------------------------
class BlockEvents:
    """CUDA events around every forward of each component's blocks (`partition`'s modules) and of the component
    itself (not the vae: it decodes through `decode`), until `remove()`."""

    def __init__(self, pipe, components):
        from planner.executor.blocks import partition

        self.pairs: dict[tuple[str, str | None], list] = {}
        self._handles = []
        for name in components:
            module = getattr(pipe, name)
            targets = [(block, sub) for block, sub in partition(module).modules.items()]
            if name != "vae":
                targets.append((None, module))
            for block, sub in targets:
                self._watch((name, block), sub)

    def _watch(self, key, module) -> None:
        import torch

        pairs = self.pairs.setdefault(key, [])

        def before(*_):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            pairs.append([event, None])

        def after(*_):
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            pairs[-1][1] = event

        self._handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def seconds(self) -> tuple[dict, dict]:
        """({component: {block: [seconds]}}, {component: [forward seconds]})."""
        import torch

        torch.cuda.synchronize()
        blocks_, forwards = {}, {}
        for (component, block), pairs in self.pairs.items():
            each = [a.elapsed_time(b) / 1000 for a, b in pairs if b is not None]
            if block is None:
                forwards[component] = each
            else:
                blocks_.setdefault(component, {})[block] = each
        return blocks_, forwards

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def one_image(call, kwargs: dict, watch=None, warm_steps: int | None = 2) -> dict:
    """A warm-up call of `warm_steps` steps (None: the image's), then one timed image with its synchronising CUDA
    calls counted: {"seconds", "peak_bytes", "syncs"}; `watch()` (when given) starts after the warm-up."""
    import warnings

    import torch

    call(**{**kwargs, "num_inference_steps": warm_steps or kwargs["num_inference_steps"]},
         generator=torch.Generator().manual_seed(0))
    if watch is not None:
        watch()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call(**kwargs, generator=torch.Generator().manual_seed(1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    syncs = sum(1 for w in caught if "synchroniz" in str(w.message).lower())
    return {"seconds": seconds, "peak_bytes": torch.cuda.max_memory_allocated(), "syncs": syncs}


def plan_file(folder: Path, key: str, components, granularity: str, settings: dict) -> Path:
    path = folder / f"{key}-{granularity}.yaml"
    steps = f"steps: {settings['steps']}\n" if granularity == "block" else ""
    path.write_text(f"version: 1\ndevice: cuda\npolicy: budget\nbudget: {settings['budget']}\n"
                    f"granularity: {granularity}\n{steps}prefetch: true\npin: true\n"
                    f"components: [{', '.join(components)}]\n", encoding="utf-8")
    return path


def measure_model(key: str, settings: dict, size: int, bandwidth: dict, deadline: float, out: Path | None) -> dict:
    """Every configuration of one model, then the time model beside it."""
    import gc

    import torch
    from blocks_gpu import SPECS

    import planner
    from planner.executor.blocks import partition
    from planner.units import parse_size

    spec = SPECS[key]
    measured: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        progress(f"{key}: building (meta device, then random weights on the CPU)")
        pipe = build(key, folder)
        components = spec.components
        sizes = {name: dict(partition(getattr(pipe, name)).sizes) for name in components}
        kwargs = dict(prompt="an astronaut riding a horse", num_inference_steps=settings["steps"], height=size,
                      width=size, output_type="np", **spec.extra)
        events: list = []
        plans = {g: plan_file(folder, key, components, g, settings) for g in ("component", "block")}
        applied: list = []

        def ours(granularity):
            applied.append(planner.apply(pipe, plans[granularity]))
            return applied[-1]

        def undo():
            while applied:
                applied.pop().remove()

        # (name, setup -> what to call, undo, timed per block); ours warms up with the steps it was scheduled for
        steps = [("no offload", lambda: pipe.to("cuda"), lambda: pipe.to("cpu"), True),
                 ("enable_model_cpu_offload", lambda: (pipe.enable_model_cpu_offload(device="cuda"), pipe)[1],
                  lambda: (pipe.remove_all_hooks(), pipe.to("cpu")), False),
                 ("ours, whole components", lambda: ours("component"), undo, False),
                 ("ours, block by block", lambda: ours("block"), undo, False),
                 ("group offloading (streams)", lambda: (pipe.enable_group_offload(
                     onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                     offload_type="block_level", num_blocks_per_group=1, use_stream=True), pipe)[1], None, False)]
        block_seconds, forward_seconds = {}, {}
        for name, setup, teardown, timed in steps:
            if time.perf_counter() > deadline:
                measured[name] = {"skipped": "past the suite's time limit"}
                continue
            progress(f"{key}: {name}")
            try:
                watch = (lambda: events.append(BlockEvents(pipe, components))) if timed else None
                measured[name] = one_image(setup(), kwargs, watch, None if name.startswith("ours") else 2)
            except Exception as exc:  # noqa: BLE001 - a failed configuration is a figure, not a stop
                measured[name] = {"failed": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"}
            finally:
                while events:  # the no-offload image's block times, its hooks off before anything else runs
                    block_seconds, forward_seconds = events[-1].seconds()
                    events.pop().remove()
                try:
                    if teardown is not None:
                        teardown()
                except Exception as exc:  # noqa: BLE001
                    progress(f"{key}: undoing {name} failed: {exc}")
            progress(f"{key}: {name}: {measured[name]}")
            gc.collect()
            torch.cuda.empty_cache()
        pipe = steps = None  # the pipeline and every host copy go before the next model is built
        gc.collect()
    runs = {c: blocks.runs(c, list(sizes[c]), "decode" if c == "vae" else None) for c in components}
    table = kind_table(block_seconds, forward_seconds, runs)
    from planner import load_plan

    with tempfile.TemporaryDirectory() as tmp:
        plan = load_plan(plan_file(Path(tmp), key, components, "block", settings))
    none = measured["no offload"].get("seconds")
    try:  # the measurements are kept whatever the model makes of them
        predicted = predictions(plan, sizes, parse_size(settings["budget"]), settings["steps"], bandwidth, table,
                                none)
    except Exception as exc:  # noqa: BLE001
        predicted = {"failed": f"{type(exc).__name__}: {exc}"}
    result = {"steps": settings["steps"], "size": size, "budget": settings["budget"],
              "weights_bytes": sum(sum(b.values()) for b in sizes.values()), "block_ms": table,
              "measured": measured, "predicted": predicted,
              "note": ("text encoders at full size (T5 v1.1 XXL included)" if key == "flux" else
                       "text encoders at full size (CLIP-L, OpenCLIP bigG)") + f", ours at {settings['budget']}"}
    if out is not None and table:
        path = out.with_name(f"{out.stem}.{key}.block_ms.json")
        path.write_text(json.dumps({"block_ms": table, "model": key}, indent=1) + "\n", encoding="utf-8")
        result["block_ms_file"] = str(path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", metavar="PATH", default="gpu_suite.json", help="the JSON file (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: SDXL only, 512x512, 4 steps")
    parser.add_argument("--no-tests", action="store_true", help="leave the GPU tests out")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_suite: torch is not installed (the apply extra): nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here: nothing measured (run it on a machine with an NVIDIA GPU)")
        return 0
    start = time.perf_counter()
    deadline = start + (LIMIT_S / 3 if args.quick else LIMIT_S)
    out = Path(args.out)
    device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    tests = None
    if not args.no_tests:
        progress("GPU tests")
        tests = run_gpu_tests(TESTS_LIMIT_S / 2 if args.quick else TESTS_LIMIT_S)
    from blocks_gpu import bandwidths

    progress("host-to-device bandwidth")
    bandwidth = bandwidths()
    models = {key: measure_model(key, settings, 512 if args.quick else 1024, bandwidth, deadline, out)
              for key, settings in (QUICK if args.quick else MODELS).items()}
    result = document(device, args.quick, tests, bandwidth, models)
    print(render(result), flush=True)
    try:
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"gpu_suite: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    progress(f"done in {time.perf_counter() - start:.0f} s; {out} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
