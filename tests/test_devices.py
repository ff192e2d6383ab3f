import dataclasses

import pytest

torch = pytest.importorskip("torch")

from conftest import DATA  # noqa: E402

import planner  # noqa: E402
from planner.executor import devices  # noqa: E402


def plan(**changes):
    return dataclasses.replace(planner.load_plan(DATA / "good" / "chain-list.yaml"), **changes)


def test_target_takes_gpu_id_then_the_index_then_zero():
    assert devices.target(plan(device="cuda", gpu_id=0)) == torch.device("cuda:0")
    assert devices.target(plan(device="cuda", gpu_id=2)) == torch.device("cuda:2")
    assert devices.target(plan(device="xpu:1", gpu_id=None)) == torch.device("xpu:1")
    assert devices.target(plan(device="mps", gpu_id=None)) == torch.device("mps:0")


def test_count_is_zero_for_absent_backends():
    assert devices.count("no_such_backend") == 0
    assert devices.count("cuda") == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.fixture
def present(monkeypatch):
    """Pretend this machine has `present["cuda"]` cuda devices (0 unless set)."""
    state = {"cuda": 0}
    monkeypatch.setattr(devices, "count", lambda kind: state.get(kind, 0))
    return state


def test_missing_device_speaks_the_python_api_by_default(present):
    (problem,) = devices.problems(plan(device="cuda", gpu_id=None), torch.device("cuda:0"))
    assert problem.rule == "PLN303" and problem.line == 2  # the plan's `device` line
    assert problem.text == "no cuda device found: pass dry_run=True to trace the plan on the CPU"


def test_callers_choose_the_spelling_and_the_place(present):
    def at_flag(key, rule, message, fix=""):
        return planner.Problem(f"--{key}", 0, 0, rule, message, fix)

    (problem,) = devices.problems(plan(device="cuda", gpu_id=None), torch.device("cuda:0"), at_flag,
                                  "run with --dry-run to trace the plan on the CPU")
    assert str(problem) == "--device: PLN303 no cuda device found: run with --dry-run to trace the plan on the CPU"


def test_an_index_beyond_the_devices_present_is_located_at_what_chose_it(present):
    present["cuda"] = 2
    (problem,) = devices.problems(plan(device="cuda", gpu_id=5), torch.device("cuda:5"))
    assert (problem.rule, problem.message) == ("PLN303", "cuda:5 is beyond the 2 cuda devices present (0..1)")
    assert problem.fix == "use an index below 2, or pass dry_run=True to trace the plan on the CPU"
    assert devices.problems(plan(device="cuda", gpu_id=1), torch.device("cuda:1")) == []


def test_planner_apply_without_an_accelerator_says_dry_run_true(tiny_pipelines, present):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_pipelines["sd"])
    with pytest.raises(planner.PlanError) as info:
        planner.apply(pipe, plan(device="cuda", gpu_id=None, sequence=("text_encoder", "unet", "vae")))
    assert "pass dry_run=True to trace the plan on the CPU" in str(info.value) and "--dry-run" not in str(info.value)
