"""Soak: many dry-run calls on the tiny SD pipeline with a plan applied, against diffusers' own
`enable_model_cpu_offload(device=...)` on the same pipeline in the same run (blocks interleaved, so drift in the
machine hits both alike). Prints hooks installed per call (must stay constant), resident memory growth per 100
calls, and the time-per-call ratio (goal: no growth, ratio <= 1.05). Not a test: it prints, never asserts.

    .venv/bin/python benchmarks/soak.py [--calls 500] [--block 50] [--device cpu|cuda] [--kind sd|sdxl]

With --device cuda (on a machine with a GPU) the plan really offloads to the GPU instead of a dry run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _progress import progress  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hooks_installed(pipe) -> int:
    return sum(1 for m in pipe.components.values() if hasattr(m, "modules")
               for sub in m.modules() if hasattr(sub, "_hf_hook"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kind", default="sd", choices=["sd", "sdxl"])
    parser.add_argument("--keep-calls", type=int, default=100, help="calls the trace keeps (default 100)")
    args = parser.parse_args()

    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    import planner
    from planner import tiny

    dlogging.set_verbosity_error()
    dry_run = args.device == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        pipe = DiffusionPipeline.from_pretrained(tiny.build(args.kind, Path(tmp) / args.kind))
        pipe.set_progress_bar_config(disable=True)
        plan_path = Path(tmp) / "plan.yaml"
        plan_path.write_text(f"version: 1\ndevice: {'cuda' if dry_run else args.device}\n"
                             f"components: [{', '.join(type(pipe).model_cpu_offload_seq.split('->'))}]\n")
        plan = planner.load_plan(plan_path)
        kwargs = dict(prompt="a cat", num_inference_steps=2, output_type="np")

        def block(run, n):
            times = []
            for _ in range(n):
                start = time.perf_counter()
                run(**kwargs, generator=torch.Generator().manual_seed(0))
                if not dry_run:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            return times

        # 1. time per call: interleaved blocks of diffusers' offload and the plan on the same pipeline
        ours, theirs = [], []
        block(pipe, 5)  # warm up
        for i in range(0, args.calls, args.block):
            progress(f"timing: calls {i + 1}-{min(i + args.block, args.calls)} of {args.calls}, each way")
            n = min(args.block, args.calls - i)
            pipe.enable_model_cpu_offload(device=args.device)
            theirs += block(pipe, n)
            pipe.remove_all_hooks()
            with planner.apply(pipe, plan, dry_run=dry_run) as applied:
                ours += block(applied, n)
        # 2. soak: one plan applied for all the calls; hooks counted after every call, memory every block. The
        # trace keeps its last `keep_calls` calls: once it is full, any growth is a leak.
        hooks, rss = set(), []
        with planner.apply(pipe, plan, dry_run=dry_run) as applied:
            applied.trace.keep_calls = args.keep_calls
            for i in range(args.calls):
                block(applied, 1)
                hooks.add(hooks_installed(pipe))
                if (i + 1) % args.block == 0:
                    rss.append((i + 1, rss_mib()))
                    progress(f"soak: {i + 1} of {args.calls} calls, {rss[-1][1]:.1f} MiB resident")
    steady = [(c, m) for c, m in rss if c > args.keep_calls + args.block]
    slope = statistics.linear_regression(*zip(*steady, strict=False)).slope * 100 if len(steady) > 1 else float("nan")
    t_ours, t_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"tiny {args.kind}, {len(ours)} calls each, device {args.device}{' (dry run)' if dry_run else ''}")
    print(f"hooks installed after each of {args.calls} calls: {sorted(hooks)} (constant: {len(hooks) == 1})")
    print(f"resident memory: {rss[0][1]:.1f} MiB after {rss[0][0]} calls, {rss[-1][1]:.1f} MiB after {rss[-1][0]}; "
          f"growth {slope:+.3f} MiB per 100 calls once the trace holds its last {args.keep_calls} calls")
    print("resident MiB by calls: " + ", ".join(f"{c}: {m:.1f}" for c, m in rss))
    print(f"median time per call: plan {t_ours * 1000:.2f} ms, diffusers {t_theirs * 1000:.2f} ms")
    print(f"plan / diffusers = {t_ours / t_theirs:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
