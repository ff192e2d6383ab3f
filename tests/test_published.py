"""benchmarks/published.py: the plans library sized from published configs. Every built model matches the published
figures it cites, every library plan is sized or says why not, the sizes agree with `planner inspect` on a
real-sized folder of the same tensors, and the committed benchmarks/published_sizes.json is a fresh computation.

Building every model on the meta device takes about 20 s here; the builds are cached, so the file pays it once."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import headers
import pytest

import planner
from planner.folder import reader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import published  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import library_table  # noqa: E402

CHECKS = [(key, i) for key, model in published.MODELS.items() for i in range(len(model.checks))]
SIZED = sorted(published.PLANS)


def _plan(stem: str):
    return planner.load_plan(published.PLANS_DIR / f"{stem}.yaml")


@pytest.mark.parametrize(("key", "index"), CHECKS, ids=[f"{k}-{i}" for k, i in CHECKS])
def test_each_built_model_matches_the_figure_it_cites(key, index):
    result = published.verify(key, published.MODELS[key].checks[index])
    assert result.ok, result.detail


def test_the_checks_cover_the_benchmark_models_and_every_kind():
    """The models the transfer benchmarks lean on (SD 1.5, SDXL, SD3 medium, FLUX.1-dev, Wan 2.1 14B) all have a
    published figure for their denoiser, and the four kinds of figure are in use."""
    for key in ("sd15-unet", "sdxl-unet", "sd3-medium-transformer", "flux.1-dev-transformer",
                "wan2.1-t2v-14b-transformer", "t5-v1.1-xxl", "umt5-xxl"):
        assert published.MODELS[key].checks, key
    assert {c.kind for m in published.MODELS.values() for c in m.checks} == {"file", "index", "tensors", "parameters"}


def test_a_figure_the_model_does_not_match_fails():
    """The checker is not vacuous: one tensor more or less than the file holds, a wrong count, a header too small."""
    file_check = published.MODELS["sd15-unet"].checks[0]
    stored = published.tensors("sd15-unet")
    biggest = max(t.numel for t in stored) * 2
    assert not published.verify("sd15-unet", replace(file_check, value=file_check.value + biggest)).ok
    assert not published.verify("sd15-unet", replace(file_check, value=file_check.value - biggest)).ok
    tensor_bytes = published.verify("sd15-unet", file_check).measured
    assert not published.verify("sd15-unet", replace(file_check, value=tensor_bytes + 8)).ok
    count = published.MODELS["sdxl-unet"].checks[1]
    assert not published.verify("sdxl-unet", replace(count, value=count.value + 1)).ok


def test_every_model_and_figure_names_where_it_is_published_and_how_it_was_read():
    for key, model in published.MODELS.items():
        assert model.source.where and model.source.obtained, key
        assert model.checks or "no published figure" in model.note, f"{key}: say that no figure was found"
        for c in model.checks:
            assert c.source.where and c.source.obtained, key
            assert (c.stored is not None) == (c.kind in ("file", "index")), key


def test_every_library_plan_is_sized_or_unknown_with_a_reason():
    stems = set(published.library_stems())
    assert set(published.PLANS) | set(published.UNKNOWN_PLANS) == stems
    assert not set(published.PLANS) & set(published.UNKNOWN_PLANS)
    assert all(reason.strip() for reason in published.UNKNOWN_PLANS.values())
    assert len(published.PLANS) >= 25


@pytest.mark.parametrize("stem", SIZED)
def test_each_sized_plan_accounts_for_every_component_of_its_sequence(stem):
    """A plan's components are sized, absent from the repository, or unknown with a reason; nothing else is named,
    and the models outside the plan are outside its sequence."""
    models, plan = published.PLANS[stem], _plan(stem)
    named = set(models.components) | set(models.absent) | (set(models.unknown) & set(plan.sequence))
    assert named == set(plan.sequence), stem
    assert not set(models.components) & set(models.absent)
    assert all(key in published.MODELS for key in models.components.values())
    outside = set(models.others) | (set(models.unknown) - set(plan.sequence))
    assert not outside & set(plan.sequence)
    assert outside <= set(plan.exclude) | set(plan.own_hook)


def test_a_tied_t5_embedding_counts_once():
    names = [t.name for t in published.tensors("t5-v1.1-xxl")]
    assert "shared.weight" in names and "encoder.embed_tokens.weight" not in names


@pytest.fixture(scope="module")
def fresh():
    return published.compute_all()


def test_the_committed_json_is_a_fresh_computation(fresh):
    committed = json.loads(published.JSON_PATH.read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(fresh)), "rerun: .venv/bin/python scripts/library_table.py"


def test_blocks_sum_to_their_component_at_the_plans_dtype(fresh):
    for stem, entry in fresh.items():
        assert entry["dtype"] == _plan(stem).torch_dtype
        for name, total in entry["components"].items():
            assert sum(entry["blocks"][name].values()) == total, (stem, name)


@pytest.mark.parametrize(("stem", "variant", "stored"), [("sdxl-base", "fp16", "float16"),
                                                         ("flux.1-dev", None, "bfloat16")])
def test_sizes_agree_with_planner_inspect_on_a_real_sized_folder(tmp_path, stem, variant, stored):
    """Sparse files whose headers hold the built tensors, read by planner.folder like a downloaded repo: the same
    bytes and the same blocks, so the table and `planner inspect` cannot disagree."""
    models = published.PLANS[stem].components
    index = {name: (published.MODELS[key].library, published.MODELS[key].cls) for name, key in models.items()}
    headers.write_index(tmp_path, _plan(stem).pipeline_class, index)
    for name, key in models.items():
        base = "model" if published.MODELS[key].library == "transformers" else "diffusion_pytorch_model"
        spec = [(t.name, headers.SAFETENSORS_DTYPES[stored] if t.dtype in ("F32", "F16", "BF16") else t.dtype,
                 t.shape) for t in published.tensors(key)]
        headers.write_file(tmp_path / name / (f"{base}.{variant}.safetensors" if variant else f"{base}.safetensors"),
                           spec)
    read, problems = reader.read(tmp_path, variant=variant, torch_dtype=published.plan_dtype(stem))
    assert problems == [] and read is not None
    expected = published.plan_sizes(stem)
    assert read.loaded_bytes() == expected["components"]
    assert {n: c.blocks(read.torch_dtype) for n, c in read.components.items()} == expected["blocks"]


def test_the_table_has_a_row_per_plan_with_its_total(fresh):
    text = library_table.table(fresh)
    assert "GB (10^9 bytes, two decimals)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "](plans/" in line]
    assert len(rows) == len(published.library_stems())
    sdxl = next(r for r in rows if "(plans/sdxl-base.yaml)" in r)
    assert "| 6.94 |" in sdxl and "unet 5.13" in sdxl  # 2 * 2,567,463,684 B and the three others
    assert "unknown:" in next(r for r in rows if "(plans/flux.2-dev.yaml)" in r)
