"""planner.folder: model folders read from their safetensors headers alone, exact to the byte, and every damaged
folder a located PLN4xx problem instead of an exception."""

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import headers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import blocknames
from planner.folder import check as folder_check
from planner.folder import files, local, reader, safetensors, sizes
from planner.folder import pipeline as folder_pipeline
from planner.folder import text as folder_text

ROOT = Path(__file__).parent.parent
VAE = ("diffusers", "AutoencoderKL")
TEXT = ("transformers", "CLIPTextModel")
SMALL = [("conv.weight", "F32", (4, 3, 3, 3)), ("conv.bias", "F32", (4,)), ("down_blocks.0.w", "F16", (8, 4)),
         ("down_blocks.1.w", "F16", (8, 4)), ("steps", "I64", (3,))]
SMALL_BYTES = 432 + 16 + 64 + 64 + 24


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory):
    return headers.sdxl(tmp_path_factory.mktemp("sizes") / "sdxl")


@pytest.fixture(scope="session")
def flux_folder(tmp_path_factory):
    return headers.flux(tmp_path_factory.mktemp("sizes") / "flux")


def small_pipeline(root: Path, **components) -> Path:
    """A pipeline folder whose components (name=(library, class)) each hold SMALL in one file."""
    headers.write_index(root, "StableDiffusionPipeline", components)
    for name, (library, _) in components.items():
        if library is not None:
            base = "model" if library == "transformers" else "diffusion_pytorch_model"
            headers.write_file(root / name / f"{base}.safetensors", SMALL)
    return root


def only(problems, rule):
    assert [p.rule for p in problems] == [rule], problems
    return problems[0]


# --- real-sized folders: SDXL base (fp16 variant) and FLUX.1-dev (bf16, sharded) ------------------------------


def test_sdxl_fp16_variant_sizes_are_exact_to_the_byte(sdxl_folder):
    found, problems = reader.read(sdxl_folder, variant="fp16")
    assert problems == []
    assert found.class_name == "StableDiffusionXLPipeline"
    assert list(found.components) == ["text_encoder", "text_encoder_2", "unet", "vae"]
    models = headers.sdxl_models()
    for name, comp in found.components.items():
        assert comp.bytes == 2 * headers.PARAMS[f"sdxl.{name}"] == headers.module_bytes(models[name], "float16")
        assert (comp.dtype, comp.variant, comp.dtypes) == ("F16", "fp16", {"F16": comp.bytes})
    assert found.components["unet"].bytes == 5_134_927_368
    assert found.components["unet"].files == ("unet/diffusion_pytorch_model.fp16.safetensors",)
    assert found.components["text_encoder_2"].files == ("text_encoder_2/model.fp16.safetensors",)
    assert found.absent == ("feature_extractor", "image_encoder")
    assert dict(found.others) == {"scheduler": ("diffusers", "EulerDiscreteScheduler"),
                                  "tokenizer": ("transformers", "CLIPTokenizer"),
                                  "tokenizer_2": ("transformers", "CLIPTokenizer")}


def test_sdxl_without_a_variant_reads_the_float32_files(sdxl_folder):
    found, problems = reader.read(sdxl_folder)
    assert problems == []
    for name, comp in found.components.items():
        assert (comp.bytes, comp.dtype, comp.variant) == (4 * headers.PARAMS[f"sdxl.{name}"], "F32", None)
    assert found.components["vae"].files == ("vae/diffusion_pytorch_model.safetensors",)


def test_sdxl_unet_blocks_are_the_units_a_budget_streams_and_match_the_real_submodules(sdxl_folder):
    unet = reader.read(sdxl_folder, variant="fp16")[0].components["unet"]
    blocks = unet.blocks("float16")
    assert list(blocks) == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0",
                            "up_blocks.1", "up_blocks.2", "rest"]
    model = headers.sdxl_models()["unet"]
    for i in range(3):
        assert blocks[f"down_blocks.{i}"] == headers.module_bytes(model.down_blocks[i], "float16")
        assert blocks[f"up_blocks.{i}"] == headers.module_bytes(model.up_blocks[i], "float16")
    assert blocks["mid_block"] == headers.module_bytes(model.mid_block, "float16")
    assert sum(blocks.values()) == unet.bytes


def test_text_encoder_blocks_are_its_layers(sdxl_folder):
    found = reader.read(sdxl_folder, variant="fp16")[0]
    for name, prefix, layers in (("text_encoder", "", 12), ("text_encoder_2", "text_model.", 32)):
        blocks = found.components[name].blocks("float16")
        assert list(blocks) == [f"{prefix}encoder.layers.{i}" for i in range(layers)] + ["rest"]
        assert sum(blocks.values()) == found.components[name].bytes


