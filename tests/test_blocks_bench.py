"""benchmarks/blocks.py's helpers on small cases (the whole table is the benchmark's own run): the published
blocks, the chain's bytes, one row's figures against the policies' definitions, the table, the goals failing
when a figure breaks them, the arguments and main's exit status and JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import blocks as bench  # noqa: E402

from planner import load_plan  # noqa: E402
from planner.blocknames import REST  # noqa: E402
from planner.budget import blocks, timing  # noqa: E402
from planner.budget.blocks import Model  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
SDXL_PLAN = load_plan(ROOT / "plans" / "sdxl-base.yaml")
# A small pipeline in the SDXL plan's shape: two encoders, a denoiser, an autoencoder (decode only)
TINY = {"text_encoder": {REST: 10 * MIB, "layers.0": 5 * MIB, "layers.1": 5 * MIB},
        "text_encoder_2": {REST: 12 * MIB, "layers.0": 8 * MIB, "layers.1": 8 * MIB},
        "unet": {REST: 4 * MIB, "down_blocks.0": 20 * MIB, "mid_block": 16 * MIB, "up_blocks.0": 20 * MIB},
        "vae": {REST: 1 * MIB, "decoder.up_blocks.0": 6 * MIB, "encoder.down_blocks.0": 6 * MIB}}
TINY_CHAIN = bench.Chain(sum(sum(b.values()) for b in TINY.values()), 60 * MIB)  # the unet is the largest
STEPS = 5


def tiny_model(budget: int) -> Model:
    return blocks.model_for(SDXL_PLAN, TINY, budget, steps=STEPS, prefetch=True, granularity="block")


@pytest.fixture(scope="module")
def tight():
    """A row whose budget holds neither the denoiser whole nor everything: something streams."""
    return bench.build_row("tiny", tiny_model(70 * MIB), TINY_CHAIN)


# -- the inputs ----------------------------------------------------------------------------------------------------
def test_published_blocks_add_up_to_each_component_and_skip_absent_ones():
    table = json.loads(bench.SIZES_JSON.read_text(encoding="utf-8"))
    for _, stem, _ in bench.MODELS:
        found = bench.published_blocks(stem, table)
        entry = table[stem]
        assert set(found) == set(entry["components"]) | set(entry["others"])
        for name, size in entry["components"].items():
            assert sum(found[name].values()) == size
            assert REST in found[name]
        assert not set(found) & set(entry["absent"])


def test_a_component_without_blocks_is_one_rest_block_and_unknown_sizes_refuse():
    table = {"p": {"components": {"a": 7, "b": 9}, "blocks": {"a": {REST: 3, "l.0": 4}}, "absent": {},
                   "unknown": {}, "others": {"s": {"bytes": 5}}},
             "q": {"components": {}, "blocks": {}, "absent": {}, "unknown": {"*": "no config"}, "others": {}}}
    assert bench.published_blocks("p", table) == {"a": {REST: 3, "l.0": 4}, "b": {REST: 9}, "s": {REST: 5}}
    with pytest.raises(KeyError, match="no config"):
        bench.published_blocks("q", table)


def test_the_chain_moves_every_used_component_once_per_call_holding_the_largest():
    sizes = {"text_encoder": 3, "text_encoder_2": 5, "unet": 11, "vae": 2, "image_encoder": None}
    assert bench.chain_of(SDXL_PLAN, sizes) == (21, 11)
    sizes = {name: sum(b.values()) for name, b in TINY.items()}
    assert bench.chain_of(SDXL_PLAN, {**sizes, "image_encoder": None}) == TINY_CHAIN


# -- one row -------------------------------------------------------------------------------------------------------
def test_a_row_holds_each_policy_by_its_definition(tight):
    model = tight.ours.model
    forwards = [f for f in model.forwards]
    assert len([f for f in forwards if f.component == "unet"]) == STEPS
    # group offloading: every group a forward runs, every forward; its groups are top-level ModuleList children,
    # the rest of a component (a whole vae, encoder included) one group
    grouped = tight.group.model
    assert tight.group.h2d_bytes == sum(grouped.size((f.component, b)) for f in grouped.forwards for b in f.blocks)
    assert grouped.size(("vae", "rest")) == sum(TINY["vae"].values())
    assert tight.ours.exact and tight.ours.bound <= tight.ours.h2d_bytes
    assert tight.whole is None or tight.ours.h2d_bytes <= tight.whole.h2d_bytes
    assert tight.ours.h2d_bytes < tight.group.h2d_bytes
    assert tight.replayed[0][-1] == tight.ours.h2d_bytes and tight.replayed[1] <= 70 * MIB
    assert not tight.mmgp.over_budget and tight.chain == TINY_CHAIN


def test_the_time_model_copies_moved_blocks_at_the_chosen_bandwidth(tight):
    settings = bench.Settings(pinned_bandwidth=4 * MIB, pageable_bandwidth=1 * MIB, block_seconds=0.0)
    row = bench.build_row("tiny", tight.ours.model, TINY_CHAIN, settings)
    assert row.group_time.transfer == pytest.approx(row.group.h2d_bytes / (4 * MIB))
    assert row.ours_time.transfer == pytest.approx(row.ours.h2d_bytes / (4 * MIB))
    assert row.ours_time.exposed == pytest.approx(row.ours_time.transfer)  # no compute hides anything
    pageable = bench.build_row("tiny", tight.ours.model, TINY_CHAIN, replace(settings, pin=False))
    assert pageable.group_time.transfer == pytest.approx(row.group.h2d_bytes / MIB)
    hidden = bench.build_row("tiny", tight.ours.model, TINY_CHAIN, replace(settings, block_seconds=10.0))
    assert hidden.group_time.exposed < hidden.group_time.transfer


def test_a_budget_below_one_pass_says_so_and_the_peers_still_run():
    row = bench.build_row("tiny", tiny_model(30 * MIB), TINY_CHAIN)
    assert row.ours is None and row.whole is None and row.replayed is None
    assert row.too_small.needed == tiny_model(30 * MIB).least_budget()[0] > 30 * MIB
    assert row.group.h2d_bytes > 0 and row.mmgp.over_budget
    line = bench.markdown([row]).splitlines()[2]
    assert "does not fit (needs" in line and "over budget" in line


def test_library_rows_build_one_row_per_model_and_budget():
    found = bench.library_rows([("tiny", SDXL_PLAN, TINY, TINY_CHAIN, STEPS)], [30 * MIB, 70 * MIB, GIB])
    assert [(r.model, r.budget, r.steps) for r in found] == [("tiny", b, STEPS) for b in (30 * MIB, 70 * MIB, GIB)]
    roomy = found[-1]
    assert roomy.ours.h2d_bytes == 0 == roomy.whole.h2d_bytes  # everything stays after the first call


# -- the table -----------------------------------------------------------------------------------------------------
def test_the_table_has_a_cell_per_column_and_the_figures_in_gb(tight):
    lines = bench.markdown([tight, tight]).splitlines()
    assert len(lines) == 4
    for line in lines[:1] + lines[2:]:
        assert line.count("|") == len(bench.HEAD) + 1
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[3] == f"{tight.ours.h2d_bytes / 1e9:.2f}"
    assert cells[6] == f"{TINY_CHAIN.h2d_bytes / 1e9:.2f}"  # the chain's peak (60 MiB) keeps within 70 MiB
    assert cells[9] == f"{tight.ours.h2d_bytes / TINY_CHAIN.h2d_bytes:.3f}"
    assert cells[10] == f"{tight.ours.h2d_bytes / tight.group.h2d_bytes:.3f}"
    assert "24 GB/s" in bench.legend(bench.Settings()) and "0 ms" in bench.legend(bench.Settings())


def test_a_policy_that_passes_the_budget_is_marked_over_budget():
    row = bench.build_row("tiny", tiny_model(50 * MIB), TINY_CHAIN)
    cells = [c.strip() for c in bench.markdown([row]).splitlines()[2].strip("|").split("|")]
    assert cells[5] == "does not fit"  # the 60 MiB unet cannot stay whole in 50 MiB
    assert cells[6].endswith(f"over budget (peak {bench.human(60 * MIB)})")
    assert "over budget" not in cells[3]
    # group offloading: the unet's mid block joins its unmatched group (20 MiB) beside two 20 MiB groups in flight
    assert cells[7].endswith(f"over budget (peak {bench.human(60 * MIB)})")


def test_an_unproven_schedule_is_marked(tight):
    unproven = replace(tight, ours=replace(tight.ours, exact=False))
    assert bench.markdown([unproven]).splitlines()[2].split("|")[4].strip().endswith("*")


# -- the goals -----------------------------------------------------------------------------------------------------
def _goals(found, chain_share=1.0, group_share=1.0):
    return bench.goals(found, ("tiny", 70 * MIB, "chain", chain_share),
                       ("tiny", 70 * MIB, "group offloading", group_share))


def test_the_goals_pass_on_a_sound_row(tight):
    checked = _goals([tight])
    assert [g.passed for g in checked] == [True] * 5
    assert all(g.line().startswith("PASS  ") for g in checked)


def test_each_goal_fails_when_its_figure_breaks_it(tight):
    share = tight.ours.h2d_bytes / TINY_CHAIN.h2d_bytes
    assert not _goals([tight], chain_share=share * 0.99)[0].passed
    assert not _goals([tight], group_share=0.0)[1].passed
    assert not _goals([replace(tight, budget=8 * GIB)])[0].passed  # no such row
    cheaper = replace(tight.ours, keep={k: (True,) * len(v) for k, v in tight.ours.keep.items()})
    assert cheaper.h2d_bytes < tight.ours.h2d_bytes
    assert not _goals([replace(tight, whole=cheaper)])[2].passed
    assert not _goals([replace(tight, ours=replace(tight.ours, bound=tight.ours.h2d_bytes + 1.0))])[3].passed
    assert not _goals([replace(tight, replayed=((0, tight.ours.h2d_bytes + 1), tight.replayed[1]))])[4].passed
    over = _goals([replace(tight, replayed=(tight.replayed[0], tight.budget + 1))])[4]
    assert not over.passed and "over the budget" in over.detail


def test_no_row_that_fits_fails_the_goals_over_rows():
    row = bench.build_row("tiny", tiny_model(30 * MIB), TINY_CHAIN)
    checked = bench.goals([row], ("tiny", 30 * MIB, "chain", 1.0), ("tiny", 30 * MIB, "group offloading", 1.0))
    assert not any(g.passed for g in checked)
    assert "does not fit" in checked[0].detail and "does not fit" in checked[1].detail


# -- arguments and main --------------------------------------------------------------------------------------------
def test_the_arguments_default_to_the_time_model_s_constants():
    args, settings = bench.parse([])
    assert (settings.pinned_bandwidth, settings.pageable_bandwidth) == (timing.PINNED_BANDWIDTH,
                                                                        timing.PAGEABLE_BANDWIDTH)
    assert settings.block_seconds == 0 and settings.pin and args.budgets == [b * GIB for b in bench.BUDGETS_GIB]
    _, settings = bench.parse(["--bandwidth", "20,10", "--block-ms", "2.5", "--pin", "false"])
    assert (settings.pinned_bandwidth, settings.pageable_bandwidth, settings.block_seconds) == (20e9, 10e9, 0.0025)
    assert not settings.pin


@pytest.mark.parametrize("argv", [["--bandwidth", "24"], ["--bandwidth", "0,12"], ["--bandwidth", "a,b"],
                                  ["--bandwidth", "inf,1"], ["--block-ms", "-1"], ["--block-ms", "nan"],
                                  ["--budgets", "6,x"], ["--budgets", "0"], ["--time-limit", "0"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse(argv)
    assert exc.value.code == 2 and "write" in capsys.readouterr().err


def test_main_prints_the_table_exits_1_on_a_failed_goal_and_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "library_models", lambda: [("tiny", SDXL_PLAN, TINY, TINY_CHAIN, STEPS)])
    out = tmp_path / "rows.json"
    assert bench.main(["--budgets", "0.03,0.07", "--json", str(out)]) == 1  # no SDXL or FLUX row: those goals fail
    printed = capsys.readouterr().out
    assert f"| tiny | {bench.human(int(0.03 * GIB))} | 5 | does not fit" in printed
    assert "FAIL  SDXL at 6.00 GiB" in printed
    assert "2 rows in" in printed
    data = json.loads(out.read_text())
    assert [r["budget_bytes"] for r in data["rows"]] == [int(0.03 * GIB), int(0.07 * GIB)]
    assert data["rows"][0]["ours"] is None and data["rows"][0]["least_budget_bytes"] > int(0.03 * GIB)
    fitted = data["rows"][1]
    assert fitted["replay"]["h2d_bytes_per_call"][-1] == fitted["ours"]["h2d_bytes"]
    assert fitted["ratios"]["ours_over_chain"] == fitted["ours"]["h2d_bytes"] / TINY_CHAIN.h2d_bytes
    assert fitted["chain_peak_bytes"] == TINY_CHAIN.peak_bytes
    assert data["settings"]["pinned_bandwidth_gb_s"] == timing.PINNED_BANDWIDTH / 1e9
    assert [g["passed"] for g in data["goals"]][:2] == [False, False]
