"""Test helper: diffusers folders of real-sized safetensors files that hold a real header and no weights.

Each file gets the header safetensors would write (names, dtypes and shapes of the real model, taken from its class
built on the meta device from the published config) and is then extended with `os.truncate` to the length the
header declares: the rest is a hole, so a "24 GB transformer" costs a few hundred kB of disk. `HubServer` serves
such folders over HTTP the way the hub does, for `HF_ENDPOINT`. torch is imported here, never by planner.folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# torch dtype name -> safetensors dtype
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8, "BOOL": 8,
        "F4": 4}

Spec = tuple[str, str, tuple[int, ...]]  # tensor name, safetensors dtype, shape


# --- published configs (the models' config.json on the hub, as diffusers / transformers keyword arguments) -------
# One copy, with their sources: benchmarks/published.py, which sizes the whole plans library from them.

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import published  # noqa: E402

SDXL_UNET, SDXL_VAE, CLIP_L = published.SDXL_UNET, published.SDXL_VAE, published.CLIP_L
CLIP_BIG_G, T5_XXL = published.CLIP_BIG_G, published.T5_XXL
FLUX_TRANSFORMER, FLUX_VAE = published.FLUX_DEV, published.FLUX_VAE

# Published parameter counts, to check the meta models against something other than themselves.
PARAMS = {"sdxl.unet": 2_567_463_684, "sdxl.text_encoder": 123_060_480, "sdxl.text_encoder_2": 694_659_840,
          "sdxl.vae": 83_653_863, "flux.transformer": 11_901_408_320, "flux.text_encoder_2": 4_762_310_656}


@functools.cache
def sdxl_models() -> dict:
    """SDXL base's four models on the meta device: name -> module."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        return {"text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)),
                "unet": UNet2DConditionModel(**SDXL_UNET), "vae": AutoencoderKL(**SDXL_VAE)}


@functools.cache
def flux_models() -> dict:
    """FLUX.1-dev's four models on the meta device: name -> module (T5's embedding tied, as it loads)."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**T5_XXL))
        t5.tie_weights()  # built from a config on meta, the embedding is tied only after this (DESIGN.md)
        return {"text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)), "text_encoder_2": t5,
                "transformer": FluxTransformer2DModel(**FLUX_TRANSFORMER), "vae": AutoencoderKL(**FLUX_VAE)}


def specs(module, dtype: str | None = None) -> list[Spec]:
    """The tensors `save_pretrained` would store for `module`: its state dict, each tensor once under its first
    name (a tied tensor is saved once), floating tensors cast to `dtype` when given."""
    seen, out = set(), []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        kind = str(tensor.dtype).removeprefix("torch.")
        if dtype is not None and tensor.is_floating_point():
            kind = dtype
        out.append((name, SAFETENSORS_DTYPES[kind], tuple(tensor.shape)))
    return out


def nbytes(spec_list: list[Spec]) -> int:
    total = 0
    for _, dtype, shape in spec_list:
        count = 1
        for d in shape:
            count *= d
        total += count * BITS[dtype] // 8
    return total


def module_bytes(module, dtype: str) -> int:
    """Bytes of `module`'s parameters and persistent buffers at `dtype`, each tensor once."""
    return nbytes(specs(module, dtype))