def test_flux_sharded_bf16_sizes_are_exact_and_the_tied_t5_embedding_counts_once(flux_folder):
    found, problems = reader.read(flux_folder, torch_dtype="bfloat16")
    assert problems == []
    transformer, t5 = found.components["transformer"], found.components["text_encoder_2"]
    assert transformer.bytes == 2 * headers.PARAMS["flux.transformer"] == 23_802_816_640
    assert t5.bytes == 2 * headers.PARAMS["flux.text_encoder_2"] == 9_524_621_312
    models = headers.flux_models()
    for name, comp in found.components.items():
        assert comp.bytes == comp.bytes_at("bfloat16") == headers.module_bytes(models[name], "bfloat16")
        assert comp.dtype == "BF16"
    assert transformer.files == ("transformer/diffusion_pytorch_model.safetensors.index.json",
                                 *(f"transformer/diffusion_pytorch_model-0000{i}-of-00003.safetensors"
                                   for i in (1, 2, 3)))
    assert t5.files == ("text_encoder_2/model.safetensors.index.json",
                        "text_encoder_2/model-00001-of-00002.safetensors",
                        "text_encoder_2/model-00002-of-00002.safetensors")
    names = {t.name for t in t5.tensors}
    assert "shared.weight" in names and "encoder.embed_tokens.weight" not in names


def test_flux_blocks_are_the_double_and_single_stream_blocks(flux_folder):
    found = reader.read(flux_folder, torch_dtype="bfloat16")[0]
    transformer = found.components["transformer"]
    blocks = transformer.blocks("bfloat16")
    assert list(blocks) == ([f"single_transformer_blocks.{i}" for i in range(38)]
                            + [f"transformer_blocks.{i}" for i in range(19)] + ["rest"])
    model = headers.flux_models()["transformer"]
    assert blocks["transformer_blocks.7"] == headers.module_bytes(model.transformer_blocks[7], "bfloat16")
    assert blocks["single_transformer_blocks.30"] == headers.module_bytes(model.single_transformer_blocks[30],
                                                                          "bfloat16")
    assert sum(blocks.values()) == transformer.bytes
    t5_blocks = found.components["text_encoder_2"].blocks("bfloat16")
    assert list(t5_blocks) == [f"encoder.block.{i}" for i in range(24)] + ["rest"]
    assert t5_blocks["rest"] == 2 * (32128 * 4096 + 4096)  # shared.weight and the final layer norm


def test_t5_keeps_wo_in_float32_at_float16_only(flux_folder):
    t5 = reader.read(flux_folder)[0].components["text_encoder_2"]
    wo = 24 * 4096 * 10240
    assert t5.bytes_at("float16") == t5.bytes + 2 * wo
    assert t5.bytes_at("bfloat16") == t5.bytes
    assert t5.bytes_at("float32") == 2 * t5.bytes
    assert t5.bytes_at(None) == t5.bytes  # transformers' "auto": the stored bfloat16
    assert sum(t5.blocks("float16").values()) == t5.bytes_at("float16")


@pytest.mark.parametrize("dtype", [None, "float16", "bfloat16"])
def test_t5_sizes_equal_what_transformers_loads_with_wo_kept_in_float32(tmp_path, dtype):
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, vocab_size=50,
                      feed_forward_proj="gated-gelu")
    headers.write_index(tmp_path / "p", "StableDiffusion3Pipeline", {"text_encoder_3": ("transformers",
                                                                                         "T5EncoderModel")})
    T5EncoderModel(config).half().save_pretrained(tmp_path / "p" / "text_encoder_3")
    comp = reader.read(tmp_path / "p")[0].components["text_encoder_3"]
    assert "encoder.embed_tokens.weight" not in {t.name for t in comp.tensors}  # tied: stored once
    loaded = T5EncoderModel.from_pretrained(tmp_path / "p" / "text_encoder_3",
                                            **({"dtype": getattr(torch, dtype)} if dtype else {}))
    assert comp.bytes_at(dtype) == loaded_bytes(loaded)
    assert (comp.bytes_at(dtype) > comp.bytes) == (dtype != "bfloat16")  # wo stays float32 unless bfloat16


def test_keep_in_fp32_table_matches_the_installed_libraries():
    import diffusers
    import transformers

    for class_name, (modules, dtypes) in sizes.KEEP_IN_FP32.items():
        cls = getattr(transformers, class_name, None) or getattr(diffusers, class_name)
        assert tuple(cls._keep_in_fp32_modules) == modules, class_name
        if issubclass(cls, transformers.PreTrainedModel):  # transformers: float16 only, unless "strict"
            assert not cls._keep_in_fp32_modules_strict and dtypes == ("float16",)
        else:
            assert dtypes == tuple(sizes.TORCH_DTYPES)


