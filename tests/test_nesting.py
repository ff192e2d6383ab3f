"""Blocks inside blocks (planner.blocknames.piece_of, planner.budget.nesting, decide's split): the naming, the split
chosen for a budget (none where today's blocks fit, down to what fits, the unsplittable piece named), the solver over
nested pieces against brute force, tied tensors in one piece, and a tiny SD run in a budget that needs a split
(dry run: the trace moves the schedule's bytes, the images are those of a run without the plan)."""

from __future__ import annotations

import pytest
from test_blocks import brute_force

from planner.blocknames import REST, block_of, piece_of
from planner.budget import blocks, decide, nesting
from planner.budget.solve import solve
from planner.plan import PlanError

UNET = {"conv_in.weight": 10, "down_blocks.0.resnets.0.conv1.weight": 40, "down_blocks.0.resnets.0.conv2.weight": 40,
        "down_blocks.0.attentions.0.proj_in.weight": 5, "down_blocks.0.attentions.0.transformer_blocks.0.ff.weight": 60,
        "down_blocks.0.attentions.0.transformer_blocks.1.ff.weight": 60, "down_blocks.0.norm.weight": 2,
        "up_blocks.0.resnets.0.conv1.weight": 30, "conv_out.weight": 10}


def test_piece_of_descends_only_into_split_pieces():
    name = "up_blocks.0.attentions.0.transformer_blocks.3.attn1.to_q.weight"
    assert piece_of(name) == block_of(name) == "up_blocks.0"
    assert piece_of(name, {"up_blocks.0"}) == "up_blocks.0.attentions.0"
    split = {"up_blocks.0", "up_blocks.0.attentions.0"}
    assert piece_of(name, split) == "up_blocks.0.attentions.0.transformer_blocks.3"
    deeper = {"up_blocks.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.0.transformer_blocks.3"}
    assert piece_of(name, deeper) == "up_blocks.0.attentions.0.transformer_blocks.3.attn1"
    assert piece_of("up_blocks.0.attentions.0.norm.weight", {"up_blocks.0", "up_blocks.0.attentions.0"}) == \
        "up_blocks.0.attentions.0.norm"
    assert piece_of("up_blocks.0.bias", {"up_blocks.0"}) == REST  # a split piece's own tensors join REST
    assert piece_of("conv_in.weight", {"up_blocks.0"}) == REST


def _plan(steps=3):
    import tempfile
    from pathlib import Path

    import planner

    path = Path(tempfile.mkdtemp()) / "plan.yaml"
    path.write_text("version: 1\ndevice: cuda\npolicy: budget\ngranularity: block\ncomponents: [unet]\n"
                    f"budget: 1GiB\nsteps: {steps}\nprefetch: false\n", encoding="utf-8")
    return planner.load_plan(path)


def _least(plan, budget):
    def least(found):
        got = decide.least_blocks(plan, found, decide.block_model_for(plan, found, budget))
        return got.needed, got.component
    return least


def test_no_split_where_todays_blocks_fit_and_splits_until_it_fits():
    pieces = nesting.from_tensors({"unet": UNET})
    today = pieces("unet", frozenset())
    assert today == {"down_blocks.0": 207, "up_blocks.0": 30, REST: 20}
    plan = _plan()
    least_today = _least(plan, 10 ** 9)({"unet": today})[0]
    kept = decide.nest(plan, pieces, ["unet"], least_today)
    assert not kept.nested and dict(kept.blocks["unet"]) == today
    split = decide.nest(plan, pieces, ["unet"], least_today - 1)
    assert split.nested and "down_blocks.0" in split.splits["unet"] and split.needed <= least_today - 1
    assert sum(split.blocks["unet"].values()) == sum(UNET.values())
    floor = decide.nest(plan, pieces, ["unet"], 1)  # nothing fits: split as far as it goes, the piece named
    assert floor.needed > 1 and floor.bound is not None
    with pytest.raises(PlanError) as info:
        decide.check_blocks(plan, floor.blocks, 1, _asker(plan), nested=floor)
    problem, = info.value.problems
    assert "largest piece" in problem.message and floor.bound[1] in problem.message


def _asker(plan):
    from planner.budget.problems import Asker

    return Asker.checking(plan)


@pytest.mark.parametrize("cut", [1, 20, 40])
def test_the_solver_over_nested_pieces_finds_the_brute_force_optimum(cut):
    plan = _plan(steps=1)  # one run per piece: brute force over every keep choice stays small
    pieces = nesting.from_tensors({"unet": UNET})
    least_today = _least(plan, 10 ** 9)({"unet": pieces("unet", frozenset())})[0]
    chosen = decide.nest(plan, pieces, ["unet"], least_today - cut)
    model = blocks.model_for(plan, chosen.blocks, least_today - cut, granularity="block")
    found = solve(model)
    assert found.h2d_bytes == brute_force(model) and not found.over_budget


def test_tied_tensors_stay_in_one_piece():
    torch = pytest.importorskip("torch")
    from planner.executor.blocks import partition

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Inner(), Inner()])
            self.blocks[1].b.weight = self.blocks[1].a.weight  # tied across two pieces once blocks.1 splits

    module = Outer()
    found = partition(module, frozenset({"blocks.1"}))
    assert set(found.sizes) == {"blocks.0", "blocks.1.a", "blocks.1.b", REST}
    tied = id(module.blocks[1].a.weight)
    assert tied in {id(t) for t in found.tensors[REST]}
    assert all(tied not in {id(t) for t in found.tensors[b]} for b in found.tensors if b != REST)
