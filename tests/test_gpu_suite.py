"""benchmarks/gpu_suite.py on the CPU: without CUDA it says so in one line and exits 0; its pure parts (which tests
it runs, pytest's summary, the per-kind table, the time model's predictions, the table and the JSON) on fake
measurements. The GPU run itself is never part of the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner import load_plan
from planner.blocknames import REST

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402

MB = 10 ** 6
SIZES = {"text_encoder": {REST: 50 * MB, **{f"text_model.encoder.layers.{i}": 20 * MB for i in range(4)}},
         "unet": {REST: 200 * MB, **{f"down_blocks.{i}": 300 * MB for i in range(3)},
                  **{f"up_blocks.{i}": 400 * MB for i in range(3)}},
         "vae": {REST: 10 * MB, "encoder.down_blocks.0": 30 * MB, "decoder.up_blocks.0": 60 * MB}}
BANDWIDTH = {"pinned": 20e9, "pageable": 10e9}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "plan.yaml"
    path.write_text("version: 1\ndevice: cuda\npolicy: budget\nbudget: 2GB\ngranularity: block\nsteps: 4\n"
                    "components: [text_encoder, unet, vae]\n", encoding="utf-8")
    return load_plan(path)


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--out",
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
    if "no CUDA device" not in done.stdout and "torch is not installed" not in done.stdout:
        pytest.skip("a CUDA device is here: the suite would measure")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_it_selects_every_test_behind_the_cuda_marker():
    ids = gpu_suite.gpu_tests()
    marked = sum(path.read_text(encoding="utf-8").count("\n@gpu\n") for path in (ROOT / "tests").glob("test_*.py"))
    assert len(ids) == marked > 0 and all(i.startswith("tests/test_") and "::test_" in i for i in ids)
    assert "tests/test_budget.py" in {i.split("::")[0] for i in ids}


def test_pytest_summary_counts():
    assert gpu_suite.pytest_summary("3 passed, 1 failed, 2 skipped, 1 error in 4.2s") == {
        "passed": 3, "failed": 1, "skipped": 2, "error": 1}
    assert gpu_suite.pytest_summary("") == {"passed": 0, "failed": 0, "skipped": 0, "error": 0}


def test_the_kind_table_takes_medians_per_kind_and_the_rest_as_what_the_blocks_leave():
    blocks = {"unet": {"down_blocks.0": [0.001, 0.003], "down_blocks.1": [0.002], "up_blocks.0": [0.004]}}
    table = gpu_suite.kind_table(blocks, {"unet": [0.010, 0.012, 0.011]},
                                 {"unet": (REST, "down_blocks.0", "down_blocks.1", "up_blocks.0")})
    assert table == pytest.approx({"unet/down_blocks": 2.0, "unet/up_blocks": 4.0, "unet/rest": 3.0})
    assert gpu_suite.kind_table({"vae": {"decoder.up_blocks.0": [0.005]}}, {}, {}) == {"vae/decoder.up_blocks": 5.0}


def test_predictions_feed_the_measured_kinds_to_the_time_model(plan):
    table = {"unet/down_blocks": 5.0, "unet/up_blocks": 8.0, "unet/rest": 1.0, "text_encoder/text_model.encoder"
             ".layers": 0.2}
    found = gpu_suite.predictions(plan, SIZES, 2 * 10 ** 9, 4, BANDWIDTH, table, none_seconds=1.5)
    assert set(found) == set(gpu_suite.CONFIGURATIONS)
    assert found["no offload"]["predicted_s"] == 1.5
    chain = sum(sum(b.values()) for b in SIZES.values())
    assert found["enable_model_cpu_offload"]["h2d_bytes"] == chain
    assert found["enable_model_cpu_offload"]["predicted_s"] == pytest.approx(1.5 + chain / 10e9)
    for name in ("ours, block by block", "group offloading (streams)"):
        p = found[name]
        assert p["predicted_s"] == pytest.approx(1.5 + p["exposed_s"])
        assert p["compute_s"] == pytest.approx(4 * (3 * 5 + 3 * 8 + 1) / 1000 + 4 * 0.2 / 1000)
        assert sum(c["exposed_s"] for c in p["exposed_by_component"].values()) == pytest.approx(p["exposed_s"])
    assert found["ours, block by block"]["h2d_bytes"] <= found["group offloading (streams)"]["h2d_bytes"]
    # the unet (3.1 GB) cannot be held whole within 2 GB: whole components do not fit
    assert "failed" in found["ours, whole components"]


def test_the_table_and_the_json_document(plan):
    predicted = gpu_suite.predictions(plan, SIZES, 2 * 10 ** 9, 4, BANDWIDTH, {"unet/down_blocks": 5.0}, 1.5)
    measured = {"no offload": {"seconds": 1.5, "peak_bytes": 4 << 30, "syncs": 3},
                "enable_model_cpu_offload": {"seconds": 2.0, "peak_bytes": 3 << 30, "syncs": 40},
                "ours, whole components": {"failed": "PlanError: PLN307"},
                "ours, block by block": {"seconds": 1.7, "peak_bytes": 2 << 30, "syncs": 12}}
    models = {"sdxl": {"steps": 4, "size": 512, "budget": "2GB", "weights_bytes": 1, "block_ms": {},
                       "measured": measured, "predicted": predicted, "note": "text encoders at full size"}}
    tests = {"tests": 7, "passed": 7, "failed": 0, "skipped": 0, "error": 0, "exit": 0, "timed_out": False,
             "seconds": 30.0, "tail": ""}
    result = gpu_suite.document("a GPU", True, tests, BANDWIDTH, models)
    assert json.loads(json.dumps(result)) == result
    assert set(result) == {"device", "quick", "tests", "bandwidth_bytes_per_s", "models"}
    text = gpu_suite.render(result)
    assert "GPU tests: 7 passed, 0 failed" in text and "pinned 20.00 GB/s, pageable 10.00 GB/s" in text
    rows = [line for line in text.splitlines() if line.startswith("sdxl 512px")]
    assert len(rows) == len(gpu_suite.CONFIGURATIONS)
    assert "1.500" in rows[0] and "PlanError: PLN307" in rows[2] and "not run" in rows[4]
    assert rows[3].split()[-6:-4] == ["1.700", f"{1.5 + predicted['ours, block by block']['exposed_s']:.3f}"]


def test_materialise_builds_on_meta_then_fills_every_parameter_keeping_buffers_and_ties():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    clip = gpu_suite.materialise(lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, vocab_size=50000)),
        torch.float16)
    assert all(p.device.type == "cpu" and p.dtype == torch.float16 for p in clip.parameters())
    assert not any(p.is_meta for p in clip.parameters()) and not any(b.is_meta for b in clip.buffers())
    ids = dict(clip.named_buffers())[next(n for n, _ in clip.named_buffers() if n.endswith("position_ids"))]
    assert torch.equal(ids, torch.arange(ids.shape[-1]).expand_as(ids))  # a buffer computed at build, kept
    t5 = gpu_suite.materialise(lambda: transformers.T5EncoderModel(transformers.T5Config(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100)), torch.bfloat16)
    assert t5.shared.weight is t5.encoder.embed_tokens.weight  # tied stays tied
    out = clip(torch.tensor([[1, 2, 3]])).last_hidden_state
    assert torch.isfinite(out.float()).all()