def test_torch_dtype_casts_floating_tensors_and_keeps_integers(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE, text_encoder=TEXT)
    vae, text = (reader.read(root)[0].components[n] for n in ("vae", "text_encoder"))
    floats32, floats16 = 432 + 16, 64 + 64
    assert vae.bytes == SMALL_BYTES and vae.dtypes == {"F32": floats32, "F16": floats16, "I64": 24}
    assert vae.bytes_at("float16") == (floats32 // 2) + floats16 + 24
    assert vae.bytes_at("float64") == 2 * floats32 + 4 * floats16 + 24
    # Without a torch_dtype diffusers loads in float32, transformers as stored.
    assert (vae.load_dtype(None), vae.bytes_at(None)) == ("float32", floats32 + 2 * floats16 + 24)
    assert (text.load_dtype(None), text.bytes_at(None)) == (None, SMALL_BYTES)
    with pytest.raises(ValueError, match="unknown torch_dtype"):
        reader.read(root, torch_dtype="half")


def test_to_json_has_the_inspect_shape(flux_folder):
    found = reader.read(flux_folder, torch_dtype="float16")[0]
    doc = json.loads(json.dumps(found.to_json()))
    assert (doc["class"], doc["source"], doc["dtype"], doc["variant"]) == ("FluxPipeline", str(flux_folder),
                                                                          "float16", None)
    unet = doc["components"]["transformer"]
    assert set(unet) == {"class", "library", "variant", "files", "bytes", "dtype", "dtypes", "load_dtype",
                         "bytes_at_dtype", "blocks"}
    assert (unet["class"], unet["library"], unet["dtype"], unet["load_dtype"]) == (
        "FluxTransformer2DModel", "diffusers", "BF16", "float16")
    for comp in doc["components"].values():
        assert sum(comp["blocks"].values()) == comp["bytes_at_dtype"]
    assert doc["bytes_at_dtype"] == sum(found.loaded_bytes().values())
    assert doc["others"]["tokenizer_2"] == {"library": "transformers", "class": "T5TokenizerFast"}


def test_render_text_lists_each_model_and_the_total(sdxl_folder):
    text = folder_text.render_text(reader.read(sdxl_folder, variant="fp16", torch_dtype="float16")[0])
    lines = text.splitlines()
    assert lines[0] == f"StableDiffusionXLPipeline  {sdxl_folder}  variant fp16"
    assert lines[2].split() == ["component", "class", "stored", "dtype", "at", "float16", "blocks", "largest",
                                "block"]
    assert lines[5].split()[:5] == ["unet", "UNet2DConditionModel", "4.78", "GiB", "F16"]
    assert lines[7].split() == ["total", "6.46", "GiB", "6.46", "GiB"]
    assert lines[-1] == "absent: feature_extractor, image_encoder"


def test_reading_a_real_sized_folder_reads_each_weights_header_once_and_no_weights(sdxl_folder, monkeypatch):
    """What makes it take milliseconds, counted instead of timed: each weights file is opened once and only its
    8-byte length and its header are read, never a byte of the 6.94 GB of tensors it describes."""
    opened: dict[str, int] = {}
    original = files.open_regular

    def counting(path):
        f, size = original(path)
        opened[os.fsdecode(path)] = opened.get(os.fsdecode(path), 0) + 1
        return _Counted(f, os.fsdecode(path)), size

    monkeypatch.setattr(safetensors, "open_regular", counting)
    _Counted.read_bytes.clear()
    read, problems = reader.read(sdxl_folder, variant="fp16")
    assert problems == [] and read.components
    weights = [p for p in opened if p.endswith(".safetensors")]
    assert weights and all(opened[p] == 1 for p in weights)
    for path in weights:
        with open(path, "rb") as f:
            header = 8 + struct.unpack("<Q", f.read(8))[0]
        assert _Counted.read_bytes[path] == header < os.path.getsize(path)


class _Counted:
    """A file whose reads are counted per path (bytes returned), for the test above."""

    read_bytes: dict[str, int] = {}

    def __init__(self, f, path: str):
        self.f, self.path = f, path

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.read_bytes[self.path] = self.read_bytes.get(self.path, 0) + len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


# --- variants, as diffusers chooses them --------------------------------------------------------------------------


def test_weights_candidates_follow_diffusers_and_transformers():
    assert folder_pipeline.weights_candidates("diffusers", "fp16") == [
        "diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.safetensors.fp16.index.json",
        "diffusion_pytorch_model.fp16.safetensors"]
    assert folder_pipeline.weights_candidates("transformers", None) == ["model.safetensors",
                                                                      "model.safetensors.index.json"]


def test_a_component_without_the_variant_falls_back_to_its_plain_files(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE, text_encoder=TEXT)
    headers.write_file(root / "vae" / "diffusion_pytorch_model.fp16.safetensors", SMALL[:2])
    found, problems = reader.read(root, variant="fp16")
    assert problems == []
    assert (found.components["vae"].variant, found.components["vae"].bytes) == ("fp16", 448)
    assert (found.components["text_encoder"].variant, found.components["text_encoder"].bytes) == (None, SMALL_BYTES)
    assert "text_encoder (no variant)" in folder_text.render_text(found)


def test_a_variant_no_component_has_is_refused_as_diffusers_refuses_it(tiny_pipelines):
    from diffusers import DiffusionPipeline

    found, problems = reader.read(tiny_pipelines["sd"], variant="bf16")
    assert found is None
    assert "variant 'bf16'" in only(problems, "PLN407").message
    assert not local.has_variant(tiny_pipelines["sd"], "bf16")
    with pytest.raises(ValueError, match="variant=bf16"):
        DiffusionPipeline.from_pretrained(tiny_pipelines["sd"], variant="bf16")


def test_sharded_variant_and_legacy_index_names_are_read(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE)
    headers.write_sharded(root / "vae", "diffusion_pytorch_model", SMALL, 2, variant="fp16")
    comp = reader.read(root, variant="fp16")[0].components["vae"]
    assert comp.files == ("vae/diffusion_pytorch_model.safetensors.index.fp16.json",
                          "vae/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                          "vae/diffusion_pytorch_model.fp16-00002-of-00002.safetensors")
    assert comp.bytes == SMALL_BYTES
    (root / "vae" / "diffusion_pytorch_model.safetensors.index.fp16.json").rename(
        root / "vae" / "diffusion_pytorch_model.safetensors.fp16.index.json")
    assert reader.read(root, variant="fp16")[0].components["vae"].files[0] == (
        "vae/diffusion_pytorch_model.safetensors.fp16.index.json")


# --- tiny pipelines: the sizes equal what diffusers loads ---------------------------------------------------------


def loaded_bytes(module) -> int:
    """Parameters and persistent buffers (the state dict), each tensor once: what the weights files hold."""
    unique = {id(t): t for t in module.state_dict(keep_vars=True).values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


@pytest.mark.parametrize("torch_dtype", [None, "float16"])
def test_tiny_pipeline_sizes_equal_the_loaded_modules(tiny_pipelines, torch_dtype):
    import torch
    from diffusers import DiffusionPipeline

    for kind, folder in tiny_pipelines.items():
        found, problems = reader.read(folder, torch_dtype=torch_dtype)
        assert problems == []
        pipe = DiffusionPipeline.from_pretrained(folder, **({"dtype": getattr(torch, torch_dtype)}
                                                            if torch_dtype else {}))
        models = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        assert set(found.components) == set(models), kind
        for name, module in models.items():
            assert found.components[name].bytes_at(torch_dtype) == loaded_bytes(module), (kind, name)


def test_diffusers_loads_a_half_checkpoint_as_float32_without_torch_dtype(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4).half()
    headers.write_index(tmp_path / "p", "StableDiffusionPipeline", {"vae": VAE})
    vae.save_pretrained(tmp_path / "p" / "vae")
    comp = reader.read(tmp_path / "p")[0].components["vae"]
    loaded = AutoencoderKL.from_pretrained(tmp_path / "p" / "vae")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert comp.dtype == "F16" and comp.bytes_at(None) == loaded_bytes(loaded) == 2 * comp.bytes


# --- the hub, through a local stand-in --------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def test_a_hub_id_reads_the_same_headers_by_range_requests(flux_folder, hub_cache):
    server = headers.HubServer({"black-forest-labs/FLUX.1-dev": flux_folder})
    with server as endpoint:
        hub_cache.setenv("HF_ENDPOINT", endpoint)
        remote, problems = reader.read("black-forest-labs/FLUX.1-dev", torch_dtype="bfloat16")
    assert problems == []
    local = reader.read(flux_folder, torch_dtype="bfloat16")[0].to_json()
    assert {**remote.to_json(), "source": None} == {**local, "source": None}
    assert remote.source == "black-forest-labs/FLUX.1-dev"
    weights = [r for r in server.requests if r[1].endswith(".safetensors")]
    assert len(weights) == 7 and all(r[0] == "GET" and r[2] == "bytes=0-100000" for r in weights)
    assert sum(r[3] for r in server.requests) < 2_000_000  # of 33.7 GB of files


def test_a_hub_id_offline_is_one_problem_and_no_request(flux_folder, hub_cache):
    server = headers.HubServer({"org/flux": flux_folder})
    with server as endpoint:
        hub_cache.setenv("HF_ENDPOINT", endpoint)
        hub_cache.setenv("HF_HUB_OFFLINE", "1")
        found, problems = reader.read("org/flux")
    assert found is None and server.requests == []
    assert "offline" in only(problems, "PLN408").message


def test_a_hub_id_without_network_is_one_problem(hub_cache):
    hub_cache.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    found, problems = reader.read("org/name")
    assert found is None
    assert only(problems, "PLN408").message.startswith("cannot reach http://127.0.0.1:9")


def test_an_unknown_or_non_diffusers_hub_repo_is_pln401(tmp_path, hub_cache):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with headers.HubServer({"org/plain": tmp_path / "plain"}) as endpoint:
        hub_cache.setenv("HF_ENDPOINT", endpoint)
        assert "nor a model repository" in only(reader.read("org/missing")[1], "PLN401").message
        assert "no model_index.json" in only(reader.read("org/plain")[1], "PLN401").message


# --- damaged folders: a rule each, never an exception -----------------------------------------------------------


def test_a_truncated_file_names_the_bytes_missing(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE, text_encoder=TEXT)
    path = root / "vae" / "diffusion_pytorch_model.safetensors"
    length = path.stat().st_size
    os.truncate(path, length - 100)
    found, problems = reader.read(root)
    p = only(problems, "PLN405")
    assert p.path == str(path)
    assert p.message == f"truncated: 100 bytes missing (the header declares {length:,} bytes, the file has " \
                        f"{length - 100:,})"
    assert str(p).startswith(f"{path}: PLN405 truncated: 100 bytes missing")
    assert list(found.components) == ["text_encoder"]  # the others are still read


def test_a_file_longer_than_its_header_says_is_pln405(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE)
    path = root / "vae" / "diffusion_pytorch_model.safetensors"
    os.truncate(path, path.stat().st_size + 7)
    assert only(reader.read(root)[1], "PLN405").message.startswith("7 bytes after the last tensor")


def test_a_file_cut_inside_its_header_and_a_git_lfs_pointer_are_pln405(tmp_path):
    path = tmp_path / "w.safetensors"
    headers.write_file(path, SMALL)
    os.truncate(path, 20)
    assert "truncated inside its header" in safetensors.read_header(path)[1].message
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5135890710\n")
    found = safetensors.read_header(path)[1]
    assert (found.rule, found.message) == ("PLN405", "a Git LFS pointer file, not the weights")
    path.write_bytes(b"\x01\x00")
    assert safetensors.read_header(path)[1].rule == "PLN405"


def write_raw_header(path: Path, header: bytes, data: int = 0) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("header, why", [
    (b"not json at all", "not a JSON object"),
    (b'{"a": ', "not JSON"),
    (b"\xff{}", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"a": entry(dtype="F17")}).encode(), "unknown dtype 'F17'"),
    (json.dumps({"a": entry(shape=(-2,))}).encode(), "shape"),
    (json.dumps({"a": entry(offsets=(8, 0))}).encode(), "data_offsets"),
    (json.dumps({"a": entry(offsets=(0, 12))}).encode(), "needs 8 bytes, its data_offsets span 12"),
    (json.dumps({"a": entry(), "b": entry(offsets=(4, 12))}).encode(), "overlap or leave a gap"),
    (json.dumps({"a": entry(), "b": entry(offsets=(16, 24))}).encode(), "overlap or leave a gap"),
    (b'{"a": ' + json.dumps(entry()).encode() + b', "a": ' + json.dumps(entry(offsets=(8, 16))).encode() + b"}",
     "starts at byte 8 of the data where 0 was expected"),  # a name twice keeps the last entry, as safetensors does
    (json.dumps({"__metadata__": {"format": 1}}).encode(), "__metadata__"),
    (json.dumps({"a": [1]}).encode(), "not described by an object"),
])
def test_a_header_that_is_not_valid_is_pln404(tmp_path, header, why):
    found, p = safetensors.read_header(write_raw_header(tmp_path / "w.safetensors", header, 8))
    assert found == () and p.rule == "PLN404" and why in p.message, p


def test_an_absurd_header_length_is_pln404_and_nothing_is_read(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    p = safetensors.read_header(path)[1]
    assert p.rule == "PLN404" and "more than the 100,000,000 safetensors allows" in p.message


def test_a_missing_shard_is_pln406_naming_it(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE)
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    shards = headers.write_sharded(root / "vae", "diffusion_pytorch_model", SMALL, 3)
    (root / "vae" / shards[1]).unlink()
    p = only(reader.read(root)[1], "PLN406")
    assert p.path == str(root / "vae" / "diffusion_pytorch_model.safetensors.index.json")
    assert p.message == f"1 of 3 shards missing: {shards[1]}"


def test_shards_that_disagree_with_their_index_are_pln406(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE)
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    shards = headers.write_sharded(root / "vae", "diffusion_pytorch_model", SMALL, 2)
    assert shards == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                      "diffusion_pytorch_model-00002-of-00002.safetensors"]  # SMALL[:1] and SMALL[1:]
    headers.write_file(root / "vae" / shards[1], SMALL)  # conv.weight now in both shards
    assert "'conv.weight' is stored in both" in only(reader.read(root)[1], "PLN406").message
    headers.write_file(root / "vae" / shards[1], SMALL[2:])  # conv.bias now nowhere
    assert only(reader.read(root)[1], "PLN406").message == (
        f"the weight_map disagrees with the shards for 1 tensors (first: 'conv.bias', mapped to {shards[1]}, "
        "stored in no shard)")
    index = root / "vae" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    assert "plain file names" in only(reader.read(root)[1], "PLN406").message
    index.write_text("{")
    assert "not valid JSON" in only(reader.read(root)[1], "PLN406").message


def test_a_folder_that_is_not_a_pipeline_is_pln401(tmp_path):
    assert "does not exist" in only(reader.read(tmp_path / "nowhere")[1], "PLN401").message
    (tmp_path / "file").write_text("x")
    assert "is a file" in only(reader.read(tmp_path / "file")[1], "PLN401").message
    assert "no model_index.json" in only(reader.read(tmp_path)[1], "PLN401").message
    root = small_pipeline(tmp_path / "p", vae=VAE)
    p = only(reader.read(root / "vae")[1], "PLN401")
    assert "holds one model" in p.message and p.fix == "name the pipeline folder above it"


@pytest.mark.parametrize("index, why", [
    ("{", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"vae": ["diffusers", "AutoencoderKL"]}', "no _class_name"),
    ('{"_class_name": "P", "vae": ["diffusers"]}', "neither [library, class] nor [null, null]"),
    ('{"_class_name": "P", "../vae": ["diffusers", "AutoencoderKL"]}', "not an identifier"),
])
def test_a_model_index_that_is_not_a_pipeline_index_is_pln402(tmp_path, index, why):
    (tmp_path / "model_index.json").write_text(index)
    found, problems = reader.read(tmp_path)
    assert found is None and why in only(problems, "PLN402").message


def test_a_component_without_weights_is_pln403(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE, text_encoder=TEXT, unet=("diffusers", "UNet2DConditionModel"))
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "text_encoder" / "model.safetensors").rename(root / "text_encoder" / "pytorch_model.bin")
    (root / "unet" / "config.json").unlink()
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "unet").rmdir()
    found, problems = reader.read(root)
    assert [p.rule for p in problems] == ["PLN403"] * 3
    messages = {Path(p.path).name: p.message for p in problems}
    assert "has no weights: none of diffusion_pytorch_model.safetensors" in messages["vae"]
    assert "only pickle weights (pytorch_model.bin)" in messages["text_encoder"]
    assert messages["unet"] == "model_index.json names unet (UNet2DConditionModel) but there is no folder unet"
    assert dict(found.components) == {}


