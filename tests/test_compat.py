"""planner.executor.compat: the one place that reads diffusers' and accelerate's private attributes, and its
self-check, which names the attribute a new version moved (and stops `apply` before it touches a pipeline)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402
from accelerate.hooks import CpuOffload  # noqa: E402
from diffusers import DiffusionPipeline  # noqa: E402

import planner  # noqa: E402
from planner.executor import CompatError, compat  # noqa: E402

EXECUTOR = Path(compat.__file__).parent
# Private (or internal) diffusers and accelerate names: only compat.py may spell them.
PRIVATE = {compat.HF_HOOK, compat.OLD_FORWARD, compat.DIFFUSERS_HOOK, compat.ALL_HOOKS, compat.OFFLOAD_DEVICE,
           compat.OFFLOAD_GPU_ID, compat.EXCLUDE, compat.SEQUENCE, "_load_connected_pipes", "prev_module_hook",
           "_maybe_raise_error_if_group_offload_active", "_is_pipeline_device_mapped", "hf_device_map",
           "_accelerate_added_attributes", "_execution_device", "_reset_stateful_cache"}


@pytest.fixture(autouse=True)
def fresh_check():
    """The self-check is cached per process: each test sees its own libraries, and leaves the cache clean."""
    compat._self_check.cache_clear()
    yield
    compat._self_check.cache_clear()


def test_the_installed_diffusers_and_accelerate_hold_every_fact():
    assert compat.self_check() == []
    compat.require()


def test_only_compat_spells_a_private_diffusers_or_accelerate_attribute():
    found = []
    for path in sorted(EXECUTOR.glob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
            if name in PRIVATE:
                found.append(f"{path.name}:{node.lineno}: {name}")
    assert found == []


def _frees_nothing(self):
    return None


class _Moved:
    @property
    def _execution_device(self):
        return torch.device("cpu")  # reads no hook


def _prev_gone(self, execution_device=None, prev_module_hook=None):
    self.execution_device = execution_device


@pytest.mark.parametrize("move, named", [
    (lambda mp: mp.setattr(DiffusionPipeline, "maybe_free_model_hooks", _frees_nothing),
     "diffusers.DiffusionPipeline.maybe_free_model_hooks._all_hooks: is no longer read there"),
    (lambda mp: mp.delattr(DiffusionPipeline, "_exclude_from_cpu_offload"),
     "DiffusionPipeline._exclude_from_cpu_offload: is gone"),
    (lambda mp: mp.setattr(DiffusionPipeline, "_execution_device", _Moved._execution_device),
     "diffusers.DiffusionPipeline._execution_device._hf_hook: is no longer read there"),
    (lambda mp: mp.setattr(CpuOffload, "__init__", _prev_gone),
     "accelerate.hooks.CpuOffload.prev_module_hook: is gone"),
    (lambda mp: mp.setattr(compat, "add_hook_to_module", lambda module, hook: module.__dict__.update(_hook=hook)),
     "accelerate.hooks.add_hook_to_module._hf_hook: no longer puts the hook in the module's __dict__"),
], ids=["source", "class-attribute", "property", "constructor", "behaviour"])
def test_a_moved_attribute_is_named_with_the_versions(move, named, monkeypatch):
    import accelerate
    import diffusers

    move(monkeypatch)
    found = compat.self_check()
    assert any(line.startswith(named) for line in found), found
    assert all(f"(diffusers {diffusers.__version__}, accelerate {accelerate.__version__})" in line for line in found)
    with pytest.raises(CompatError, match="cannot run with the installed libraries"):
        compat.require()


def test_optional_attributes_of_newer_diffusers_may_be_missing(monkeypatch):
    monkeypatch.delattr(DiffusionPipeline, "_maybe_raise_error_if_group_offload_active", raising=False)
    monkeypatch.delattr(DiffusionPipeline, "_is_pipeline_device_mapped", raising=False)
    assert compat.self_check() == []


def test_apply_stops_before_touching_the_pipeline_and_the_cli_says_it_in_one_line(tiny_pipelines, tmp_path,
                                                                                   monkeypatch, capsys):
    from planner.cli import main

    pipe = DiffusionPipeline.from_pretrained(tiny_pipelines["sd"])
    before = {k: id(v) for k, v in pipe.__dict__.items()}
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [text_encoder, unet, vae]\n")
    monkeypatch.delattr(DiffusionPipeline, "_exclude_from_cpu_offload")
    with pytest.raises(CompatError, match="DiffusionPipeline._exclude_from_cpu_offload: is gone"):
        planner.apply(pipe, planner.load_plan(plan), dry_run=True)
    assert {k: id(v) for k, v in pipe.__dict__.items()} == before and not hasattr(pipe.unet, "_hf_hook")
    from planner.executor import source as sources

    monkeypatch.setattr(sources, "load_pipeline", lambda *args, **kwargs: pytest.fail("the weights were loaded"))
    capsys.readouterr()
    code = main(["apply", str(plan), "--source", str(tiny_pipelines["sd"]), "--dry-run", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("planner apply: error: offload-planner's executor cannot run")
    assert "_exclude_from_cpu_offload: is gone" in err and "Traceback" not in err
