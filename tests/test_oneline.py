"""`planner.apply(pipe)` without a plan (planner.executor.oneline): the plan `planner init` writes for the class, or
the budget policy at the granularity `decide` picks; `applied.plan.to_yaml()` validates and loads back equal."""

from __future__ import annotations

import pytest
import torch

import planner
from planner.cli import main
from planner.validate import load_plan, load_text

diffusers = pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline  # noqa: E402

FIELDS = ("sequence", "exclude", "own_hook", "policy", "budget", "granularity", "steps", "device", "pipeline_class")


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved_and_validated(plan, tmp_path, capsys):
    """The printed plan written to a file as a user would: `planner validate` passes and it loads back equal."""
    path = tmp_path / "saved.yaml"
    path.write_text(plan.to_yaml())
    assert main(["validate", str(path)]) == 0, capsys.readouterr().out
    again = load_plan(path)
    assert {k: getattr(again, k) for k in FIELDS} == {k: getattr(plan, k) for k in FIELDS}
    return again


def test_no_plan_is_the_chain_planner_init_writes_for_the_class(tiny_pipelines, tmp_path, capsys):
    pipe = load(tiny_pipelines["sd"])
    assert main(["init", "--pipeline-class", type(pipe).__name__]) == 0
    written = capsys.readouterr().out
    with planner.apply(pipe, dry_run=True) as applied:
        assert applied.plan.policy == "chain" and applied.plan.path == "<planner.apply>"
        assert applied.plan.to_yaml() == written  # the very text init writes
        saved_and_validated(applied.plan, tmp_path, capsys)
        pipe(prompt="a cat", num_inference_steps=1, output_type="np")


def test_a_budget_that_holds_whole_components_stays_at_component_granularity(tiny_pipelines, tmp_path, capsys):
    pipe = load(tiny_pipelines["sd"])
    with planner.apply(pipe, budget="1MiB", dry_run=True) as applied:
        plan = applied.plan
        assert (plan.policy, plan.budget, plan.granularity) == ("budget", 1 << 20, "component")
        assert "budget: 1MiB" in plan.to_yaml()
        saved_and_validated(plan, tmp_path, capsys)


def test_a_budget_below_the_largest_component_goes_block_by_block(tiny_pipelines, tmp_path, capsys):
    from planner.budget import decide
    from planner.executor.modules import model_components, module_bytes

    pipe = load(tiny_pipelines["sd"])
    sizes = {n: module_bytes(m) for n, m in model_components(pipe).items()}
    chain = planner.apply(pipe, dry_run=True).plan
    budget = decide.least_components(chain, sizes).needed - 1  # whole components no longer fit
    with planner.apply(pipe, budget=budget, steps=2, dry_run=True) as applied:
        plan = applied.plan
        assert (plan.budget, plan.granularity, plan.steps) == (budget, "block", 2)
        saved_and_validated(plan, tmp_path, capsys)
        pipe(prompt="a cat", num_inference_steps=2, output_type="np")
        assert applied.trace.events


def test_a_bad_budget_is_located_in_the_generated_text(tiny_pipelines):
    pipe = load(tiny_pipelines["sd"])
    with pytest.raises(planner.PlanError) as caught:
        planner.apply(pipe, budget="12 lots", dry_run=True)
    problem = caught.value.problems[0]
    assert (problem.path, problem.rule) == ("<planner.apply>", "PLN214") and problem.line > 0
    with pytest.raises(TypeError):
        planner.apply(pipe, planner.apply(pipe, dry_run=True).plan, budget="1GiB")


def test_to_yaml_of_a_changed_plan_is_written_from_its_fields(tmp_path):
    from dataclasses import replace

    from planner.plan import Plan

    text = "version: 1\ndevice: cuda\npolicy: budget\nbudget: 2GiB\ncomponents: [a, b]\nexclude: ['on']\n"
    plan = load_text(text, "<t>")
    assert plan.to_yaml() == text  # unchanged: its own text
    changed = replace(plan, device="xpu", granularity="block", steps=4)
    again = load_text(changed.to_yaml(), "<t>")
    assert isinstance(again, Plan) and again == replace(changed, path="<t>")
    assert "device: xpu" in changed.to_yaml() and "budget: 2GiB" not in changed.to_yaml()


def test_apply_granularity_flag_is_checked_by_the_plan_rules_and_located_at_the_flag(tiny_pipelines, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [text_encoder, unet, vae]\n")
    argv = ["apply", str(plan), "--source", str(tiny_pipelines["sd"]), "--dry-run", "--quiet", "--policy", "budget",
            "--budget", "450KB"]
    assert main([*argv, "--granularity", "block"]) == 0
    assert "\ngranularity block: " in capsys.readouterr().out
    assert main([*argv, "--granularity", "blocks"]) == 1
    assert capsys.readouterr().err.startswith("--granularity: PLN104 granularity 'blocks' is not allowed: did you "
                                              "mean 'block'?")


@pytest.mark.parametrize("budget, granularity", [("2MB", "component"), ("260000", "block")])
def test_init_budget_writes_the_granularity_decide_picks_and_what_simulate_predicts(budget, granularity, tiny_pipelines,
                                                                                    tmp_path, capsys):
    folder = tiny_pipelines["sd"]
    out = tmp_path / "plans" / "sd.yaml"
    assert main(["init", "--model", str(folder), "--budget", budget, "--steps", "3", "-o", str(out)]) == 0
    text = out.read_text()
    assert f"budget: {budget}\ngranularity: {granularity}\nsteps: 3\n" in text
    assert "# planner simulate predicts, for one steady call of 3 steps" in text
    assert "for diffusers' chain" in text and "for group offloading" in text and "The host copies hold" in text
    capsys.readouterr()
    assert main(["validate", "--model", str(folder), str(out)]) == 0, capsys.readouterr().out
    plan = load_plan(out)
    assert (plan.policy, plan.granularity, plan.steps) == ("budget", granularity, 3)


def test_init_budget_mistakes(tiny_pipelines, capsys):
    folder = str(tiny_pipelines["sd"])
    assert main(["init", "--model", folder, "--budget", "2KB"]) == 1
    assert capsys.readouterr().err.startswith("--budget: PLN409 a budget of 1.95 KiB (2000 bytes) cannot run unet")
    for argv, words in ((["--pipeline-class", "FluxPipeline", "--budget", "8GiB"], "--budget needs --model"),
                        (["--model", folder, "--steps", "2"], "--steps: the steps of a budget plan"),
                        (["--model", folder, "--budget", "8 lots"], "--budget: ")):
        with pytest.raises(SystemExit) as exited:
            main(["init", *argv])
        assert exited.value.code == 2 and words in capsys.readouterr().err