def test_a_folder_of_variant_files_only_says_which_variant_to_pass(tmp_path, capsys):
    root = small_pipeline(tmp_path / "p", vae=VAE, text_encoder=TEXT)
    for name, base in (("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (root / name / f"{base}.safetensors").rename(root / name / f"{base}.fp16.safetensors")
    found, problems = reader.read(root)
    assert [p.rule for p in problems] == ["PLN403"] * 2
    assert all("holds only the fp16 variant" in p.message and p.fix.startswith("pass --variant fp16")
               for p in problems)
    found, problems = reader.read(root, variant="fp16")
    assert problems == [] and set(found.components) == {"vae", "text_encoder"}
    from planner.cli import main

    assert main(["inspect", str(root)]) == 1
    assert "pass --variant fp16" in capsys.readouterr().err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        path.write_bytes(data)
        tensors, p = safetensors.read_header(path)
    if p is None:  # random bytes that happen to be a valid file: "{}" with the right length field
        assert len(data) == 8 + struct.unpack("<Q", data[:8])[0] + sum(t.nbytes for t in tensors)
    else:
        assert p.rule in ("PLN404", "PLN405") and tensors == ()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                      max_size=3), max_leaves=12)
entries = st.fixed_dictionaries({"dtype": st.sampled_from([*sizes.DTYPE_BITS, "F17", 3]),
                                 "shape": st.lists(st.integers(-1, 5), max_size=3) | json_values,
                                 "data_offsets": st.lists(st.integers(-1, 200), max_size=3) | json_values})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), entries | json_values, max_size=5), st.integers(0, 400))
