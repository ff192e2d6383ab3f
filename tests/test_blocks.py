"""The block scheduler: the integer program against a brute force, the compression of repeated forwards, never
above the whole-component optimum, the budget held block by block (blocks in flight included), the peers' rules,
the time model, and the SDXL goal on published sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations, product
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from planner.blocknames import REST
from planner.budget import blocks, peers, timing
from planner.budget import solve as solve_mod
from planner.budget.blocks import BlockSchedule, BlocksTooSmall, Model, forwards, replay, runs
from planner.budget.solve import solve

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30


# -- an independent brute force -----------------------------------------------------------------------------------
def brute_force(model: Model) -> int:
    """The fewest bytes per steady call over every keep choice of every block between every two runs (each
    forward its own pass), each forward holding the subset of its unforced blocks that needs the least room."""
    flat = Model(model.uses, model.blocks, model.budget, model.steps, model.denoisers, model.resident_bytes,
                 model.prefetch, compress=False)
    gaps = [(key, j) for key in flat.keys for j in range(len(flat.runs_of[key]))]
    best = None
    for bits in product((False, True), repeat=len(gaps)):
        keep = dict(zip(gaps, bits, strict=True))
        cost = sum(flat.size(key) for (key, j), kept in keep.items() if not kept)
        if best is not None and cost >= best:
            continue
        if all(_pass_fits(flat, keep, p) for p in flat.passes):
            best = cost
    return best


def _pass_fits(flat: Model, keep: dict, p) -> bool:
    forced, free, total = [], [], flat.resident_bytes
    for key in flat.keys:
        runs_ = flat.runs_of[key]
        if key[0] == p.component and p.index in runs_:
            j = runs_.index(p.index)
            if key[1] == REST or keep[(key, j)] or keep[(key, (j - 1) % len(runs_))]:
                forced.append(flat.size(key))
            else:
                free.append(flat.size(key))
        else:
            before = [j for j, q in enumerate(runs_) if q < p.index]
            if keep[(key, before[-1] if before else len(runs_) - 1)]:
                total += flat.size(key)
    total += sum(forced)
    for count in range(len(free) + 1):  # hold some of the free blocks, stream the others
        for held in combinations(range(len(free)), count):
            streamed = [s for i, s in enumerate(free) if i not in held]
            need = total + sum(free[i] for i in held) + flat.in_flight * max(streamed, default=0)
            if need <= flat.budget:
                return True
    return False


@st.composite
def models(draw):
    count = draw(st.integers(1, 2))
    names = ["text_encoder", "unet"][:count] if count == 2 else [draw(st.sampled_from(["text_encoder", "unet"]))]
    sizes = {}
    for name in names:
        inner = draw(st.integers(1, 2 if name == "unet" else 3))
        sizes[name] = {REST: draw(st.integers(0, 6)), **{f"layers.{i}": draw(st.integers(1, 20))
                                                         for i in range(inner)}}
    uses = tuple(draw(st.permutations(names)))
    steps = draw(st.integers(1, 3))
    model = Model(uses, sizes, 10 ** 9, steps, prefetch=draw(st.booleans()))
    least = model.least_budget()[0]
    total = sum(sum(b.values()) for b in sizes.values())
    budget = draw(st.integers(least, max(least, total + 2)))
    return Model(uses, sizes, budget, steps, prefetch=model.prefetch)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models())
@example(Model(("text_encoder", "unet"), {"text_encoder": {REST: 2, "layers.0": 9, "layers.1": 9},
                                          "unet": {REST: 1, "layers.0": 12, "layers.1": 5}}, 30, 3))
def test_the_program_finds_the_brute_force_optimum(model):
    found = solve(model)
    assert found.exact
    assert found.h2d_bytes == brute_force(model)
    assert not found.over_budget and not found.problems()
    assert found.bound is not None and found.bound <= found.h2d_bytes + 1e-6 * max(found.h2d_bytes, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(), st.integers(3, 6))
def test_compressing_repeated_forwards_loses_nothing(model, steps):
    model = Model(model.uses, model.blocks, model.budget, steps, prefetch=model.prefetch)
    flat = Model(model.uses, model.blocks, model.budget, steps, prefetch=model.prefetch, compress=False)
    assert len(model.passes) == len(flat.passes) - (steps - 3) * ("unet" in model.uses)
    assert solve(model).h2d_bytes == solve(flat).h2d_bytes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models())
def test_blocks_never_move_more_than_whole_components(model):
    whole = blocks.whole_components(model)
    try:
        component = solve(whole)
    except BlocksTooSmall:
        return
    assert solve(model).h2d_bytes <= component.h2d_bytes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models())
def test_replaying_the_schedule_block_by_block_keeps_the_budget(model):
    found = solve(model)
    moved, peak = replay(found, calls=3)
    assert moved[1] == moved[2] == found.h2d_bytes
    assert moved[0] + model.resident_bytes == found.first_call_bytes
    assert peak <= found.peak_bytes <= model.budget


def test_a_denoiser_runs_steps_forwards_and_its_middle_ones_share_a_pass():
    model = Model(("text_encoder", "unet", "vae"), {"text_encoder": {REST: 1, "layers.0": 2},
                  "unet": {REST: 1, "down_blocks.0": 3}, "vae": {REST: 1}}, 100, 30)
    assert [f.component for f in model.forwards].count("unet") == 30
    unet = [p for p in model.passes if p.component == "unet"]
    assert [p.repeat for p in unet] == [1, 28, 1] and [p.step for p in unet] == [0, 1, 29]
    assert len(forwards(solve(model))) == len(model.forwards) == 32


def test_an_autoencoder_decodes_with_its_decoder_and_encodes_with_its_encoder():
    vae = [REST, "decoder.mid_block", "decoder.up_blocks.0", "encoder.down_blocks.0", "encoder.mid_block"]
    assert runs("vae", vae, "decode") == (REST, "decoder.mid_block", "decoder.up_blocks.0")
    assert runs("vae", vae, "encode") == (REST, "encoder.down_blocks.0", "encoder.mid_block")
    assert runs("vae", vae, None) == tuple(vae)
    # a T5 encoder has no decoder: every block runs
    assert runs("text_encoder_2", [REST, "encoder.block.0"], "encode") == (REST, "encoder.block.0")
    sizes = {"vae": {REST: 1, "decoder.up_blocks.0": 5, "encoder.down_blocks.0": 7}, "unet": {REST: 2}}
    img2img = Model(("vae", "unet", "vae"), sizes, 100, 2)
    assert [p.blocks for p in img2img.passes if p.component == "vae"] == [(REST, "encoder.down_blocks.0"),
                                                                        (REST, "decoder.up_blocks.0")]
    txt2img = Model(("unet", "vae"), sizes, 100, 2)
    assert ("vae", "encoder.down_blocks.0") not in txt2img.keys  # never runs, never loaded


def test_the_least_budget_is_exact():
    model = Model(("text_encoder", "unet"), {"text_encoder": {REST: 3, "layers.0": 10, "layers.1": 7},
                                             "unet": {REST: 5, "down_blocks.0": 4}}, 10 ** 6, 4, resident_bytes=2)
    needed, component = model.least_budget()
    assert (needed, component) == (2 + 3 + 10 + 7, "text_encoder")  # both held: less than room for two 10s
    assert solve(Model(model.uses, model.blocks, needed, 4, resident_bytes=2)).peak_bytes <= needed
    with pytest.raises(BlocksTooSmall) as error:
        solve(Model(model.uses, model.blocks, needed - 1, 4, resident_bytes=2))
    assert error.value.needed == needed and "text_encoder" in str(error.value)


def test_a_budget_that_holds_everything_moves_nothing_after_the_first_call():
    sizes = {"text_encoder": {REST: 3, "layers.0": 10}, "unet": {REST: 5, "down_blocks.0": 4}}
    found = solve(Model(("text_encoder", "unet"), sizes, 22, 10))
    assert found.h2d_bytes == 0 and found.first_call_bytes == 22 and len(found.resident) == 4


def test_group_offloading_streams_every_block_every_forward():
    sizes = {"text_encoder": {REST: 3, "layers.0": 10}, "unet": {REST: 5, "down_blocks.0": 4, "up_blocks.0": 6}}
    model = Model(("text_encoder", "unet"), sizes, 40, 5)
    found = peers.group_offloading(model)
    assert found.h2d_bytes == 13 + 5 * 15
    assert found.peak_bytes == max(3 + 2 * 10, 5 + 2 * 6)  # REST held, two blocks in flight
    assert solve(model).h2d_bytes <= found.h2d_bytes


def test_mmgp_keeps_evenly_spread_denoiser_blocks_over_the_steps_and_reloads_every_call():
    sizes = {"text_encoder": {REST: 1, "layers.0": 2},
             "transformer": {REST: 1, **{f"blocks.{i}": 10 for i in range(8)}}}
    model = Model(("text_encoder", "transformer"), sizes, 1 + 40 + 20 + 2, 4)
    found = peers.mmgp(model)
    flat = found.model
    kept = [key[1] for key in flat.keys if key[0] == "transformer" and key[1] != REST and all(found.held[key])]
    assert [int(k.split(".")[1]) for k in kept] == sorted(peers._spread(8, 4)) and not found.over_budget
    # kept between the steps, dropped when the call moves on: every model is loaded again each call
    assert all(found.keep[("transformer", b)][:-1] and not found.keep[("transformer", b)][-1] for b in kept)
    assert found.loads(("transformer", kept[0])) == 1 and found.loads(("text_encoder", REST)) == 1
    streamed = 4 * 10 * 4  # the other four blocks, every step
    assert found.h2d_bytes == 3 + 1 + 4 * 10 + streamed
    assert solve(model).h2d_bytes <= found.h2d_bytes


def test_the_time_model():
    sizes = {"unet": {REST: 0, **{f"blocks.{i}": 12 * 10 ** 9 for i in range(3)}}}
    streamed = BlockSchedule(Model(("unet",), sizes, 10 ** 12, 1, prefetch=True),
                             {("unet", b): (False,) for b in sizes["unet"]},
                             {("unet", b): (b == REST,) for b in sizes["unet"]})
    # pageable 12 GB/s: one second per block; with no compute nothing is hidden
    none = timing.timing(streamed)
    assert none.transfer == pytest.approx(3.0) and none.exposed == pytest.approx(3.0) and none.hidden == 0
    # one second of compute per block: the second and third copies run beside the compute before them
    overlapped = timing.timing(streamed, block_seconds=1.0)
    assert overlapped.compute == pytest.approx(3.0) and overlapped.exposed == pytest.approx(1.0)
    serial = timing.timing(BlockSchedule(Model(("unet",), sizes, 10 ** 12, 1, prefetch=False), streamed.keep,
                                         streamed.held), block_seconds=1.0)
    assert serial.exposed == pytest.approx(3.0)
    pinned = timing.timing(streamed, pinned=frozenset(streamed.model.keys))
    assert pinned.transfer == pytest.approx(1.5)


def test_sdxl_at_6_gib_30_steps_moves_under_a_tenth_of_the_chain():
    entry = json.loads((ROOT / "benchmarks" / "published_sizes.json").read_text())["sdxl-base"]
    uses = ("text_encoder", "text_encoder_2", "unet", "vae")
    model = Model(uses, {c: entry["blocks"][c] for c in uses}, 6 * GIB, 30)
    found = solve(model)
    chain = sum(entry["components"][c] for c in uses)
    assert found.exact and found.h2d_bytes <= 0.09 * chain
    assert found.bound <= found.h2d_bytes
    assert found.h2d_bytes < solve(blocks.whole_components(model)).h2d_bytes
    assert replay(found)[1] <= 6 * GIB


def test_the_solver_prints_nothing_on_standard_output():
    code = ("import json; from planner.budget.blocks import Model, REST; from planner.budget.solve import solve\n"
            "m = Model(('a', 'unet'), {'a': {REST: 1, 'l.0': 5, 'l.1': 5}, 'unet': {REST: 1, 'b.0': 7}}, 14, 30)\n"
            "print(json.dumps(solve(m).h2d_bytes))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert json.loads(out) >= 0


def test_the_block_model_imports_scipy_only_to_solve():
    code = ("import sys; from planner.budget import blocks; from planner.simulate import blocks as blocksim; "
            "m = blocks.Model(('unet',), {'unet': {'rest': 1, 'b.0': 2}}, 10, 3); m.least_budget(); m.passes; "
            "print('scipy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "False"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 7), st.integers(1, 9), st.integers(1, 4), st.integers(2, 6), st.booleans(), st.data())
def test_counting_interchangeable_blocks_finds_the_same_optimum_as_naming_them(count, size, other, steps, prefetch,
                                                                             data):
    sizes = {"text_encoder": {REST: 1, **{f"layers.{i}": other for i in range(3)}},
             "transformer": {REST: 2, **{f"blocks.{i}": size for i in range(count)}, "norm_block": size + 1}}
    model = Model(("text_encoder", "transformer"), sizes, 1, steps, prefetch=prefetch)
    least, total = model.least_budget()[0], sum(sum(b.values()) for b in sizes.values())
    model = Model(model.uses, sizes, data.draw(st.integers(least, total)), steps, prefetch=prefetch)
    grouped = solve(model)
    named = solve_mod._Program(model, group=False).solve(solve_mod.TIME_LIMIT)
    assert grouped.exact and named.exact
    assert grouped.h2d_bytes == named.h2d_bytes and not grouped.over_budget and not grouped.problems()
    assert replay(grouped)[1] <= model.budget


def test_the_blocks_a_class_keeps_are_spread_evenly_over_it():
    found = solve_mod._Class([("t", f"blocks.{i}") for i in range(8)], 1, (0,))
    assert [key[1] for key in found.order()][:4] == ["blocks.0", "blocks.4", "blocks.2", "blocks.6"]


def test_a_controlnet_runs_every_step_beside_the_denoiser():
    sizes = {"controlnet": {REST: 1, "down_blocks.0": 2}, "unet": {REST: 1, "down_blocks.0": 2}}
    model = Model(("controlnet", "unet"), sizes, 100, 7)
    assert [f.component for f in model.forwards].count("controlnet") == 7


def test_with_the_denoiser_excluded_the_vae_still_only_decodes():
    vae = {REST: 1, "decoder.up_blocks.0": 5, "encoder.down_blocks.0": 7}
    sizes = {"text_encoder": {REST: 1, "layers.0": 2}, "unet": {REST: 3, "down_blocks.0": 4}, "vae": vae}

    class Plan:  # the fields model_for reads
        call_order, exclude, steps, prefetch, granularity = ("text_encoder", "unet", "vae"), {"unet"}, 3, True, "block"

    model = blocks.model_for(Plan, sizes, 100)
    assert model.uses == ("text_encoder", "vae") and model.resident_bytes == 7
    assert ("vae", "encoder.down_blocks.0") not in model.keys
    alone = Model(("text_encoder", "vae"), {n: sizes[n] for n in ("text_encoder", "vae")}, 100)
    assert ("vae", "encoder.down_blocks.0") not in alone.keys  # no denoiser at all: the last use decodes
