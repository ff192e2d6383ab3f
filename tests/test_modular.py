"""`planner.offload_strategy` driving a real diffusers ComponentsManager (enable_auto_cpu_offload) over tiny
components on a CPU-only machine: the components report the device they were moved to (the weights stay on the
CPU; `.to()` and `.device` are all the manager's hooks read), and the free-memory query enable_auto_cpu_offload
makes is patched. Its evictions equal `planner simulate`'s ours (`components.optimal`) for the same uses, and the
resident bytes never exceed the budget."""

from __future__ import annotations

import pytest
import torch

import planner
from planner.budget import components as schedules
from planner.validate import load_text

diffusers = pytest.importorskip("diffusers")
from diffusers.modular_pipelines import ComponentsManager  # noqa: E402
from diffusers.modular_pipelines import components_manager as cm_module  # noqa: E402

CUDA = torch.device("cuda:0")
SIZES = {"text_encoder": 3000, "text_encoder_2": 2000, "transformer": 5000, "vae": 1200}  # bytes (float32: /4)
USES = ["text_encoder", "text_encoder_2", "transformer", "vae"]


class Tiny(torch.nn.Module):
    """A model component whose `.to(device)` only records where it would be (a CPU machine has no cuda:0)."""

    def __init__(self, nbytes: int, log: list, name: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(nbytes // 4))
        self.where, self.log, self.name = torch.device("cpu"), log, name

    @property
    def device(self) -> torch.device:
        return self.where

    def to(self, *args, **kwargs):
        self.where = torch.device(args[0] if args else kwargs["device"])
        self.log.append((self.name, str(self.where)))
        return self

    def get_memory_footprint(self) -> int:
        return self.weight.numel() * 4

    def forward(self, step: int = 0):
        return step


@pytest.fixture
def manager(monkeypatch):
    # enable_auto_cpu_offload asks the device for its free memory once, and fails without one: say 80 GB free
    monkeypatch.setattr(cm_module.TorchDeviceBackend, "mem_get_info", lambda self: (80 << 30, 80 << 30))
    log: list = []
    manager = ComponentsManager()
    models = {name: Tiny(size, log, name) for name, size in SIZES.items()}
    for name, model in models.items():
        manager.add(name, model)
    yield manager, models, log
    manager.disable_auto_cpu_offload()


def run_calls(manager, models, strategy, calls: int, uses=USES):
    manager.enable_auto_cpu_offload("cuda", offload_strategy=strategy)
    peak = 0
    for _ in range(calls):
        for name in uses:
            models[name](1)
            on_device = sum(SIZES[n] for n, m in models.items() if m.device == CUDA)
            peak = max(peak, on_device)
    return peak


def planned_evictions(budget: int, calls: int, uses=USES):
    schedule = schedules.optimal(uses, SIZES, budget, calls)
    return [(step.component, set(step.evicted)) for step in schedule.steps if step.loaded], schedule


@pytest.mark.parametrize("budget", [5000, 7000, 8500, 11200])
def test_with_a_plan_the_evictions_are_simulates_ours_and_stay_within_the_budget(manager, budget):
    manager, models, log = manager
    plan = load_text("version: 1\ndevice: cuda\npolicy: budget\nbudget: %d\n"
                     "components: [text_encoder, text_encoder_2, transformer, vae]\n" % budget)
    calls = 6
    strategy = planner.offload_strategy(plan, manager, calls=calls)  # planned for the calls made
    peak = run_calls(manager, models, strategy, calls)
    expected, _ = planned_evictions(budget, calls)
    got = [(incoming, set(evicted)) for incoming, evicted in strategy.follower.evictions]
    assert got == expected and strategy.follower.planned == len(got)
    assert peak <= budget
    loads = sum(1 for _, where in log if where == "cuda:0")
    assert loads == len(got)  # the manager loaded exactly when it asked the strategy


def test_past_the_planned_calls_it_keeps_within_the_budget(manager):
    manager, models, log = manager
    strategy = planner.offload_strategy(7000, manager, uses=USES)  # planned for HORIZON (4) calls
    peak = run_calls(manager, models, strategy, 9)
    assert peak <= 7000
    got = [(incoming, set(evicted)) for incoming, evicted in strategy.follower.evictions]
    expected, _ = planned_evictions(7000, 4)
    assert got[:len(expected)] == expected
    # past them: the planned call that starts from the residency there is, else the furthest next use
    assert strategy.follower.planned >= len(expected)


def test_a_budget_alone_learns_the_order_from_the_first_call_and_never_exceeds_it(manager):
    manager, models, log = manager
    strategy = planner.offload_strategy("7000B")
    peak = run_calls(manager, models, strategy, 5)
    assert strategy.follower.order == tuple(USES) and peak <= 7000
    assert strategy.follower.planned > 0  # once learned, the later calls follow the schedule


def test_an_unpredicted_component_falls_back_to_the_furthest_next_use(manager):
    manager, models, log = manager
    strategy = planner.offload_strategy(7000, uses=["text_encoder", "transformer", "vae"])
    peak = run_calls(manager, models, strategy, 3)
    assert peak <= 7000
    incoming = [name for name, _ in strategy.follower.evictions]
    assert "text_encoder_2" in incoming  # it ran though the order left it out, and the budget still held


def test_the_strategy_is_called_as_custom_offload_hook_calls_it(manager):
    """The call diffusers makes, by keywords, with the resident hooks: what it returns are those hooks."""
    manager, models, _ = manager
    strategy = planner.offload_strategy(6000, uses=USES, sizes=SIZES)
    manager.enable_auto_cpu_offload("cuda", offload_strategy=strategy)
    hooks = {planner.executor.modular.component_name(h.model_id, h.model): h for h in manager.model_hooks}
    models["transformer"].to(CUDA)
    chosen = strategy(hooks=[hooks["transformer"]], model_id=hooks["vae"].model_id, model=models["vae"],
                      execution_device=CUDA)
    assert chosen == [hooks["transformer"]]  # 5000 + 1200 > 6000
    assert strategy(hooks=[], model_id=hooks["vae"].model_id, model=models["vae"], execution_device=CUDA) == []