def test_random_headers_never_raise_and_a_valid_one_accounts_for_every_byte(header, size):
    raw = json.dumps(header).encode()
    tensors, p = safetensors.parse_header(raw, "w.safetensors", size)
    if p is None:
        assert size == 8 + len(raw) + sum(t.nbytes for t in tensors)
    else:
        assert p.rule in ("PLN404", "PLN405") and tensors == ()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["F32", "BF16", "I8", "BOOL", "F64", "F4"]),
                          st.lists(st.integers(0, 6), max_size=3).map(lambda s: tuple(s) + (2,))), max_size=6))
def test_headers_written_as_safetensors_writes_them_read_back_exactly(shapes):
    spec = [(f"m.{i}.w", dtype, shape) for i, (dtype, shape) in enumerate(shapes)]
    head = headers.header_bytes(spec, {"format": "pt"})
    tensors, p = safetensors.parse_header(head[8:], "w.safetensors", len(head) + headers.nbytes(spec))
    assert p is None and [(t.name, t.dtype, t.shape) for t in tensors] == spec
    assert sum(t.nbytes for t in tensors) == headers.nbytes(spec)


def test_block_of_finds_the_repeated_unit_at_any_depth():
    cases = {"down_blocks.0.resnets.1.conv1.weight": "down_blocks.0", "mid_block.attentions.0.proj_in.weight":
             "mid_block", "text_model.encoder.layers.5.mlp.fc1.weight": "text_model.encoder.layers.5",
             "encoder.block.7.layer.1.DenseReluDense.wo.weight": "encoder.block.7",
             "decoder.up_blocks.1.resnets.0.norm1.bias": "decoder.up_blocks.1", "decoder.mid_block.resnets.0.b":
             "decoder.mid_block", "single_transformer_blocks.3.attn.to_q.weight": "single_transformer_blocks.3",
             "0.weight": "0", "shared.weight": "rest", "time_embedding.linear_1.weight": "rest", "x": "rest",
             "layers.²": "rest"}
    assert {name: blocknames.block_of(name) for name in cases} == cases


