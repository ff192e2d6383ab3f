"""The corpus of damaged model folders, as tests/data/bad is for plans: each case below builds one folder (FIFOs, links,
sparse files and huge headers cannot sit in git), and tests/data/bad-folders/NAME.out holds the exact problems
`planner.folder.reader.read` must return for it, one `str(problem)` a line, the folder written {root}. The cases come
in the four classes of issue 20: bounds on work (bounds_*), bounded output (output_*), the rule a component gets
from what model_index.json says it is (rule_*), and messages that say what stands where a file was expected
(messages_*). Re-record an .out with `python tests/test_folder_corpus.py NAME` and read the diff."""

import json
import os
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import headers  # noqa: E402

from planner.folder import reader  # noqa: E402

OUT = Path(__file__).parent / "data" / "bad-folders"
UNET = ["diffusers", "UNet2DConditionModel"]
VAE = ["diffusers", "AutoencoderKL"]
TEXT = ["transformers", "CLIPTextModel"]
SMALL = [("conv.weight", "F32", (4, 3, 3, 3)), ("conv.bias", "F32", (4,))]

CASES = {}


def case(build):
    """Register a builder: `build(root)` makes the damaged folder at `root`."""
    CASES[build.__name__] = build
    return build


def index(root: Path, **components) -> Path:
    """model_index.json alone, naming `components` (name=[library, class])."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", **components}))
    return root


def model(root: Path, name: str, library: str = "diffusers", spec=SMALL) -> Path:
    """A model component folder: config.json and one safetensors file holding `spec`."""
    base = "model" if library == "transformers" else "diffusion_pytorch_model"
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.json").write_text("{}")
    headers.write_file(root / name / f"{base}.safetensors", spec)
    return root / name / f"{base}.safetensors"


def raw_header(path: Path, raw: bytes, data: int) -> Path:
    """A safetensors file of the header bytes `raw` and `data` bytes of tensors (a hole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def sharded(root: Path, name: str, weight_map: dict) -> Path:
    """A component folder holding config.json and a shard index of `weight_map`, and no shard."""
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.json").write_text("{}")
    path = root / name / "diffusion_pytorch_model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


# --- bounds on work: past one, the file that met it is the problem and nothing more is read --------------------


@case
def bounds_header_past_the_json_values(root):
    """A header within safetensors' 100 MB whose 2,100,000 values would take seconds and a GB to decode: refused
    undecoded (its commas counted), and the vae after it is not read."""
    index(root, unet=UNET, vae=VAE)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    shape = b"[" + b"1," * 2_100_000 + b"1]"
    raw_header(root / "unet" / "diffusion_pytorch_model.safetensors",
               b'{"w":{"dtype":"U8","shape":' + shape + b',"data_offsets":[0,1]}}', 1)
    model(root, "vae")


@case
def bounds_header_past_the_tensors(root):
    """200,001 valid one-byte tensors: decoded (1.4 million values), refused before a Tensor is built."""
    index(root, unet=UNET)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    n = 200_001
    raw = b"{" + b",".join(b'"t%d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1)
                           for i in range(n)) + b"}"
    raw_header(root / "unet" / "diffusion_pytorch_model.safetensors", raw, n)


@case
def bounds_too_many_components(root):
    """1,001 components: one problem, no folder listed."""
    index(root, **{f"c{i}": VAE for i in range(1001)})


@case
def bounds_names_too_long(root):
    """A component name and a class name of 300 characters: no folder or class is named so."""
    index(root, **{"u" * 300: UNET, "vae": ["diffusers", "Autoencoder" + "K" * 289]})


# --- bounded output: names cut around their middle, lists counted, at most 50 problems ---------------------------


@case
def output_many_problems(root):
    """60 components without folders: 50 problems, then one counting the other 10."""
    index(root, **{f"vae_{i:02d}": VAE for i in range(60)})


@case
def output_many_missing_shards(root):
    """A shard index naming 100,000 shards, none present: one line, eight names and the count."""
    sharded(root, "unet", {f"t{i}": f"diffusion_pytorch_model-{i:06d}-of-100000.safetensors" for i in range(100_000)})
    index(root, unet=UNET)


@case
def output_long_tensor_name(root):
    """A tensor name of 300,000 characters with an unknown dtype: quoted cut around its middle."""
    index(root, unet=UNET)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    name = "down_blocks.0." + "x" * 300_000 + ".weight"
    raw_header(root / "unet" / "diffusion_pytorch_model.safetensors",
               json.dumps({name: entry(dtype="F17")}).encode(), 8)


@case
def output_unsafe_shard_names(root):
    """Twenty shard names that leave the folder, one of 100,000 characters."""
    weight_map = {f"t{i}": f"../{i}.safetensors" for i in range(19)}
    weight_map["long"] = "../" * 33_333 + "x.safetensors"
    sharded(root, "unet", weight_map)
    index(root, unet=UNET)


# --- the rule: a component is what model_index.json says it is ----------------------------------------------------


@case
def rule_empty_unet(root):
    """An empty unet/ beside a real scheduler: a model whose weights are missing, not a scheduler."""
    index(root, unet=UNET, scheduler=["diffusers", "PNDMScheduler"])
    (root / "unet").mkdir()
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")


@case
def rule_unet_links_to_a_tokenizer_folder(root):
    """unet/ is a link to a folder that holds a tokenizer's files."""
    index(root, unet=UNET, tokenizer=["transformers", "CLIPTokenizer"])
    (root / "tokenizer").mkdir()
    for file in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"):
        (root / "tokenizer" / file).write_text("{}")
    (root / "unet").symlink_to("tokenizer")


@case
def rule_folders_without_weights_missing(root):
    """A scheduler, a tokenizer, a feature extractor and a transformers model without their folders: each fix
    names what the folder holds (no weights for the first three)."""
    index(root, scheduler=["diffusers", "PNDMScheduler"], tokenizer=["transformers", "CLIPTokenizer"],
          feature_extractor=["transformers", "CLIPImageProcessor"], text_encoder=TEXT)


# --- messages: what stands where a file was expected, and what could be said more precisely -----------------------


@case
def messages_fifo_at_the_weights(root):
    index(root, unet=UNET)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    os.mkfifo(root / "unet" / "diffusion_pytorch_model.safetensors")


@case
def messages_folder_at_the_weights(root):
    index(root, vae=VAE)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / "vae" / "diffusion_pytorch_model.safetensors").mkdir()


