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