def test_the_module_imports_nothing_heavy_and_reads_without_it(tiny_pipelines):
    code = ("import sys; from planner.folder import reader; s, p = reader.read(sys.argv[1]); "
            "assert not p and s.components; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'safetensors', 'huggingface_hub') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_pipelines["sd"])], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_every_rule_has_its_fix():
    from planner.rules import RULES

    folder = [rule for rule in RULES.values() if rule.id.startswith("PLN4")]
    assert folder and all(rule.title and rule.fix for rule in folder)


# --- a plan against a model folder (planner validate --model) ---------------------------------------------------


def plan_at(path: Path, text: str):
    """The `Plan` of the plan file `text` written at `path`."""
    from planner.validate import load_plan

    path.write_text(text)
    return load_plan(path)


SD_MODELS = dict(vae=VAE, text_encoder=TEXT, unet=("diffusers", "UNet2DConditionModel"))
SD_OTHERS = dict(safety_checker=(None, None), tokenizer=("transformers", "CLIPTokenizer"),
                 scheduler=("diffusers", "PNDMScheduler"))


def sd_folder(root: Path) -> Path:
    """A StableDiffusionPipeline folder: three models holding SMALL, a tokenizer and a scheduler (configs only),
    no safety checker ([null, null])."""
    small_pipeline(root, **SD_MODELS)
    headers.write_index(root, "StableDiffusionPipeline", {**SD_MODELS, **SD_OTHERS})
    return root


def test_a_plan_that_fits_the_folder_has_no_problem(tmp_path):
    model = reader.read(sd_folder(tmp_path / "p"))[0]
    plan = plan_at(tmp_path / "a.yaml", "version: 1\npipeline: {class: StableDiffusionPipeline}\ndevice: cuda\n"
                   "components: [text_encoder, unet, vae]\nexclude: [safety_checker, image_encoder]\n")
    # safety_checker is [null, null] and image_encoder not in model_index.json: None once loaded, skipped
    assert folder_check.check_plan(plan, model) == []
    # a class diffusers loads from this folder (the same components) is no mismatch
    img2img = plan_at(tmp_path / "b.yaml", "version: 1\npipeline: {class: StableDiffusionImg2ImgPipeline}\n"
                      "device: cuda\ncomponents: [text_encoder, unet, vae]\n")
    assert folder_check.check_plan(img2img, model) == []


def test_a_component_the_folder_lacks_or_holds_as_no_model_is_pln301_at_its_place(tmp_path):
    model = reader.read(sd_folder(tmp_path / "p"))[0]
    plan = plan_at(tmp_path / "a.yaml", "version: 1\ndevice: cuda\ncomponents: [text_encoder, unett, vae]\n"
                   "exclude: [tokenizer, image_encoder]\n")
    found = folder_check.check_plan(plan, model)
    assert [(p.rule, p.line, p.column) for p in found] == [("PLN301", 3, 28), ("PLN301", 4, 11)]
    assert found[0].message == (f"the model folder {tmp_path / 'p'} has no component 'unett' (its models: vae, "
                                "text_encoder, unet)")
    assert found[0].fix == "did you mean 'unet'?"
    assert found[1].message.startswith("tokenizer of the model folder") and "is a CLIPTokenizer, not a model" in \
        found[1].message
    # no class in the plan: the folder's class says which components a pipeline has (image_encoder: None)


def test_a_class_the_folder_does_not_hold_is_pln304_at_pipeline_class(tmp_path):
    model = reader.read(sd_folder(tmp_path / "p"))[0]
    plan = plan_at(tmp_path / "a.yaml", "version: 1\npipeline:\n  class: StableDiffusionXLPipeline\ndevice: cuda\n"
                   "components: [text_encoder, text_encoder_2, unet, vae]\nexclude: [tokenizer]\n")
    found = folder_check.check_plan(plan, model)
    assert [(p.rule, p.line, p.column) for p in found] == [("PLN304", 3, 3), ("PLN301", 5, 28)]
    assert "only StableDiffusionXLPipeline takes text_encoder_2, tokenizer_2; only StableDiffusionPipeline takes " \
           "safety_checker" in found[0].message
    assert found[0].fix == "write class: StableDiffusionPipeline, or leave class out to read it from model_index.json"
    assert "has no component 'text_encoder_2'" in found[1].message  # the folder has none, whatever the class
    # `tokenizer` is the index's PLN504 (validate's check of the class says it): not said twice


def test_a_class_the_index_lacks_is_not_judged(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE)
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "_class_name": ["pipeline.py", "MyPipeline"]}))
    plan = plan_at(tmp_path / "a.yaml", "version: 1\npipeline: {class: StableDiffusionPipeline}\ndevice: cuda\n"
                   "components: [vae]\n")
    model = reader.read(root)[0]
    assert model.class_name == "MyPipeline" and folder_check.check_plan(plan, model) == []


