"""`planner simulate` and benchmarks/transfers.py: the inputs a plan and its sizes give every policy, the JSON and
text reports, the located problems (PLN409, PLN410, a folder's), the timeline picture, no torch import, and the
benchmark's goals on a small case."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import headers
import pytest
from conftest import DATA, ROOT

from planner import load_plan
from planner.budget import peers
from planner.cli import main
from planner.simulate import components as simulate
from planner.simulate import plot
from planner.simulate.components import BUDGET, POLICIES, SimulationError, inputs, parse_sizes, run

sys.path.insert(0, str(ROOT / "benchmarks"))
import transfers  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
SDXL_PLAN = ROOT / "plans" / "sdxl-base.yaml"
SDXL = {"text_encoder": 246120960, "text_encoder_2": 1389319680, "unet": 5134927368, "vae": 167307726,
        "image_encoder": None}
SDXL_FLAG = ",".join(f"{name}={'none' if size is None else size}" for name, size in SDXL.items())
IMG2IMG = DATA / "good" / "budget-policy.yaml"  # policy budget, budget 8GiB, uses [te, vae, unet, vae, sc]
IMG2IMG_SIZES = {"text_encoder": 300 * MIB, "unet": 3 * GIB, "vae": 200 * MIB, "safety_checker": 600 * MIB}
HAS_MATPLOTLIB = plot.plot_available()


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_plan(folder: Path, text: str, name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text("version: 1\ndevice: cuda\n" + text, encoding="utf-8")
    return path


# -- the inputs ------------------------------------------------------------------------------------------------
def test_absent_components_are_skipped_and_the_call_order_is_the_plans():
    given = inputs(load_plan(IMG2IMG), IMG2IMG_SIZES)
    assert given.uses == ("text_encoder", "vae", "unet", "vae", "safety_checker")
    assert given.resident == ("safety_checker",) and given.skipped == ()
    sdxl = inputs(load_plan(SDXL_PLAN), SDXL)
    assert sdxl.skipped == ("image_encoder",) and "image_encoder" not in sdxl.sizes
    assert sdxl.uses == ("text_encoder", "text_encoder_2", "unet", "vae")


def test_a_plan_component_without_a_size_is_pln410_naming_it():
    sizes = {k: v for k, v in SDXL.items() if k not in ("text_encoder_2", "image_encoder")}
    with pytest.raises(SimulationError) as caught:
        inputs(load_plan(SDXL_PLAN), sizes)
    problems = caught.value.problems
    assert [(p.path, p.rule) for p in problems] == [("--sizes", "PLN410")] * 2
    assert "'text_encoder_2', a component of the plan, has no size" in problems[0].message
    assert "image_encoder=none" in problems[1].fix


def test_an_excluded_component_needs_a_size_too():
    sizes = {k: v for k, v in IMG2IMG_SIZES.items() if k != "safety_checker"}
    with pytest.raises(SimulationError) as caught:
        inputs(load_plan(IMG2IMG), sizes)
    assert "'safety_checker'" in caught.value.problems[0].message


def test_a_size_for_a_name_the_plan_lacks_is_pln410_with_a_hint():
    with pytest.raises(SimulationError) as caught:
        inputs(load_plan(SDXL_PLAN), {**SDXL, "unett": 5})
    (problem,) = caught.value.problems
    assert problem.rule == "PLN410" and "'unett' is not a component of the plan" in problem.message
    assert problem.fix == "did you mean 'unet'?"


def test_own_hook_components_may_have_a_size(tmp_path):
    plan = load_plan(write_plan(tmp_path, "components: [text_encoder, unet]\nown_hook: [controlnet]\n"))
    given = inputs(plan, {"text_encoder": 1, "unet": 2, "controlnet": 3})
    assert given.uses == ("text_encoder", "unet") and "controlnet" not in given.sizes


def test_parse_sizes_reads_units_and_none_and_refuses_the_rest():
    assert parse_sizes("unet=4GiB, vae = 512MB,image_encoder=none") == {"unet": 4 * GIB, "vae": 512 * 10**6,
                                                                          "image_encoder": None}
    for bad, said in (("unet", "is not NAME=SIZE"), ("=4GiB", "is not NAME=SIZE"), ("unet=4gb", "unet: '4gb'"),
                      ("unet=1,unet=2", "given twice"), ("unet=-1", "unet:")):
        with pytest.raises(ValueError, match=said):
            parse_sizes(bad)


# -- the policies on the same inputs -----------------------------------------------------------------------------
def test_every_policy_runs_and_ours_is_the_lower_bound():
    result = run(inputs(load_plan(SDXL_PLAN), SDXL), 8 * GIB, 4)
    assert tuple(result.schedules) == POLICIES
    assert result.bound.exact and result.ours.h2d_bytes == result.bound.h2d_bytes == sum(v or 0 for v in SDXL.values())
    assert all(s.h2d_bytes >= result.ours.h2d_bytes for s in result.schedules.values())
    chain = result.schedules["chain"]
    assert chain.h2d_bytes == chain.d2h_bytes == 4 * result.ours.h2d_bytes and result.ratio("chain") == 4.0
    assert result.ours.d2h_bytes == 0


def test_without_host_copies_ours_copies_evictions_back(tmp_path):
    text = IMG2IMG.read_text(encoding="utf-8").replace("keep_host_copy: true", "keep_host_copy: false")
    plan = load_plan(write_plan(tmp_path, text.split("device: cuda\n", 1)[1]))
    result = run(inputs(plan, IMG2IMG_SIZES), 600 * MIB + 3 * GIB + 100 * MIB, 2)
    assert result.ours.d2h_bytes > 0 and result.inputs.keep_host_copy is False
    assert result.to_json()["keep_host_copy"] is False
    assert "ours keeps no host copies (keep_host_copy: false)" in simulate.render_text(result)


def test_a_budget_too_small_runs_the_chain_alone():
    result = run(inputs(load_plan(SDXL_PLAN), SDXL), 4 * GIB, 2)
    assert tuple(result.schedules) == ("chain",) and result.bound is None and result.ours is None
    assert result.too_small.needed == SDXL["unet"]
    assert "does_not_fit" in result.to_json()


def test_simulate_locates_a_budget_too_small_at_the_flag_or_the_plan(tmp_path):
    with pytest.raises(SimulationError) as caught:
        simulate.simulate(load_plan(SDXL_PLAN), SDXL, 2, 4 * GIB)
    (problem,) = caught.value.problems
    assert (problem.path, problem.rule) == ("--budget", "PLN409")
    assert f"unet ({simulate.human(SDXL['unet'])}" in problem.message and str(SDXL["unet"]) in problem.fix
    small = IMG2IMG.read_text(encoding="utf-8").replace("budget: 8GiB", "budget: 1GiB").split("device: cuda\n", 1)[1]
    path = write_plan(tmp_path, small)
    with pytest.raises(SimulationError) as caught:
        simulate.simulate(load_plan(path), IMG2IMG_SIZES, 2)
    (problem,) = caught.value.problems
    line = path.read_text(encoding="utf-8").splitlines().index("budget: 1GiB") + 1
    assert (problem.path, problem.rule, problem.line, problem.column) == (str(path), "PLN409", line, 1)
    assert "beside the excluded components (600.00 MiB, resident throughout)" in problem.message


def test_without_any_budget_simulate_says_to_pass_one(tmp_path):
    with pytest.raises(ValueError, match="pass --budget SIZE"):
        simulate.simulate(load_plan(SDXL_PLAN), SDXL, 2)
    reserve = write_plan(tmp_path, "policy: budget\nreserve: 2GiB\ncomponents: [unet]\n")
    with pytest.raises(ValueError, match=r"minus its reserve \(2.00 GiB\)"):
        simulate.simulate(load_plan(reserve), {"unet": 1}, 2)


def test_beyond_the_exact_search_ours_is_belady_and_says_so():
    names = [f"m{i}" for i in range(16)]
    sizes = {name: 10 + 7 * i for i, name in enumerate(names)}
    given = simulate.Inputs(sequence=tuple(names), uses=tuple(names[::2] + names[1::2]), sizes=sizes)
    result = run(given, 400, 3)
    assert not result.ours.exact and not result.bound.exact
    text = simulate.render_text(result)
    assert "ours is not proven optimal here" in text and "Belady" in text
    assert result.to_json()["policies"][BUDGET]["exact"] is False


# -- the reports -------------------------------------------------------------------------------------------------
def test_json_has_the_issue_shape(capsys):
    code, out, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--sizes", SDXL_FLAG, "--budget", "8GiB", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert {"calls", "budget_bytes", "lower_bound_h2d_bytes", "policies"} <= set(data)
    assert (data["calls"], data["budget_bytes"]) == (4, 8 * GIB)
    assert list(data["policies"]) == list(POLICIES)
    for policy in data["policies"].values():
        assert {"h2d_bytes", "d2h_bytes", "peak_bytes", "events", "h2d_per_call", "d2h_per_call"} <= set(policy)
        assert sum(e["bytes"] for e in policy["events"] if e["event"] == "load" and e["call"] <= 4) == \
            policy["h2d_bytes"]
        assert len(policy["h2d_per_call"]) == 4 and sum(policy["h2d_per_call"]) == policy["h2d_bytes"]
    assert data["lower_bound_h2d_bytes"] == data["policies"]["budget"]["h2d_bytes"]
    assert data["policies"]["chain"]["h2d_ratio"] == 4.0 and data["skipped"] == ["image_encoder"]


def test_text_has_a_row_per_policy_and_the_lower_bound(capsys):
    code, out, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--sizes", SDXL_FLAG, "--budget", "8GiB", "--calls", "2")
    assert code == 0
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line[:1].isalpha()}
    for name in ("chain", "budget (ours)", "components_manager", "comfyui", "comfyui_lru", "lower bound"):
        assert name in rows, out
    assert rows["chain"][-1] == "2.00" and rows["budget (ours)"][-1] == "1.00"
    assert "budget 8.00 GiB (8589934592 bytes)" in out and "skipped (None in the pipeline): image_encoder" in out
    assert "the exact optimum" in out


def test_text_says_when_the_chain_goes_over_the_budget(capsys, tmp_path):
    # the encoders run twice: the chain's first component has no one to offload, so c stays beside a, then b
    plan = write_plan(tmp_path, "components: [a, b, c, d]\nuses: [a, b, c, a, b, c, d]\n")
    code, out, _ = run_cli(capsys, "simulate", plan, "--sizes", "a=1GiB,b=4GiB,c=6GiB,d=1GiB", "--budget", "7GiB")
    assert code == 0, out
    chain = next(line for line in out.splitlines() if line.startswith("chain "))
    assert "10.00 GiB !" in chain
    assert "! the chain ignores the budget: it held 10.00 GiB on the device, over the budget of 7.00 GiB" in out


def test_the_budget_comes_from_the_plan_and_the_flag_overrides_it(capsys):
    sizes = ",".join(f"{k}={v}" for k, v in IMG2IMG_SIZES.items())
    code, out, _ = run_cli(capsys, "simulate", IMG2IMG, "--sizes", sizes, "--format", "json")
    assert code == 0 and json.loads(out)["budget_bytes"] == 8 * GIB
    code, out, _ = run_cli(capsys, "simulate", IMG2IMG, "--sizes", sizes, "--budget", "5GiB", "--format", "json")
    assert code == 0 and json.loads(out)["budget_bytes"] == 5 * GIB and json.loads(out)["plan_policy"] == "budget"


# -- the command line's problems -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "said"), [
    (["--sizes", "unet=4gb", "--budget", "8GiB"], "argument --sizes: unet: '4gb'"),
    (["--sizes", SDXL_FLAG, "--budget", "8 gib"], "argument --budget:"),
    (["--sizes", SDXL_FLAG, "--model", "x", "--budget", "8GiB"], "not allowed with argument"),
    (["--sizes", "unet=1", "--sizes", "unet=2", "--budget", "8GiB"], "'unet' given twice"),
    (["--sizes", SDXL_FLAG], "the plan sets no budget: pass --budget SIZE"),
    (["--sizes", SDXL_FLAG, "--budget", "8GiB", "--calls", "0"], "argument --calls"),
    (["--budget", "8GiB"], "is a hub id: pass --model stabilityai/stable-diffusion-xl-base-1.0"),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, said):
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), *argv])
    assert caught.value.code == 2
    assert said in capsys.readouterr().err


def test_a_plan_without_a_source_needs_sizes(capsys, tmp_path):
    plan = write_plan(tmp_path, "components: [unet]\n")
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(plan), "--budget", "8GiB"])
    assert caught.value.code == 2 and "no sizes: pass --sizes" in capsys.readouterr().err


def test_problems_exit_1_one_located_line_each(capsys):
    code, out, err = run_cli(capsys, "simulate", SDXL_PLAN, "--sizes", "unet=5GiB,vae=1", "--budget", "8GiB")
    assert code == 1 and out == ""
    assert err.splitlines()[0] == ("--sizes: PLN410 'text_encoder', a component of the plan, has no size: add "
                                   "text_encoder=SIZE, or text_encoder=none when the pipeline has none")
    code, _, err = run_cli(capsys, "simulate", SDXL_PLAN, "--sizes", SDXL_FLAG, "--budget", "2GiB")
    assert code == 1 and err.startswith("--budget: PLN409 a budget of 2.00 GiB (2147483648 bytes) cannot hold unet")


def test_a_bad_plan_is_reported_as_validate_reports_it(capsys):
    code, _, err = run_cli(capsys, "simulate", DATA / "bad" / "cycle.yaml", "--sizes", "unet=1", "--budget", "1GiB")
    assert code == 1 and "PLN211" in err


# -- sizes from a model folder ---------------------------------------------------------------------------------
SMALL = [("w", "F32", (256, 256))]  # 256 KiB as stored, 128 KiB at float16
SD_INDEX = {"text_encoder": ("transformers", "CLIPTextModel"), "unet": ("diffusers", "UNet2DConditionModel"),
            "vae": ("diffusers", "AutoencoderKL"), "safety_checker": (None, None),
            "scheduler": ("diffusers", "PNDMScheduler"), "tokenizer": ("transformers", "CLIPTokenizer")}


def sd_folder(root: Path, specs: dict[str, list] | None = None) -> Path:
    headers.write_index(root, "StableDiffusionPipeline", SD_INDEX)
    for name, (library, _) in SD_INDEX.items():
        if library is not None and not name.startswith(("scheduler", "tokenizer")):
            base = "model" if library == "transformers" else "diffusion_pytorch_model"
            headers.write_file(root / name / f"{base}.safetensors", (specs or {}).get(name, SMALL))
    return root


SD_PLAN = """pipeline: {class: StableDiffusionPipeline, source: %s, torch_dtype: float16}
components: [text_encoder, unet, vae]
exclude: [safety_checker]
"""


def test_sizes_come_from_model_at_the_plans_dtype(capsys, tmp_path):
    folder = sd_folder(tmp_path / "sd", {"unet": [("w", "F32", (512, 512))]})
    plan = write_plan(tmp_path, SD_PLAN % "elsewhere/absent")
    code, out, _ = run_cli(capsys, "simulate", plan, "--model", folder, "--budget", "1MiB", "--format", "json")
    assert code == 0, out
    data = json.loads(out)
    assert data["sizes"] == {"text_encoder": 128 * 1024, "unet": 512 * 1024, "vae": 128 * 1024}
    assert data["skipped"] == ["safety_checker"] and data["resident"] == []


def test_sizes_come_from_a_local_source_relative_to_the_plan(capsys, tmp_path):
    sd_folder(tmp_path / "sd")
    plan = write_plan(tmp_path, SD_PLAN % "sd")
    code, out, _ = run_cli(capsys, "simulate", plan, "--budget", "1MiB", "--format", "json")
    assert code == 0 and json.loads(out)["sizes"]["unet"] == 128 * 1024


def test_a_planned_component_that_is_no_model_is_refused(capsys, tmp_path):
    folder = sd_folder(tmp_path / "sd")
    plan = write_plan(tmp_path, SD_PLAN.replace("[text_encoder, unet, vae]", "[text_encoder, unet, tokenizer]")
                      % "x")
    code, _, err = run_cli(capsys, "simulate", plan, "--model", folder, "--budget", "1MiB")
    assert code == 1 and "PLN504 component 'tokenizer'" in err  # the index says so first, as validate does
    unknown = write_plan(tmp_path, "pipeline: {source: x}\ncomponents: [text_encoder, unet, vea]\n", "u.yaml")
    code, _, err = run_cli(capsys, "simulate", unknown, "--model", folder, "--budget", "1MiB")
    assert code == 1 and "PLN301 the model folder" in err and "did you mean 'vae'?" in err


def test_a_damaged_folder_reports_its_problem(capsys, tmp_path):
    folder = sd_folder(tmp_path / "sd")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run_cli(capsys, "simulate", write_plan(tmp_path, SD_PLAN % "x"), "--model", folder, "--budget",
                           "1MiB")
    assert code == 1 and "PLN40" in err and "diffusion_pytorch_model.safetensors" in err


def test_the_plans_own_budget_problem_gives_way_to_the_flag(capsys, tmp_path):
    folder = sd_folder(tmp_path / "sd")
    plan = write_plan(tmp_path, SD_PLAN % "x" + "policy: budget\nbudget: 1KiB\n")
    code, _, err = run_cli(capsys, "simulate", plan, "--model", folder)
    assert code == 1 and "PLN409" in err and f"{plan}:" in err
    code, _, _ = run_cli(capsys, "simulate", plan, "--model", folder, "--budget", "1MiB")
    assert code == 0


# -- the timeline --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot extra (matplotlib) is not installed")
def test_plot_writes_a_png(capsys, tmp_path):
    target = tmp_path / "out" / "timeline.png"
    code, out, _ = run_cli(capsys, "simulate", SDXL_PLAN, "--sizes", SDXL_FLAG, "--budget", "6GiB", "--plot", target)
    assert code == 0 and f"timeline written to {target}" in out
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot extra (matplotlib) is not installed")
def test_plot_with_json_keeps_stdout_json(capsys, tmp_path):
    target = tmp_path / "t.svg"
    code, out, err = run_cli(capsys, "simulate", SDXL_PLAN, "--sizes", SDXL_FLAG, "--budget", "8GiB", "--plot",
                             target, "--format", "json")
    assert code == 0 and json.loads(out)["calls"] == 4 and "timeline written" in err
    assert target.read_text(encoding="utf-8").lstrip().startswith("<?xml")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot extra (matplotlib) is not installed")
@pytest.mark.parametrize(("name", "said"), [("t.xyz", "the extension .xyz"), ("t", "no extension"),
                                            ("dir/", "names a folder")])
def test_a_plot_path_that_cannot_be_written_is_a_usage_error(capsys, tmp_path, name, said):
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), "--sizes", SDXL_FLAG, "--budget", "8GiB", "--plot", f"{tmp_path}/{name}"])
    assert caught.value.code == 2 and said in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(plot, "plot_available", lambda: False)
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(SDXL_PLAN), "--sizes", SDXL_FLAG, "--budget", "8GiB", "--plot", str(tmp_path / "t.png")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1
    assert "pip install 'offload-planner[plot]'" in err and not (tmp_path / "t.png").exists()


def test_simulate_imports_no_torch(tmp_path):
    folder = sd_folder(tmp_path / "sd")
    plan = write_plan(tmp_path, SD_PLAN % "sd")
    plot = ["--plot", str(tmp_path / "t.png")] if HAS_MATPLOTLIB else []
    code = ("import sys\nfrom planner.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'accelerate', 'transformers') if m in sys.modules)\n"
            "assert rc == 0 and not heavy, (rc, heavy)\n")
    for argv in (["--model", str(folder)], []):
        proc = subprocess.run([sys.executable, "-c", code, "simulate", str(plan), *argv, "--budget", "1MiB", *plot],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr


# -- benchmarks/transfers.py -----------------------------------------------------------------------------------------
def test_transfers_goals_pass_on_sdxl_and_a_budget_that_does_not_fit():
    found = transfers.rows(transfers.library_models([("SDXL", "sdxl-base")]), [4 * GIB, 8 * GIB], 4)
    table = transfers.markdown(found)
    assert table.count("\n") == 4 and "does not fit (needs 4.78 GiB)" in table and "1.62 / 0.00" in table
    assert "6.46 / 6.46 (×4.00)" in table
    checked = transfers.goals(found)
    assert [g.passed for g in checked] == [True] * 4, [g.line() for g in checked]
    assert checked[3].detail.endswith("0.250")


def test_transfers_goals_fail_when_a_peer_beats_ours_or_the_row_is_missing():
    (row,) = transfers.rows(transfers.library_models([("SDXL", "sdxl-base")]), [6 * GIB], 2)
    faster = replace(row.result.schedules["comfyui"], h2d_per_call=(0,) * 2)
    bad = replace(row, result=replace(row.result, schedules={**row.result.schedules, "comfyui": faster}))
    checked = transfers.goals([bad])
    assert not checked[1].passed and "comfyui in SDXL at 6.00 GiB" in checked[1].detail
    assert not checked[3].passed and checked[3].detail == "no such row"
    copied = replace(row.result.ours, d2h_per_call=(1, 0))
    bad = replace(row, result=replace(row.result, schedules={**row.result.schedules, BUDGET: copied}))
    assert not transfers.goals([bad])[2].passed


def test_published_sizes_mark_absent_components_and_keep_exclusions():
    sizes = transfers.published_sizes("stable-diffusion-1.5")
    assert sizes["image_encoder"] is None and sizes["safety_checker"] > 0
    with pytest.raises(KeyError, match="unknown"):
        transfers.published_sizes("chroma")


def test_transfers_main_prints_the_table_and_the_goals(capsys):
    # over 2 calls ours moves half the chain's bytes on SDXL at 8 GiB, not a quarter: that goal fails
    assert transfers.main(["--budgets", "8", "--calls", "2"]) == 1
    out = capsys.readouterr().out
    assert "| SDXL | 8.00 GiB | 1.62 |" not in out and "| SDXL | 8.00 GiB |" in out
    assert out.count("PASS") + out.count("FAIL") == 4


def test_schedule_peers_are_all_in_the_outputs():
    assert set(peers.PEERS) <= set(POLICIES) and set(peers.PEERS) <= set(simulate.DESCRIPTIONS)
