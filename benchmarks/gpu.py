"""On a machine with a CUDA GPU: the differential tests on the GPU, the soak on the GPU, and time per image and
peak GPU memory for the tiny SDXL with a plan against diffusers' own `enable_model_cpu_offload`, interleaved in
one run. Prints figures (never asserts); exits 0 with a note where there is no GPU.

    .venv/bin/python benchmarks/gpu.py [--images 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _progress import progress  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (run this on a machine with a GPU)")
        return
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    progress("GPU tests (pytest -k on_gpu)")
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "on_gpu", str(ROOT / "tests")])
    print(f"GPU tests exit status: {tests.returncode}")
    progress("soak on cuda (benchmarks/soak.py --device cuda)")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--device", "cuda"])

    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

    import planner
    from planner import tiny

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = DiffusionPipeline.from_pretrained(tiny.build("sdxl", Path(tmp) / "sdxl"))
        pipe.set_progress_bar_config(disable=True)
        plan_path = Path(tmp) / "plan.yaml"
        plan_path.write_text("version: 1\ndevice: cuda\ncomponents:\n  text_encoder: {}\n  text_encoder_2: {}\n"
                             "  unet: {after: [text_encoder, text_encoder_2]}\n  vae: {after: [unet]}\n")
        kwargs = dict(prompt="a cat", num_inference_steps=4, output_type="np")

        def measure(run):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            run(**kwargs, generator=torch.Generator().manual_seed(0))
            torch.cuda.synchronize()
            return time.perf_counter() - start, torch.cuda.max_memory_allocated()

        ours, theirs = [], []
        for i in range(args.images // 10):
            progress(f"tiny SDXL: images {i * 10 + 1}-{i * 10 + 10} of {args.images // 10 * 10}, each way")
            pipe.enable_model_cpu_offload(device="cuda")
            theirs += [measure(pipe) for _ in range(10)]
            pipe.remove_all_hooks()
            with planner.apply(pipe, plan_path) as applied:
                ours += [measure(applied) for _ in range(10)]
    for name, rows in (("plan", ours), ("diffusers", theirs)):
        print(f"{name:>10}: {statistics.median(t for t, _ in rows) * 1000:.2f} ms per image, "
              f"peak {max(m for _, m in rows) / 2**20:.2f} MiB")
    ratio = statistics.median(t for t, _ in ours) / statistics.median(t for t, _ in theirs)
    print(f"time per image plan / diffusers = {ratio:.3f}")


if __name__ == "__main__":
    main()