def test_check_plans_reads_once_per_variant_and_reports_the_folder_once(tmp_path):
    root = sd_folder(tmp_path / "p")
    headers.write_file(root / "unet" / "diffusion_pytorch_model.fp16.safetensors", SMALL[:2])
    os.truncate(root / "vae" / "diffusion_pytorch_model.safetensors", 10)
    plain = plan_at(tmp_path / "a.yaml", "version: 1\ndevice: cuda\ncomponents: [text_encoder, unet, vae]\n")
    half = plan_at(tmp_path / "b.yaml", "version: 1\npipeline: {variant: fp16, torch_dtype: float16}\n"
                   "device: cuda\ncomponents: [text_encoder, unet, vae]\n")
    missing = plan_at(tmp_path / "c.yaml", "version: 1\npipeline:\n  variant: int8\ndevice: cuda\n"
                      "components: [unet]\n")
    tables, problems = folder_check.check_plans(root, [plain, half, plain, missing])
    assert [(t.variant, t.torch_dtype) for t in tables] == [(None, None), ("fp16", "float16")]
    assert tables[1].components["unet"].bytes == 448 and tables[1].components["unet"].variant == "fp16"
    assert tables[1].unread == ("vae",) and "not read (see the problems): vae" in folder_text.render_text(tables[1])
    assert [(p.path, p.rule, p.line) for p in problems] == [
        (str(root / "vae" / "diffusion_pytorch_model.safetensors"), "PLN405", 0),  # once, though read twice
        (str(tmp_path / "c.yaml"), "PLN407", 3)]
    assert problems[1].message == f"no component of the model folder {root} has files of the variant 'int8'"
    # no plan at all: the folder is still read and checked
    tables, problems = folder_check.check_plans(root, [])
    assert len(tables) == 1 and [p.rule for p in problems] == ["PLN405"]