@case
def messages_link_to_nothing_at_the_weights(root):
    """A hub cache snapshot whose blob was deleted."""
    index(root, vae=VAE)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / "vae" / "diffusion_pytorch_model.safetensors").symlink_to("../../blobs/0123456789abcdef")


@case
def messages_link_to_a_device_at_the_weights(root):
    index(root, text_encoder=TEXT)
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "config.json").write_text("{}")
    (root / "text_encoder" / "model.safetensors").symlink_to(os.devnull)


@case
def messages_link_loop_at_the_weights(root):
    index(root, vae=VAE)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / "vae" / "diffusion_pytorch_model.safetensors").symlink_to("diffusion_pytorch_model.safetensors")


@case
def messages_fifo_at_model_index(root):
    root.mkdir()
    os.mkfifo(root / "model_index.json")


@case
def messages_fifo_and_folder_among_the_shards(root):
    shards = [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    sharded(root, "unet", {"a": shards[0], "b": shards[1], "c": shards[2]})
    index(root, unet=UNET)
    headers.write_file(root / "unet" / shards[0], [("a", "F32", (2,))])
    os.mkfifo(root / "unet" / shards[1])
    (root / "unet" / shards[2]).mkdir()


@case
def messages_component_is_a_file(root):
    index(root, unet=UNET, vae=VAE)
    (root / "unet").write_text("not a folder")
    (root / "vae").symlink_to("nowhere")


@case
def messages_dtype_in_lower_case(root):
    index(root, unet=UNET)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    raw_header(root / "unet" / "diffusion_pytorch_model.safetensors",
               json.dumps({"conv.weight": entry(dtype="f16", shape=(4,))}).encode(), 8)


@case
def messages_offsets_beyond_any_file(root):
    """An offset no file can reach is a damaged header (PLN404), not a truncated download (PLN405)."""
    index(root, unet=UNET)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    raw_header(root / "unet" / "diffusion_pytorch_model.safetensors",
               json.dumps({"w": entry(dtype="U8", shape=(10**15, 10**15), offsets=(0, 10**30))}).encode(), 8)


@case
def messages_empty_weight_map(root):
    """A shard index mapping no tensor: the component holds no weights (it was sized 0 B and passed)."""
    sharded(root, "unet", {})
    index(root, unet=UNET)


def problems_of(name: str, root: Path) -> list[str]:
    CASES[name](root)
    return [str(p).replace(str(root), "{root}") for p in reader.read(root)[1]]


def test_every_case_has_its_expected_problems_and_every_expectation_a_case():
    assert sorted(p.stem for p in OUT.glob("*.out")) == sorted(CASES)
    assert {name.split("_", 1)[0] for name in CASES} == {"bounds", "output", "rule", "messages"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and links need a POSIX system")
@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_folder_gives_exactly_its_problems(name, tmp_path):
    got = problems_of(name, tmp_path / "model")
    assert got == (OUT / f"{name}.out").read_text(encoding="utf-8").splitlines()
    assert got and all(len(line) < 1_500 for line in got)


if __name__ == "__main__":  # re-record: python tests/test_folder_corpus.py NAME...
    import tempfile

    for wanted in sys.argv[1:] or sorted(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            (OUT / f"{wanted}.out").write_text("".join(line + "\n" for line in problems_of(wanted, Path(tmp) /
                                                                                            "model")),
                                               encoding="utf-8")
