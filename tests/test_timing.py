"""The time model (`planner.budget.timing`): compute per block kind, and the exposed seconds split by component
and reason, each reason on a small case computed by hand (12 GB at the default pageable 12 GB/s: one second)."""

from __future__ import annotations

import pytest

from planner.blocknames import REST
from planner.budget import timing
from planner.budget.blocks import BlockSchedule, Model
from planner.budget.timing import HELD, NO_PREFETCH, STREAM, BlockTimes, block_kind

SECOND = 12 * 10 ** 9  # bytes copied in one second from pageable memory


def schedule(blocks: dict, *, held=(REST,), prefetch=True, steps=1, uses=None) -> BlockSchedule:
    """Nothing kept between forwards; `held` blocks held over their pass, the others streamed."""
    uses = uses or tuple(blocks)
    model = Model(uses, blocks, 10 ** 15, steps, prefetch=prefetch)
    runs = {key: len(model.runs_of[key]) for key in model.keys}
    return BlockSchedule(model, {key: (False,) * n for key, n in runs.items()},
                         {key: (key[1] in held,) * n for key, n in runs.items()})


def by(found: timing.Timing, component: str) -> dict:
    return dict(next(e for e in found.exposure if e.component == component).by_reason)


def test_block_kinds_drop_the_index():
    assert block_kind("transformer_blocks.7") == "transformer_blocks"
    assert block_kind("text_model.encoder.layers.3") == "text_model.encoder.layers"
    assert block_kind("mid_block") == "mid_block" and block_kind(REST) == REST
    assert block_kind("down_blocks.1.attentions.0") == "down_blocks.1.attentions"


def test_a_table_picks_component_kind_then_kind_then_default_and_rest_only_when_named():
    times = BlockTimes.from_ms({"unet/down_blocks": 2.0, "layers": 1.0, "default": 0.5})
    assert times("unet", "down_blocks.3") == pytest.approx(0.002)
    assert times("text_encoder", "layers.0") == pytest.approx(0.001)
    assert times("unet", "up_blocks.0") == pytest.approx(0.0005) and times("unet", REST) == 0
    assert BlockTimes.from_ms({"rest": 3.0})("vae", REST) == pytest.approx(0.003)
    keys = [("unet", "down_blocks.0"), ("text_encoder", "layers.0")]
    assert times.unmatched(keys) == []
    assert BlockTimes.from_ms({"vae/down_blocks": 1, "blocks": 1, "default": 1}).unmatched(keys) == [
        "vae/down_blocks", "blocks"]


def test_held_blocks_copied_before_the_forward_are_all_exposed():
    # REST 2 s held, one block of 1 s held too; 1 s of compute per block hides nothing of a held copy
    found = timing.timing(schedule({"te": {REST: 2 * SECOND, "layers.0": SECOND}}, held=(REST, "layers.0")),
                          block_seconds=1.0)
    assert (found.transfer, found.exposed, found.compute) == pytest.approx((3.0, 3.0, 1.0))
    assert by(found, "te") == pytest.approx({HELD: 3.0})
    assert found.exposure[0].main_reason() == HELD


def test_a_streamed_copy_longer_than_the_compute_before_it_is_exposed_for_the_difference():
    # x.0 copies 1 s then computes 0.5 s; x.1's 2 s copy starts at 1 s (two slots), ends at 3 s: 1.5 s waited
    found = timing.timing(schedule({"unet": {REST: 0, "x.0": SECOND, "x.1": 2 * SECOND}}),
                          block_seconds=BlockTimes({"x": 0.5}))
    assert (found.transfer, found.exposed, found.compute) == pytest.approx((3.0, 2.5, 1.0))
    assert by(found, "unet") == pytest.approx({STREAM: 2.5})
    # with 2 s of compute for x.0 the second copy is hidden: only the first copy waits
    hidden = timing.timing(found_schedule := schedule({"unet": {REST: 0, "x.0": SECOND, "x.1": 2 * SECOND}}),
                           block_seconds={("unet", "x.0"): 2.0, ("unet", "x.1"): 0.5})
    assert hidden.exposed == pytest.approx(1.0) and by(hidden, "unet") == pytest.approx({STREAM: 1.0})
    assert timing.timing(found_schedule, block_seconds=lambda c, b: {"x.0": 2.0, "x.1": 0.5}.get(b, 0)) == hidden


def test_without_prefetch_every_streamed_copy_is_exposed():
    blocks = {"unet": {REST: 0, **{f"x.{i}": SECOND for i in range(3)}}}
    found = timing.timing(schedule(blocks, prefetch=False), block_seconds=1.0)
    assert (found.transfer, found.exposed, found.compute) == pytest.approx((3.0, 3.0, 3.0))
    assert by(found, "unet") == pytest.approx({NO_PREFETCH: 3.0})
    assert timing.timing(schedule(blocks), block_seconds=1.0).exposed == pytest.approx(1.0)  # prefetch hides 2


def test_the_breakdown_sums_to_exposed_the_most_first_with_its_worst_forward():
    blocks = {"te": {REST: 2 * SECOND}, "unet": {REST: SECOND // 2, "x.0": SECOND, "x.1": SECOND}}
    found = timing.timing(schedule(blocks, steps=3), block_seconds=0.25)
    assert sum(e.total for e in found.exposure) == pytest.approx(found.exposed)
    unet = next(e for e in found.exposure if e.component == "unet")
    assert [e.component for e in found.exposure] == ["unet", "te"]  # 6.75 s, then 2 s
    # each step: REST 0.5 s held, x.0 waits 1 s, x.1's copy (1 s, from the forward's start) waits 0.75 s
    assert by(found, "unet") == pytest.approx({HELD: 1.5, STREAM: 5.25})
    assert unet.worst[3] == pytest.approx(2.25) and unet.worst[2] == 0
    data = found.to_json()["exposed_by_component"]
    assert data["unet"]["stream_s"] == pytest.approx(5.25) and data["te"]["held_s"] == pytest.approx(2.0)
    assert set(data["unet"]) == {"exposed_s", "held_s", "stream_s", "no_prefetch_s", "worst_forward"}


def test_one_figure_is_every_block_but_rest_as_before():
    blocks = {"unet": {REST: SECOND, "x.0": SECOND}}
    found = timing.timing(schedule(blocks), block_seconds=1.0)
    assert found.compute == pytest.approx(1.0) and found.exposed == pytest.approx(2.0)


def test_a_merged_rest_computes_the_blocks_it_absorbed_with_a_table_only():
    blocks = {"te": {REST: SECOND, "layers.0": SECOND, "layers.1": SECOND},
              "vae": {REST: 0, "encoder.down.0": SECOND, "decoder.up.0": SECOND}}
    original = Model(("te", "vae"), blocks, 10 ** 15)
    whole = Model(("te", "vae"), {c: {REST: sum(b.values())} for c, b in blocks.items()}, 10 ** 15)
    times = BlockTimes({"layers": 1.0, "rest": 0.5, "decoder.up": 2.0, "encoder.down": 4.0})
    merged = timing.regrouped(times, original, whole)
    assert merged("te", REST) == pytest.approx(2.5)
    assert merged("vae", REST) == pytest.approx(2.5)  # the vae decodes: its encoder never runs
    assert timing.regrouped(0.25, original, whole) == 0.25  # one figure: REST computes nothing, as before
