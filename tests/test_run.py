"""`planner apply` end to end: load, apply, generate, report; every failure one located line and exit 1."""

import json
import sys
from pathlib import Path

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


def test_no_accelerator_without_dry_run(tiny_pipelines, capsys, monkeypatch):
    from planner.executor import devices

    monkeypatch.setattr(devices, "count", lambda kind: 0)  # also on a machine that has a GPU
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


def test_failing_call_is_one_line(tiny_pipelines, tmp_path, capsys):
    plan = tmp_path / "cn.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [text_encoder, unet, vae]\n")
    code, _, err = run(capsys, "apply", plan, "--source", tiny_pipelines["controlnet"], "--dry-run")  # no --image
    assert code == 1 and err.startswith(f"{plan}: PLN305 the pipeline call failed: TypeError: image must be passed")
    assert "Traceback" not in err


def test_plan_without_source(tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [unet]\n")
    code, _, err = run(capsys, "apply", plan, "--dry-run")
    assert code == 1 and "PLN304 the plan names no pipeline to load" in err


# -- problems located where they were caused, in the caller's words ---------------------------------------------
@pytest.fixture
def no_cuda(monkeypatch):
    """This machine, as far as the device check knows, has `present` cuda devices (0 unless set)."""
    from planner.executor import devices

    state = {"present": 0}
    monkeypatch.setattr(devices, "count", lambda kind: state["present"] if kind == "cuda" else 0)
    return state


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if any diffusers pipeline reads its weights."""
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(refuse))


def test_source_problems_are_located_at_the_flag_or_the_plan_key(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "apply", EXAMPLE, "--dry-run", "--source", tmp_path / "empty")
    assert code == 1 and err.startswith(f"--source: PLN304 '{tmp_path / 'empty'}' is not a diffusers pipeline "
                                        "folder: it has no model_index.json: point --source at a folder")
    plan = tmp_path / "p.yaml"
    plan.write_text(f"version: 1\npipeline: {{source: {tmp_path / 'empty'}}}\ndevice: cuda\ncomponents: [unet]\n")
    code, _, err = run(capsys, "apply", plan, "--dry-run")
    assert code == 1 and err.startswith(f"{plan}:2:12: PLN304 ") and "point pipeline.source at" in err


def test_device_problems_are_located_at_the_flag_in_the_clis_words(tiny_pipelines, no_cuda, no_load, capsys):
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--device", "cuda:1")
    assert code == 1
    assert err.startswith("--device: PLN303 no cuda device found: run with --dry-run to trace the plan on the CPU")
    no_cuda["present"] = 1
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--gpu-id", 3)
    assert code == 1 and err.startswith("--gpu-id: PLN303 cuda:3 is beyond the 1 cuda device present (0..0): use an "
                                        "index below 1, or run with --dry-run to trace the plan on the CPU")
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--device", "cuda:2")
    assert code == 1 and err.startswith("--device: PLN303 cuda:2 is beyond")
    assert "dry_run=True" not in err


def test_device_is_checked_before_cut_short_weights_are_read(tiny_pipelines, tmp_path, no_cuda, capsys):
    import shutil

    folder = tmp_path / "cut-short"
    shutil.copytree(tiny_pipelines["sd"], folder)
    weights = next((folder / "unet").glob("*.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)  # an interrupted download
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", folder)
    assert code == 1 and "PLN303 no cuda device found" in err and "PLN304" not in err
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", folder, "--dry-run")
    assert code == 1 and f"--source: PLN304 cannot load the pipeline '{folder}'" in err
    assert err.count("PLN304") == 1 and "Traceback" not in err


def test_a_class_that_does_not_match_the_folder_is_refused_before_loading(tiny_pipelines, tmp_path, no_load,
                                                                            capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\npipeline: {class: StableDiffusionXLPipeline}\ndevice: cuda\n"
                    "components: [text_encoder, unet, vae]\n")
    code, _, err = run(capsys, "apply", plan, "--source", tiny_pipelines["sd"], "--dry-run")
    assert code == 1
    assert err.startswith(f"{plan}:2:12: PLN304 'StableDiffusionXLPipeline' does not match the folder "
                          f"'{tiny_pipelines['sd']}', which holds a StableDiffusionPipeline (its model_index.json): "
                          "only StableDiffusionXLPipeline takes text_encoder_2, tokenizer_2")
    assert "write class: StableDiffusionPipeline, or leave class out" in err
    plan.write_text("version: 1\npipeline: {class: StableDiffusionPipeline}\ndevice: cuda\n"
                    "components: [text_encoder, unet, vae]\n")
    code, _, err = run(capsys, "apply", plan, "--source", tiny_pipelines["controlnet"], "--dry-run")
    assert code == 1 and "only StableDiffusionControlNetPipeline takes controlnet" in err  # its weights dropped


def test_a_class_taking_the_same_components_loads_from_the_folder(tiny_pipelines, tmp_path, capsys):
    """diffusers' own habit: StableDiffusionImg2ImgPipeline.from_pretrained on a StableDiffusionPipeline folder."""
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\npipeline: {class: StableDiffusionImg2ImgPipeline}\ndevice: cuda\n"
                    "components: [text_encoder, unet, vae]\n")
    code, out, err = run(capsys, "apply", plan, "--source", tiny_pipelines["sd"], "--dry-run",
                         "--image", tmp_path / "init.png")
    assert code == 0, err
    assert "text_encoder->unet->vae" in out


