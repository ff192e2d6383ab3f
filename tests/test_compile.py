"""torch.compile with a block plan in force (CPU, backend "eager"): diffusers' regional compilation of the repeated
blocks, then a dry-run block plan streaming them: the same images as without the plan, and graph breaks only at
the block hooks' boundaries (their `torch.compiler.disable`d pre/post_forward)."""

from __future__ import annotations

import pytest
import torch

import planner

pytest.importorskip("diffusers")
from test_executor_blocks import budgets, call_kwargs, probed, write_plan  # noqa: E402
from test_syncs import long_flux  # noqa: E402


def test_compiled_blocks_under_a_block_plan_give_the_same_images_and_break_only_at_the_hooks(tiny_builds, tmp_path,
                                                                                             fired):
    from torch._dynamo.utils import counters

    pipe, components, uses, _ = probed("flux", tiny_builds, tmp_path, fired)
    pipe = long_flux(pipe)
    if not hasattr(pipe.transformer, "compile_repeated_blocks"):
        pytest.skip("this diffusers has no compile_repeated_blocks")
    torch._dynamo.reset()
    pipe.transformer.compile_repeated_blocks(backend="eager")
    expected = pipe(**call_kwargs("flux", 2)).images
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=2, name="size.yaml"))
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=2), dry_run=True)
    assert applied.schedule.streamed
    counters.clear()
    for _ in range(2):
        assert (applied(**call_kwargs("flux", 2)).images == expected).all()
    breaks = counters["graph_break"]
    assert breaks and all("BlockHook.pre_forward" in r or "BlockHook.post_forward" in r for r in breaks), breaks
    applied.remove()
