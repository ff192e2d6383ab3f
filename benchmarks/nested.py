"""Blocks inside blocks (issue 19): SDXL fp16 at 4 and 3 GiB and SD 1.5 fp16 at 1.5 GiB, 30 steps, one steady call,
on the published configs' sizes (benchmarks/published.py), against leaf-level offloading measured the issue's way:
every denoiser weight every step, each text encoder and the vae decoder once. Pure simulation (HiGHS), seconds.

    .venv/bin/python benchmarks/nested.py
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import published  # noqa: E402
from planner import load_plan  # noqa: E402
from planner.simulate import blocks as blocksim  # noqa: E402

GIB = 1 << 30
STEPS = 30
# (plan, budget in GiB, the issue's goal: at most this share of leaf-level offloading; None: a schedule exists)
ROWS = (("sdxl-base", 4, 0.25), ("sdxl-base", 3, 0.45), ("stable-diffusion-1.5", 1.5, None))


def leaf_bytes(model, components, dtype: str) -> int:
    """Leaf-level offloading per call: every denoiser weight every step, the others once (the vae's decoder only)."""
    total = 0
    for name in dict.fromkeys(model.uses):
        sizes = components[name].tensor_bytes(dtype)
        if name == "vae":
            total += sum(b for t, b in sizes.items() if t.startswith(("decoder.", "post_quant_conv.")))
        else:
            total += sum(sizes.values()) * (model.steps if name in model.denoisers else 1)
    return total


def main() -> int:
    failed = 0
    print(f"{'plan':<22}{'budget':>8}{'h2d/call':>12}{'leaf':>12}{'ratio':>8}{'goal':>7}  nesting")
    for stem, budget, goal in ROWS:
        plan = replace(load_plan(ROOT / "plans" / f"{stem}.yaml"), granularity="block")
        dtype = plan.torch_dtype
        models = published.PLANS[stem]
        components = {n: published.component(n, models.components[n]) for n in plan.sequence
                      if n in models.components}
        blocks = {n: c.blocks(dtype) for n, c in components.items()}
        started = time.perf_counter()
        result = blocksim.simulate(plan, blocks, int(budget * GIB), steps=STEPS, spare=64 << 30,
                                   pieces=lambda n, s, c=components, d=dtype: c[n].blocks(d, s))
        leaf = leaf_bytes(result.model, components, dtype)
        ratio = result.ours.h2d_bytes / leaf
        ok = result.ours.peak_bytes <= budget * GIB and (goal is None or ratio <= goal)
        failed += not ok
        nested = "; ".join(result.nesting.describe()) if result.nesting else "none needed"
        print(f"{stem:<22}{budget:>6}Gi{result.ours.h2d_bytes / 1e9:>10.2f}GB{leaf / 1e9:>10.2f}GB{ratio:>8.3f}"
              f"{goal if goal else '-':>7}  {'PASS' if ok else 'FAIL'} {nested[:70]} "
              f"({time.perf_counter() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