def header_bytes(spec_list: list[Spec], metadata: dict | None = None) -> bytes:
    """The first bytes of a safetensors file: 8-byte length, then the JSON header padded with spaces to a multiple
    of 8, as safetensors writes it."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in spec_list:
        size = nbytes([(name, dtype, shape)])
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_file(path: Path, spec_list: list[Spec], metadata: dict | None = None) -> int:
    """A sparse safetensors file at `path`: the real header, then a hole up to the declared length (returned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = header_bytes(spec_list, {"format": "pt"} if metadata is None else metadata)
    path.write_bytes(head)
    length = len(head) + nbytes(spec_list)
    os.truncate(path, length)
    return length


def write_sharded(folder: Path, base: str, spec_list: list[Spec], shards: int, variant: str | None = None) -> list[str]:
    """`spec_list` in `shards` sparse files of about equal bytes and the index beside them, named as
    save_pretrained names them: `model-00001-of-00002.safetensors` + `model.safetensors.index.json`, with a
    variant `model.fp16-00001-of-00002.safetensors` + `model.safetensors.index.fp16.json`. Returns the shards."""
    target = nbytes(spec_list) / shards
    groups, current, size = [], [], 0
    for i, spec in enumerate(spec_list):
        still_to_open = shards - len(groups) - 1
        if current and still_to_open and (size >= target or len(spec_list) - i <= still_to_open):
            groups.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes([spec])
    groups.append(current)
    stem = f"{base}.{variant}" if variant else base
    names = [f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    for name, group in zip(names, groups, strict=True):
        write_file(folder / name, group)
    index = {"metadata": {"total_size": nbytes(spec_list)},
             "weight_map": {spec[0]: name for name, group in zip(names, groups, strict=True) for spec in group}}
    index_name = f"{base}.safetensors.index.{variant}.json" if variant else f"{base}.safetensors.index.json"
    (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True))
    return names


def write_index(root: Path, class_name: str, components: dict[str, tuple | list], **options) -> None:
    """model_index.json, a config file in each component folder (config.json for models), nothing else."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1",
                                                       **options, **{k: list(v) for k, v in components.items()}}))
    for name, (library, cls) in components.items():
        if library is None:
            continue
        config = ("scheduler_config.json" if cls.endswith("Scheduler") else
                  "tokenizer_config.json" if "Tokenizer" in cls else "config.json")
        (root / name).mkdir(exist_ok=True)
        (root / name / config).write_text(json.dumps({"_class_name": cls}))


SDXL_INDEX = {"feature_extractor": (None, None), "image_encoder": (None, None),
              "scheduler": ("diffusers", "EulerDiscreteScheduler"), "text_encoder": ("transformers", "CLIPTextModel"),
              "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
              "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "CLIPTokenizer"),
              "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL")}
FLUX_INDEX = {"scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
              "text_encoder": ("transformers", "CLIPTextModel"), "text_encoder_2": ("transformers", "T5EncoderModel"),
              "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "T5TokenizerFast"),
              "transformer": ("diffusers", "FluxTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL")}
_WEIGHTS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}


def sdxl(root: Path) -> Path:
    """stabilityai/stable-diffusion-xl-base-1.0 as on the hub: each model in float32
    (`diffusion_pytorch_model.safetensors`, `model.safetensors`) and in the fp16 variant (`*.fp16.safetensors`)."""
    write_index(root, "StableDiffusionXLPipeline", SDXL_INDEX, force_zeros_for_empty_prompt=True)
    for name, module in sdxl_models().items():
        base = _WEIGHTS[SDXL_INDEX[name][0]]
        write_file(root / name / f"{base}.safetensors", specs(module, "float32"))
        write_file(root / name / f"{base}.fp16.safetensors", specs(module, "float16"))
    return root


def flux(root: Path) -> Path:
    """black-forest-labs/FLUX.1-dev as on the hub, in bfloat16: the transformer in 3 shards, T5-XXL in 2 (its
    tied embedding stored once, as `shared.weight`), CLIP and the vae in one file each."""
    write_index(root, "FluxPipeline", FLUX_INDEX)
    models = flux_models()
    write_sharded(root / "transformer", "diffusion_pytorch_model", specs(models["transformer"], "bfloat16"), 3)
    write_sharded(root / "text_encoder_2", "model", specs(models["text_encoder_2"], "bfloat16"), 2)
    write_file(root / "text_encoder" / "model.safetensors", specs(models["text_encoder"], "bfloat16"))
    write_file(root / "vae" / "diffusion_pytorch_model.safetensors", specs(models["vae"], "bfloat16"))
    return root


# --- a stand-in for the hub ------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """Serves folders as hub model repos on 127.0.0.1 (`with HubServer({"org/name": folder}) as endpoint:`), with
    the endpoints huggingface_hub calls: `GET /api/models/{repo}[/revision/{rev}]` (the file list) and
    `HEAD`/`GET /{repo}/resolve/{rev}/{path}` (with Range). `requests` records (method, path, range, bytes sent)."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[tuple[str, str, str | None, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    def __enter__(self) -> str:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._serve(body=True)

        def do_HEAD(self):
            self._serve(body=False)

        def log_message(self, *args):
            pass

        def _serve(self, body: bool):
            path = unquote(urlsplit(self.path).path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                return self._listing("/".join(parts[2:4]), body)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._file("/".join(parts[:2]), "/".join(parts[4:]), body)
            self._error(404, "EntryNotFound", body)

        def _listing(self, repo: str, body: bool):
            folder = hub.repos.get(repo)
            if folder is None:
                return self._error(404, "RepoNotFound", body)
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            payload = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                  "siblings": [{"rfilename": f} for f in files]}).encode()
            self._send(200, payload, {"Content-Type": "application/json"}, body, None)

        def _file(self, repo: str, rel: str, body: bool):
            folder = hub.repos.get(repo)
            if folder is None:
                return self._error(404, "RepoNotFound", body)
            target = folder / rel
            if not target.is_file():
                return self._error(404, "EntryNotFound", body)
            size = target.stat().st_size
            begin, end, status = 0, size - 1, 200
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                first, _, last = wanted[6:].partition("-")
                begin, end, status = int(first), min(int(last) if last else size - 1, size - 1), 206
            with open(target, "rb") as f:
                f.seek(begin)
                payload = f.read(end - begin + 1) if body else b""
            etag = hashlib.sha256(f"{rel}:{size}".encode()).hexdigest()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Length": str(end - begin + 1)}
            if status == 206:
                headers["Content-Range"] = f"bytes {begin}-{end}/{size}"
            self._send(status, payload, headers, body, wanted)

        def _error(self, status: int, code: str, body: bool):
            self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code,
                                                                      "Content-Type": "application/json"}, body, None)

        def _send(self, status: int, payload: bytes, headers: dict, body: bool, wanted: str | None):
            hub.requests.append((self.command, urlsplit(self.path).path, wanted, len(payload) if body else 0))
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler
