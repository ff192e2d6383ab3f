"""The budget policy on a GPU: time per image and peak GPU memory of an SDXL-sized pipeline (its published configs,
random fp16 weights built on the CPU: no download) with no offload, with diffusers' `enable_model_cpu_offload`, and
with the budget policy at 8 GiB and at 6 GiB, in one run on one pipeline object. Prints figures and ratios (never
asserts); exits 0 with a note where there is no CUDA device.

    python benchmarks/budget_gpu.py [--images 3] [--steps 20] [--size 1024] [--budgets 8GiB 6GiB]

Each configuration makes one warm-up image, then `--images` timed ones (the median is reported). Peak memory is
`torch.cuda.max_memory_allocated` over the timed images (weights and activations). The VAE runs in fp16 without
diffusers' fp32 upcast (`force_upcast=False`, as the fp16-fixed SDXL VAE): random weights need no upcast, and the
upcast would move the VAE's weights twice per image in every configuration alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _progress import progress  # noqa: E402


def build_sdxl(folder: Path):
    """StableDiffusionXLPipeline from SDXL base 1.0's published configs (benchmarks/published.py), random weights
    built on the CPU and cast to fp16; tiny byte-level tokenizers (token ids stay within the real vocabularies)."""
    import published
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from planner.tiny import tokenizers

    torch.manual_seed(0)
    parts = {}
    progress("building the unet (2.6 B parameters) on the CPU")
    parts["unet"] = UNet2DConditionModel(**published.SDXL_UNET)
    progress("building the vae and the two text encoders")
    parts["vae"] = AutoencoderKL(**published.SDXL_VAE, force_upcast=False)
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**published.CLIP_L))
    parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**published.CLIP_BIG_G))
    for module in parts.values():
        module.to(torch.float16).eval().requires_grad_(False)
    tokenizer = tokenizers.clip(folder / "tokenizer")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler,
                                     add_watermarker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_images(call, kwargs: dict, images: int, warmed=None) -> dict:
    """One warm-up image, then `warmed()` when given, then `images` timed ones: {"seconds": median, "each": [...],
    "peak_bytes": max}."""
    import torch

    call(**kwargs, generator=torch.Generator().manual_seed(0))
    if warmed is not None:
        warmed()
    each, peaks = [], []
    for i in range(images):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        call(**kwargs, generator=torch.Generator().manual_seed(i + 1))
        torch.cuda.synchronize()
        each.append(time.perf_counter() - start)
        peaks.append(torch.cuda.max_memory_allocated())
    return {"seconds": statistics.median(each), "each": each, "peak_bytes": max(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3, help="timed images per configuration (default: 3)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image (default: 20)")
    parser.add_argument("--size", type=int, default=1024, help="image height and width in pixels (default: 1024)")
    parser.add_argument("--budgets", nargs="+", default=["8GiB", "6GiB"], help="budget policy budgets")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device here; run benchmarks/budget_gpu.py on a machine with an NVIDIA GPU "
              "(it needs about 12 GiB of GPU memory and 32 GiB of host memory)")
        return
    import accelerate
    import diffusers

    import planner
    from planner.executor.modules import module_bytes

    torch.set_num_threads(min(16, torch.get_num_threads()))
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"accelerate {accelerate.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_sdxl(Path(tmp))
        sizes = {name: module_bytes(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        print("components: " + ", ".join(f"{n} {b / 2**30:.2f} GiB" for n, b in sizes.items())
              + f"; total {sum(sizes.values()) / 2**30:.2f} GiB ({sum(sizes.values())} bytes)")
        kwargs = dict(prompt="an astronaut riding a horse", num_inference_steps=args.steps, height=args.size,
                      width=args.size, output_type="np")
        results = {}

        def run(name, call, images=args.images):
            progress(f"{name}: 1 warm-up + {images} images")
            found = time_images(call, kwargs, images)
            results[name] = (found["seconds"], found["peak_bytes"])
            progress(f"{name}: " + ", ".join(f"{t:.3f}s" for t in found["each"]))

        progress("no offload: the pipeline on the GPU")
        pipe.to("cuda")
        run("no offload", pipe)
        pipe.to("cpu")
        torch.cuda.empty_cache()
        pipe.enable_model_cpu_offload(device="cuda")
        run("enable_model_cpu_offload", pipe)
        pipe.remove_all_hooks()
        pipe.to("cpu")
        torch.cuda.empty_cache()
        moved = {}
        for budget in args.budgets:
            plan = Path(tmp) / f"budget-{budget}.yaml"
            plan.write_text(f"version: 1\ndevice: cuda\npolicy: budget\nbudget: {budget}\n"
                            "components: [text_encoder, text_encoder_2, unet, vae]\n")
            with planner.apply(pipe, plan) as applied:
                run(f"budget {budget}", applied)
                steady = [s for c, s in sorted(applied.trace.calls.items()) if c > 1]
                moved[budget] = (statistics.median(s.loaded_bytes for s in steady),
                                 sum(applied.copied_back.values()))
            torch.cuda.empty_cache()
        pipe.to("cuda")  # again at the end: the same measure before and after shows any drift of the machine
        run("no offload (again)", pipe)
    print(f"\n{args.size}x{args.size}, {args.steps} steps, median of {args.images} images after one warm-up:")
    print(f"{'configuration':<28}{'s per image':>12}{'peak GiB':>10}{'vs offload':>12}{'vs none':>10}")
    base, none = results["enable_model_cpu_offload"][0], results["no offload"][0]
    for name, (seconds, peak) in results.items():
        print(f"{name:<28}{seconds:>12.3f}{peak / 2**30:>10.2f}{seconds / base:>12.3f}{seconds / none:>10.3f}")
    chain = sum(sizes.values())
    for budget, (loaded, back) in moved.items():
        print(f"budget {budget}: {loaded / 2**30:.2f} GiB host-to-device per image after the first "
              f"(diffusers' chain: {chain / 2**30:.2f} GiB up and {chain / 2**30:.2f} GiB down), "
              f"{back} bytes copied back")


if __name__ == "__main__":
    main()
