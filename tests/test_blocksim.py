"""`planner simulate` at block granularity: the issue's goals on real-sized folders (SDXL at 6 GiB, 30 steps; FLUX.1
dev at 16 GiB, 28 steps), every policy's row, the host's pinning within its spare memory, and the command line's
problems (PLN409 at the flag or the plan, PLN411, usage errors)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from planner import load_plan
from planner.budget import blocks
from planner.cli import main
from planner.folder import reader
from planner.plan import PlanError
from planner.simulate import blocks as blocksim

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
SDXL_PLAN = ROOT / "plans" / "sdxl-base.yaml"
FLUX_PLAN = ROOT / "plans" / "flux.1-dev.yaml"
SPARE = 64 * GIB  # a host that can spare this much, whatever this machine has


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def folder_blocks(folder: Path, plan) -> dict:
    found, problems = reader.read(folder, variant=plan.variant, torch_dtype=plan.torch_dtype)
    assert found is not None, problems
    return {name: c.blocks(plan.torch_dtype) for name, c in found.components.items()}


@pytest.fixture(scope="module")
def sdxl(real_sized):
    plan = replace(load_plan(SDXL_PLAN), granularity="block", steps=30)
    return plan, folder_blocks(real_sized["sdxl"], plan)


def test_sdxl_at_6_gib_moves_at_most_009_of_the_chain_and_less_than_whole_components(sdxl):
    plan, found_blocks = sdxl
    result = blocksim.simulate(plan, found_blocks, 6 * GIB, spare=SPARE)
    ours = result.rows["block"]
    assert result.ours.exact and not ours.over_budget and ours.peak_bytes <= 6 * GIB
    assert result.ratio("block", "chain") <= 0.09
    assert ours.h2d_bytes < result.rows["component"].h2d_bytes <= result.rows["chain"].h2d_bytes
    assert result.ours.bound <= ours.h2d_bytes
    for peer in ("group_offloading", "mmgp"):
        assert ours.h2d_bytes <= result.rows[peer].h2d_bytes
    # the figures agree with a replay of the schedule block by block
    moved, peak = blocks.replay(result.ours)
    assert moved[-1] == ours.h2d_bytes and peak <= 6 * GIB


def test_flux_dev_at_16_gib_moves_at_most_035_of_group_offloading(real_sized):
    plan = replace(load_plan(FLUX_PLAN), granularity="block", steps=28)
    result = blocksim.simulate(plan, folder_blocks(real_sized["flux"], plan), 16 * GIB, spare=SPARE)
    assert result.ours.exact and not result.rows["block"].over_budget
    assert result.ratio("block", "group_offloading") <= 0.35
    assert result.rows["block"].h2d_bytes <= result.rows["mmgp"].h2d_bytes
    assert "component" not in result.rows and "transformer" in result.whole_too_small  # 22 GiB in one piece


def test_auto_pins_within_the_spare_memory_and_the_most_moved_first(sdxl):
    plan, found_blocks = sdxl
    everything = blocksim.simulate(plan, found_blocks, 6 * GIB, spare=SPARE)
    moved = sum(everything.model.size(k) for k in everything.model.keys if everything.ours.loads(k))
    assert everything.pinning.pinned_bytes == moved  # room for every moved block
    small = blocksim.simulate(plan, found_blocks, 6 * GIB, spare=100 << 20)
    assert 0 < small.pinning.pinned_bytes <= 100 << 20
    none = blocksim.simulate(replace(plan, pin="false"), found_blocks, 6 * GIB, spare=SPARE)
    assert none.pinning.pinned_bytes == 0
    # pinned copies are twice as fast by default: pinning shortens the transfer time
    assert everything.rows["block"].timing.transfer < none.rows["block"].timing.transfer


def test_pin_true_beyond_the_spare_memory_is_pln411_at_the_plan_key(tmp_path, real_sized):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(SDXL_PLAN.read_text(encoding="utf-8").replace("policy: budget", "policy: budget\npin: true")
                         if "policy: budget" in SDXL_PLAN.read_text(encoding="utf-8") else
                         SDXL_PLAN.read_text(encoding="utf-8") + "policy: budget\npin: true\n", encoding="utf-8")
    plan = replace(load_plan(plan_file), granularity="block", steps=30)
    with pytest.raises(PlanError) as caught:
        blocksim.simulate(plan, folder_blocks(real_sized["sdxl"], plan), 6 * GIB, spare=1 << 20)
    [problem] = caught.value.problems
    assert problem.rule == "PLN411" and problem.line > 0 and "pin: auto" in problem.fix


def test_a_budget_below_the_least_block_budget_is_pln409_with_the_least(sdxl):
    plan, found_blocks = sdxl
    least = blocks.model_for(plan, found_blocks, 0).least_budget()[0]
    with pytest.raises(PlanError) as caught:
        blocksim.simulate(plan, found_blocks, least - 1, spare=SPARE, budget_flag="--budget")
    [problem] = caught.value.problems
    assert problem.rule == "PLN409" and problem.path == "--budget" and str(least) in problem.text
    assert blocksim.simulate(plan, found_blocks, least, spare=SPARE).rows["block"].peak_bytes <= least


def test_the_json_document_has_every_policy_and_the_host(sdxl):
    plan, found_blocks = sdxl
    data = json.loads(json.dumps(blocksim.simulate(plan, found_blocks, 6 * GIB, spare=SPARE).to_json()))
    assert set(data["policies"]) == {"block", "component", "chain", "group_offloading", "mmgp"}
    assert data["granularity"] == "block" and data["steps"] == 30 and data["exact"] is True
    assert data["lp_bound_h2d_bytes"] <= data["policies"]["block"]["h2d_bytes"]
    assert data["host"]["pinned_bytes"] <= data["host"]["spare"] == SPARE
    # every block that runs is listed; the vae's encoder never runs in text-to-image, and is never loaded
    idle = sum(size for name, size in found_blocks["vae"].items() if name.startswith("encoder."))
    assert idle > 0 and not any(key.startswith("vae/encoder.") for key in data["blocks"])
    assert sum(b["bytes"] for b in data["blocks"].values()) == sum(data["sizes"].values()) - idle


# -- the command line ------------------------------------------------------------------------------------------
def test_simulate_granularity_block_from_a_folder(capsys, real_sized):
    code, out, err = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], "--budget", "6GiB",
                             "--granularity", "block", "--steps", "30", "--host-spare", "8GiB",
                             "--bandwidth", "25", "--block-ms", "5")
    assert code == 0, err
    assert "granularity block, 30 steps per call" in out and "unet (x30)" in out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"block", "component", "chain", "group_offloading", "mmgp", "LP"} <= rows
    assert "25 GB/s from pinned, 12.5 GB/s from pageable" in out and "5 ms of compute per block" in out


def test_simulate_json_at_block_granularity_is_clean_json(capsys, real_sized):
    code, out, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], "--budget", "6GiB",
                           "--granularity", "block", "--steps", "30", "--format", "json", "--host-spare", "1GiB")
    assert code == 0
    data = json.loads(out)
    assert data["policies"]["block"]["vs_chain"] <= 0.09 and data["host"]["spare"] == GIB


def test_a_budget_flag_too_small_for_blocks_exits_1_at_the_flag(capsys, real_sized):
    code, out, err = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], "--budget", "100MiB",
                             "--granularity", "block")
    assert code == 1 and not out and err.startswith("--budget: PLN409") and "Traceback" not in err
    # blocks inside blocks: split down to what cannot be split, the least is text_encoder_2's rest (its embeddings)
    # and its largest piece in flight, twice; today's first level needed 4840915848 (the unet's up_blocks.0)
    assert "pass --budget 156198400 or more" in err and "largest piece text_model.encoder.layers." in err


@pytest.mark.parametrize(("argv", "said"), [
    (["--sizes", "text_encoder=1GiB,text_encoder_2=1GiB,unet=5GiB,vae=1GiB"], "--sizes cannot give"),
    (["--plot", "x.png"], "--plot draws whole components"),
    (["--steps", "0"], "argument --steps"),
    (["--bandwidth", "0"], "argument --bandwidth"),
    (["--bandwidth", "24,12,6"], "argument --bandwidth"),
    (["--bandwidth", "nan"], "argument --bandwidth"),
    (["--block-ms", "-1"], "argument --block-ms"),
    (["--host-spare", "lots"], "argument --host-spare"),
])
def test_block_usage_errors_exit_2_with_one_line(capsys, argv, said):
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), "--granularity", "block", "--budget", "6GiB", *argv])
    assert caught.value.code == 2
    assert said in capsys.readouterr().err


def test_validate_model_checks_a_block_plans_budget_against_the_least_block_budget(capsys, tmp_path, real_sized):
    text = ("version: 1\ndevice: cuda\npolicy: budget\ngranularity: block\nsteps: 30\nbudget: {budget}\n"
            "components: [text_encoder, text_encoder_2, unet, vae]\n"
            "pipeline:\n  class: StableDiffusionXLPipeline\n  torch_dtype: float16\n  variant: fp16\n")
    fits = tmp_path / "fits.yaml"
    fits.write_text(text.format(budget="5GiB"), encoding="utf-8")  # below the 6.46 GiB whole: blocks fit
    code, out, _ = run_cli(capsys, "validate", fits, "--model", real_sized["sdxl"])
    assert code == 0, out
    short = tmp_path / "short.yaml"
    short.write_text(text.format(budget="100MiB"), encoding="utf-8")  # below the least piece (149 MiB)
    code, out, _ = run_cli(capsys, "validate", short, "--model", real_sized["sdxl"])
    assert code == 1 and "short.yaml:6:1: PLN409" in out and "block by block" in out


@pytest.mark.parametrize(("argv", "said"), [
    (["--granularity", "block", "--calls", "3"], "--calls: granularity block simulates one steady call"),
    (["--granularity", "component", "--steps", "30"], "--steps applies to granularity block"),
    (["--block-ms", "2"], "--block-ms applies to granularity block"),
    (["--bandwidth", "24"], "--bandwidth applies to granularity block"),
    (["--host-spare", "1GiB"], "--host-spare applies to granularity block"),
    (["--no-prefetch"], "--prefetch applies to granularity block"),
])
def test_a_flag_of_the_other_granularity_is_a_usage_error(capsys, argv, said):
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), "--budget", "6GiB", "--sizes",
              "text_encoder=1GiB,text_encoder_2=1GiB,unet=5GiB,vae=1GiB,image_encoder=none", *argv])
    assert caught.value.code == 2
    assert said in capsys.readouterr().err


def test_without_host_copies_nothing_is_pinned_whatever_pin_says(sdxl):
    plan, found_blocks = sdxl
    result = blocksim.simulate(replace(plan, pin="true", keep_host_copy=False), found_blocks, 6 * GIB, spare=0)
    assert result.pinning.pinned_bytes == 0 and result.pinning.pin == "false"


def test_a_budget_beyond_everything_keeps_everything_and_moves_nothing(sdxl):
    plan, found_blocks = sdxl
    result = blocksim.simulate(plan, found_blocks, (1 << 64) - 1, spare=SPARE)
    assert result.rows["block"].h2d_bytes == 0 == result.rows["component"].h2d_bytes and result.ours.exact


# -- --block-ms per block kind ---------------------------------------------------------------------------------
BLOCK_ARGS = ("--budget", "6GiB", "--granularity", "block", "--steps", "30", "--host-spare", "8GiB")


def test_block_ms_takes_a_table_of_kinds_and_says_where_exposed_time_accrues(capsys, real_sized):
    code, out, err = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], *BLOCK_ARGS,
                             "--block-ms", "unet/down_blocks=4,up_blocks=3,default=0.5")
    assert code == 0, err
    assert "compute per block kind (--block-ms): unet/down_blocks 4 ms, up_blocks 3 ms, default 0.5 ms" in out
    exposed = [line for line in out.splitlines() if line.startswith("exposed, ")]
    assert [line.split(":")[0] for line in exposed] == ["exposed, block", "exposed, component",
                                                        "exposed, group_offloading", "exposed, mmgp"]
    assert "unet" in exposed[2] and "streamed block copy longer than the compute of the block before it" in exposed[2]
    code, out, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], *BLOCK_ARGS,
                           "--block-ms", "unet/down_blocks=4,up_blocks=3,default=0.5", "--format", "json")
    data = json.loads(out)
    assert data["block_seconds"] is None and data["block_ms"] == {"unet/down_blocks": 4, "up_blocks": 3,
                                                                  "default": 0.5}
    group = data["policies"]["group_offloading"]
    breakdown = group["exposed_by_component"]
    assert sum(c["exposed_s"] for c in breakdown.values()) == pytest.approx(group["exposed_s"])
    assert breakdown["unet"]["stream_s"] > 0 and breakdown["unet"]["worst_forward"]["exposed_s"] > 0


def test_block_ms_from_a_file_is_the_same_as_the_table(capsys, tmp_path, real_sized):
    table = tmp_path / "block_ms.json"
    table.write_text(json.dumps({"device": "a GPU", "block_ms": {"unet/down_blocks": 4, "default": 0.5}}))
    runs = [run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], *BLOCK_ARGS, "--block-ms", given,
                    "--format", "json")[1] for given in (f"@{table}", "unet/down_blocks=4,default=0.5")]
    assert runs[0] == runs[1]


def test_a_single_figure_is_every_block_as_before(capsys, real_sized):
    code, out, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], *BLOCK_ARGS,
                           "--block-ms", "2", "--format", "json")
    assert code == 0 and json.loads(out)["block_seconds"] == 0.002 and "block_ms" not in json.loads(out)
    _, table, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--model", real_sized["sdxl"], *BLOCK_ARGS,
                          "--block-ms", "default=2", "--format", "json")
    policies, single = json.loads(table)["policies"], json.loads(out)["policies"]
    assert policies["block"] == single["block"]  # default: every block but REST, as the single figure
    # with a table, a REST that merges blocks (group offloading's text encoders, whole components) computes them
    assert policies["group_offloading"]["compute_s"] > single["group_offloading"]["compute_s"]
    assert policies["component"]["compute_s"] > single["component"]["compute_s"] == 0


def test_a_kind_that_names_no_block_is_a_usage_error_naming_the_flag(capsys, real_sized):
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), "--model", str(real_sized["sdxl"]), *BLOCK_ARGS,
              "--block-ms", "unet/transformer_blocks=2,default=1"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and len(err.splitlines()) == 1
    assert "--block-ms: 'unet/transformer_blocks' names no block of the model" in err
    assert "unet/down_blocks" in err and "Traceback" not in err


def _bad_files(tmp_path):
    import os

    (tmp_path / "not.json").write_text("{block_ms")
    (tmp_path / "shape.json").write_text(json.dumps({"ms": {"default": 1}}))
    (tmp_path / "negative.json").write_text(json.dumps({"block_ms": {"default": -1}}))
    (tmp_path / "text.json").write_text(json.dumps({"block_ms": {"default": "1"}}))
    os.mkfifo(tmp_path / "fifo.json")
    return tmp_path


@pytest.mark.parametrize(("given", "said"), [
    ("-1", "must be milliseconds from 0 to 1000000"),
    ("default=-1", "default: must be milliseconds"),
    ("default=fast", "default: must be milliseconds"),
    ("unet/down_blocks=1,unet/down_blocks=2", "given twice"),
    ("=1", "must be MS, KIND=MS,... or @FILE.json"),
    ("@", "name a JSON file after the @"),
    ("@{d}/missing.json", "cannot read missing.json"),
    ("@{d}/not.json", "not.json is not valid JSON"),
    ("@{d}/shape.json", 'must hold {"block_ms": {KIND: MS, ...}}'),
    ("@{d}/negative.json", "default: must be milliseconds from 0 to 1000000, not -1"),
    ("@{d}/text.json", 'default: must be milliseconds from 0 to 1000000, not "1"'),
    ("@{d}/fifo.json", "cannot read fifo.json: a named pipe (FIFO), not a regular file"),
])
def test_a_bad_block_ms_exits_2_with_one_line_naming_the_flag(capsys, tmp_path, given, said):
    folder = _bad_files(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), "--granularity", "block", "--budget", "6GiB",
              "--block-ms", given.format(d=folder)])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "argument --block-ms" in err and said in err, err
    errors = [line for line in err.splitlines() if "error" in line]  # argparse's usage, then the one line
    assert errors == [err.strip().splitlines()[-1]] and "Traceback" not in err
