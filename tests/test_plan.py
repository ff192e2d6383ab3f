import dataclasses

import pytest
from conftest import DATA

import planner
from planner.plan import Problem


def test_plan_is_frozen_and_compares_by_value():
    a = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    b = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert a == b and hash(a.sequence) == hash(b.sequence)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.device = "xpu"
    with pytest.raises(TypeError):
        a.locations["device"] = (1, 1)


def test_plan_fields():
    plan = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert (plan.version, plan.device, plan.gpu_id, plan.policy) == (1, "cuda", 1, "chain")
    assert plan.exclude == frozenset({"safety_checker"})
    assert plan.edges == (("text_encoder", "unet"), ("text_encoder_2", "unet"), ("unet", "vae"))
    assert (plan.pipeline_class, plan.torch_dtype, plan.variant) == ("StableDiffusionXLPipeline", "float16", "fp16")


def test_unreadable_file_is_a_problem_not_an_exception(tmp_path):
    problems = planner.check(tmp_path)  # a folder cannot be read as a plan
    assert [p.rule for p in problems] == ["PLN000"]


def test_problem_formats_with_and_without_a_place():
    assert str(Problem("p.yaml", 7, 3, "PLN211", "a cycle", "break it")) == "p.yaml:7:3: PLN211 a cycle: break it"
    assert str(Problem("--device", 0, 0, "PLN202", "no")) == "--device: PLN202 no"