# -- progress, Ctrl-C ------------------------------------------------------------------------------------------
def test_progress_bars_show_on_a_terminal_only(tiny_pipelines, monkeypatch, capsys):
    argv = ("apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run")
    code, _, err = run(capsys, *argv)
    assert code == 0 and "it/s" not in err and "Loading pipeline components" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, *argv)
    assert code == 0 and "Loading pipeline components" in err and "2/2" in err  # loading, then the 2 steps
    code, _, err = run(capsys, *argv, "--quiet")
    assert code == 0 and "it/s" not in err and "Loading pipeline components" not in err


def test_progress_settings_come_back_after_the_run(tiny_pipelines, monkeypatch, capsys):
    import diffusers

    before = diffusers.utils.logging.is_progress_bar_enabled(), diffusers.utils.logging.get_verbosity()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run")
    after = diffusers.utils.logging.is_progress_bar_enabled(), diffusers.utils.logging.get_verbosity()
    assert after == before


def test_ctrl_c_during_the_load_exits_130(tiny_pipelines, monkeypatch, capsys):
    import diffusers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(interrupted))
    code, out, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run")
    assert (code, out, err) == (130, "", "planner: interrupted\n")


def test_ctrl_c_during_a_call_exits_130_and_removes_the_plan(tiny_pipelines, monkeypatch, capsys):
    from planner.executor import applied as applied_module
    from planner.executor import run as executor_run

    handles = []
    real_apply, real_kwargs = applied_module.apply, executor_run._call_kwargs

    def apply(*args, **kwargs):
        handles.append(real_apply(*args, **kwargs))
        return handles[-1]

    def interrupt_at_step(pipe, step, timestep, callback_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(applied_module, "apply", apply)
    monkeypatch.setattr(executor_run, "_call_kwargs",
                        lambda pipe, request: {**real_kwargs(pipe, request), "callback_on_step_end": interrupt_at_step})
    code, out, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run")
    assert (code, out, err) == (130, "", "planner: interrupted\n")
    assert len(handles) == 1 and not handles[0].active and not getattr(handles[0].pipe, "_all_hooks", None)


def test_a_failed_write_at_the_end_is_one_line(tiny_pipelines, tmp_path, monkeypatch, capsys):
    from PIL import Image

    real_save = Image.Image.save

    def disk_full(self, target, *args, **kwargs):
        if not hasattr(target, "write"):  # the checks' trial save to memory still works
            raise OSError(28, "No space left on device")
        return real_save(self, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full)
    code, _, err = run(capsys, "apply", EXAMPLE, "--source", tiny_pipelines["sd"], "--dry-run",
                       "--out", tmp_path / "image.png")
    assert code == 1 and err == "planner apply: error: [Errno 28] No space left on device\n"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch being loaded")
@pytest.mark.parametrize("after", [0.0, 8.0])  # seconds after torch starts loading: importing; loading, generating
def test_a_real_ctrl_c_exits_130_with_one_line(tiny_pipelines, after):
    import os
    import signal
    import subprocess
    import time

    exe = ROOT / ".venv" / "bin" / "planner"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "planner.cli"]
    proc = subprocess.Popen(cmd + ["apply", str(EXAMPLE), "--source", str(tiny_pipelines["sd"]), "--dry-run",
                                   "--calls", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.monotonic() + 60
    while "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)  # torch is imported by main(), after every check: Ctrl-C lands inside main
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # the fault handler prints where it was stuck
        out, err = proc.communicate()
        pytest.fail(f"still running 60 s after Ctrl-C:\n{err[-4000:]}")
    assert (proc.returncode, out, err) == (130, "", "planner: interrupted\n")


def test_a_ctrl_c_lost_in_a_finalizer_stops_the_calls_at_the_next_one(capsys):
    """Ctrl-C landing while a `__del__` runs is swallowed by Python ("Exception ignored"): the run must still stop,
    at the next call, with no traceback printed."""
    from planner.executor import run as executor_run

    class Dies:
        def __del__(self):
            raise KeyboardInterrupt

    calls = []

    class Applied:
        pipe = None
        plan = None

        def __call__(self, **kwargs):
            calls.append(kwargs)
            if len(calls) == 2:
                Dies()  # the interrupt lands in a finalizer during the second call
            return type("Output", (), {"images": []})()

    request = executor_run.Request(calls=5)
    with pytest.raises(KeyboardInterrupt):
        executor_run._generate(Applied(), request)
    assert len(calls) == 2 and "Exception ignored" not in capsys.readouterr().err