def test_has_variant_is_the_test_from_pretrained_makes(tmp_path):
    root = small_pipeline(tmp_path / "p", vae=VAE)
    assert not local.has_variant(root, "fp16")
    headers.write_file(root / "vae" / "diffusion_pytorch_model.fp16.safetensors", SMALL)
    assert local.has_variant(root, "fp16") and local.has_variant(root, "fp") and not local.has_variant(root, "bf16")
    (root / "elsewhere").mkdir()
    headers.write_file(root / "elsewhere" / "model.bf16.safetensors", SMALL)  # no component of model_index.json
    assert not local.has_variant(root, "bf16")
    (root / "model_index.json").write_text("{")
    assert local.has_variant(root, "bf16")  # unreadable: read() and diffusers say what is wrong


def test_an_empty_source_never_reads_the_working_folder(monkeypatch, tiny_pipelines):
    monkeypatch.chdir(tiny_pipelines["sd"])  # a pipeline folder: Path("") would read it
    for source in ("", "  "):
        found, problems = reader.read(source)
        assert found is None and "names no folder" in only(problems, "PLN401").message


# --- the executor's trace: what moves is the weights plus the non-persistent buffers -----------------------------


def nonpersistent_bytes(module) -> int:
    """Bytes of the buffers a module builds for itself and does not save (`persistent=False`)."""
    saved = {id(t) for t in module.state_dict(keep_vars=True).values()}
    return sum(b.numel() * b.element_size() for b in module.buffers() if id(b) not in saved)


def tiny_kinds() -> list[str]:
    from planner import tiny

    return list(tiny.KINDS)


@pytest.mark.parametrize("as_planned", [True, False], ids=["as-its-plans-load-it", "no-dtype-no-variant"])
@pytest.mark.parametrize("kind", tiny_kinds())
def test_inspect_equals_the_executor_trace_for_every_tiny_pipeline(kind, as_planned, tiny_builds, tmp_path, capsys):
    """`planner inspect` reports the weights (parameters and persistent buffers); the executor's trace measures
    what moves, which adds the non-persistent buffers: exactly those, for every tiny build, loaded as its library
    plans load it (`planner apply --dtype --variant`) and as from_pretrained loads it given nothing."""
    from planner import tiny
    from planner.cli import main
    from planner.executor import applied
    from planner.executor import source as sources
    from planner.validate import load_plan

    spec = tiny.KINDS[kind]
    try:
        folder = tiny_builds[kind]
    except tiny.Unavailable as exc:  # the dependency floors' diffusers predates the family
        pytest.skip(str(exc))
    dtype, variant = (spec.torch_dtype, spec.variant) if as_planned else (None, None)
    flags = [*(["--dtype", dtype] if dtype else []), *(["--variant", variant] if variant else [])]
    assert main(["inspect", str(folder), "--format", "json", *flags]) == 0
    inspected = json.loads(capsys.readouterr().out)["components"]
    path = tmp_path / "plan.yaml"
    path.write_text(f"version: 1\npipeline: {{source: {folder}}}\ndevice: cuda\ncomponents: [{', '.join(inspected)}]\n")
    overrides = {f"pipeline.{key}": value for key, value in (("torch_dtype", dtype), ("variant", variant)) if value}
    plan = load_plan(path, overrides)
    pipe = sources.load_pipeline(plan)
    with applied.apply(pipe, plan, dry_run=True) as handle:
        moved = dict(handle.trace.sizes)
    assert set(moved) == set(inspected)
    for name, comp in inspected.items():
        extra = nonpersistent_bytes(getattr(pipe, name))
        assert moved[name] == comp["bytes_at_dtype"] + extra, name
        if comp["class"] in ("CLIPTextModel", "CLIPTextModelWithProjection"):  # the trace counts them:
            positions = json.loads((folder / name / "config.json").read_text())["max_position_embeddings"]
            assert extra == 8 * positions, name  # position_ids, int64 [1, max_position_embeddings]


def test_transformers_without_a_dtype_loads_at_the_dtype_its_config_names(tmp_path, monkeypatch):
    """transformers 5 loads "auto" when given no dtype (as diffusers gives it none): the dtype config.json names,
    else the stored one; transformers 4 loaded float32. diffusers' own models load float32 either way."""
    root = small_pipeline(tmp_path / "p", text_encoder=TEXT, vae=VAE)
    for name in ("text_encoder", "vae"):
        (root / name / "config.json").write_text(json.dumps({"_class_name": "x", "dtype": "float16"}))
    found = reader.read(root)[0].components
    assert found["text_encoder"].config_dtype == "float16" and found["vae"].config_dtype is None
    halved = 216 + 8 + 64 + 64 + 24  # floats at float16, the int64 tensor as it is
    assert (found["text_encoder"].bytes_at(None), found["vae"].bytes_at(None)) == (halved, 728)
    (root / "text_encoder" / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))  # transformers 4
    assert reader.read(root)[0].components["text_encoder"].load_dtype(None) == "bfloat16"
    (root / "text_encoder" / "config.json").write_text("{")  # unreadable: as stored
    assert reader.read(root)[0].components["text_encoder"].bytes_at(None) == SMALL_BYTES
    monkeypatch.setattr(sizes, "_transformers_loads_auto", lambda: False)
    assert reader.read(root)[0].components["text_encoder"].bytes_at(None) == 728
