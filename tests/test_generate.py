"""`planner apply` end to end: load, apply, generate, report; every failure one located line and exit 1."""

import json

import pytest
from conftest import ROOT

from planner.cli import main

pytest.importorskip("diffusers")
EXAMPLE = ROOT / "plans" / "examples" / "tiny-sd.yaml"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_writes_an_image_a_trace_and_a_summary(tiny_pipelines, tmp_path, capsys):
    from PIL import Image

    code, out, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run", "--calls", 2,
                         "--out", tmp_path / "img.png", "--trace-json", tmp_path / "trace.json", "--steps", 2)
    assert code == 0, err
    assert Image.open(tmp_path / "img.png").size == (64, 64)
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert [(e["call"], e["event"], e["component"]) for e in trace["events"]][:6] == [
        (1, "load", "text_encoder"), (1, "offload", "text_encoder"), (1, "load", "unet"),
        (1, "offload", "unet"), (1, "load", "vae"), (1, "offload", "vae")]
    assert {e["device"] for e in trace["events"]} == {"cuda:0"}
    assert all(e["bytes"] == trace["components"][e["component"]] for e in trace["events"])
    assert [c["call"] for c in trace["calls"]] == [1, 2] and all(c["seconds"] > 0 for c in trace["calls"])
    assert out.splitlines()[0].startswith("plan ") and "text_encoder->unet->vae on cuda:0 (dry run" in out
    assert "skipped (None in the pipeline, as diffusers does): safety_checker" in out
    assert "peak resident" in out and "Traceback" not in out + err


def test_controlnet_pipeline_with_an_input_image(tiny_pipelines, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "control.png")
    plan = tmp_path / "cn.yaml"
    plan.write_text("version: 1\npipeline: {class: StableDiffusionControlNetPipeline}\ndevice: cuda\n"
                    "components: [text_encoder, unet, vae]\n")
    code, out, err = run(capsys, "apply", plan, "--source", tiny_pipelines["controlnet"], "--dry-run",
                         "--image", tmp_path / "control.png")
    assert code == 0, err
    assert "controlnet (own hook)" in out


def test_device_override_goes_through_the_rules(tiny_pipelines, capsys):
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--device", "cpu")
    assert code == 1
    assert err.startswith("--device: PLN202 device 'cpu' cannot be an offload target")


def test_gpu_id_override_with_indexed_device(tiny_pipelines, capsys):
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--device", "cuda:1",
                       "--gpu-id", "0")
    assert code == 1 and "PLN205" in err


def test_no_accelerator_without_dry_run(tiny_pipelines, capsys):
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"])
    assert code == 1
    assert "PLN303 no cuda device found: run with --dry-run to trace the plan on the CPU" in err


def test_missing_folder_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tmp_path / "nowhere", "--dry-run")
    assert code == 1 and "PLN304 no pipeline folder at" in err and "Traceback" not in err


def test_unknown_class_suggests_one(tiny_pipelines, tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\npipeline: {class: StableDifusionPipeline}\ndevice: cuda\ncomponents: [unet]\n")
    code, _, err = run(capsys, "apply", plan, "--source", tiny_pipelines["sd"], "--dry-run")
    assert code == 1
    assert "p.yaml:2:12: PLN304 'StableDifusionPipeline' is not a diffusers pipeline class" in err
    assert "did you mean 'StableDiffusionPipeline'?" in err


def test_hub_id_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\npipeline: {source: no-such-org/no-such-model}\ndevice: cuda\ncomponents: [unet]\n")
    code, _, err = run(capsys, "apply", plan, "--dry-run")
    assert code == 1
    assert "PLN304 cannot load the pipeline 'no-such-org/no-such-model' (HF_HUB_OFFLINE is set)" in err
    assert "Traceback" not in err


def test_plan_pipeline_mismatch_is_located(tiny_pipelines, tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents:\n  text_encoder: {}\n  transformer: {}\n")
    code, _, err = run(capsys, "apply", plan, "--source", tiny_pipelines["sd"], "--dry-run")
    assert code == 1
    assert "p.yaml:5:3: PLN301 StableDiffusionPipeline has no component 'transformer'" in err


def test_failing_call_is_one_line(tiny_pipelines, capsys):
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run", "--image", EXAMPLE)
    assert code == 1 and "PLN305 the pipeline call failed: UnidentifiedImageError" in err
    assert "Traceback" not in err


def test_plan_without_source(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [unet]\n")
    code, _, err = run(capsys, "apply", plan, "--dry-run")
    assert code == 1 and "PLN304 the plan names no pipeline to load" in err
