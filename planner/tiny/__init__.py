"""Tiny random-weight diffusers pipelines of the library's families, built from configs, seeded, saved with
`save_pretrained`: test and demo tools (`planner tiny KIND FOLDER`), not executor code.

No hub access ever: tokenizers are written locally (`tokenizers.py`), encoders and denoisers are built from small
configs (`encoders.py`, `unets.py`, `dits.py`, `video.py`, each taking its shapes from diffusers' own tests). Each
build is saved as the library plan it serves loads it: with the plan's `variant` (beside float32 files, as the hub
keeps both) or, for a plan without one, in the plan's `torch_dtype`; so `planner apply plans/<family>.yaml --source
FOLDER --dry-run` runs that plan unchanged. A call runs in well under a second on a CPU.

Importing this module loads no torch: the CLI reads `KINDS` and asks `folder_problem` before any work.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

MARKER = ".tiny-kind"  # "building" while a build runs, the kind once it is finished
BUILDING = "building"


@dataclass(frozen=True)
class Kind:
    """A tiny build: the diffusers class it makes, where its builder lives (`module:function` in this package),
    the library plans (plans/NAME.yaml) it is made for, how those plans load it, and what a call needs."""

    pipeline: str
    builder: str
    plans: tuple[str, ...]
    torch_dtype: str | None = None  # the plans' torch_dtype: the weights' dtype, or the variant files' dtype
    variant: str | None = None  # the plans' variant: saved as `*.{variant}.safetensors` beside the float32 files
    image: str | None = None  # what the call's --image is, for pipelines that need one
    call_args: tuple[str, ...] = ()  # `planner apply` flags a quick call needs: the class's default size is large

    def hint(self) -> str:
        """The flags to call this build with beyond the plan and --source, or ""."""
        return " ".join((*(("--image", "IMAGE") if self.image else ()), *self.call_args))


SMALL = ("--height", "16", "--width", "16")
# The registry: kind name -> Kind, named after the families (the first three are the original kinds). Sizes in
# call_args: Flux's default is 128 px (4,096 tokens: seconds a call), Wan's 480x832x81, LTX-Video's 512x704x161
# (and a multiple of 32), AuraFlow's 1024 px (its tiny position embedding covers 64 px); the SDXL refiner's
# strength of 0.3 runs no step out of 2.
KINDS: dict[str, Kind] = {
    "sd": Kind("StableDiffusionPipeline", "unets:sd", ("stable-diffusion-1.5", "stable-diffusion-2.1"),
               "float16", "fp16"),
    "sdxl": Kind("StableDiffusionXLPipeline", "unets:sdxl", ("sdxl-base",), "float16", "fp16"),
    "controlnet": Kind("StableDiffusionControlNetPipeline", "unets:controlnet", ("controlnet-sd-1.5",),
                       "float16", "fp16", image="the control image"),
    "controlnet-sdxl": Kind("StableDiffusionXLControlNetPipeline", "unets:controlnet_sdxl", ("controlnet-sdxl",),
                            "float16", "fp16", image="the control image"),
    "sdxl-refiner": Kind("StableDiffusionXLImg2ImgPipeline", "unets:sdxl_refiner", ("sdxl-refiner",),
                         "float16", "fp16", image="the image to refine", call_args=("--steps", "4")),
    "sd3": Kind("StableDiffusion3Pipeline", "dits:sd3", ("sd3-medium",), "float16"),
    "flux": Kind("FluxPipeline", "dits:flux", ("flux.1-dev", "flux.1-schnell"), "bfloat16", call_args=SMALL),
    "pixart-sigma": Kind("PixArtSigmaPipeline", "dits:pixart_sigma", ("pixart-sigma",), "float16"),
    "auraflow": Kind("AuraFlowPipeline", "dits:auraflow", ("auraflow",), "float16", "fp16",
                     call_args=("--height", "64", "--width", "64")),
    "wan-t2v": Kind("WanPipeline", "video:wan_t2v", ("wan-2.1-t2v-14b",), "bfloat16", call_args=SMALL),
    "wan-i2v": Kind("WanImageToVideoPipeline", "video:wan_i2v", ("wan-2.1-i2v-14b-480p",), "bfloat16",
                    image="the first frame", call_args=SMALL),
    "cogvideox": Kind("CogVideoXPipeline", "video:cogvideox", ("cogvideox-5b",), "bfloat16"),
    "ltx-video": Kind("LTXPipeline", "video:ltx_video", ("ltx-video",), "bfloat16",
                      call_args=("--height", "32", "--width", "32")),
}


def assemble(cls, **parts):
    """`cls(**parts)` for a builder, leaving out the None parts that this diffusers' `cls` does not take: optional
    components added to a class after the dependency floor (FLUX.1's and SD3's IP-Adapter image encoder, Wan's
    transformer_2) are None in every tiny build."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{name: part for name, part in parts.items() if part is not None or name in accepted})


class FolderInUse(ValueError):
    """The folder holds something a tiny build did not write; building there would overwrite it."""


class Unavailable(RuntimeError):
    """The installed diffusers is older than the family: it has no class for this kind."""


def unavailable(kind: str) -> str | None:
    """Why the installed diffusers cannot build `kind` (one of KINDS), or None. Imports diffusers."""
    import diffusers

    if getattr(diffusers, KINDS[kind].pipeline, None) is None:
        return (f"tiny {kind} needs a diffusers with {KINDS[kind].pipeline}; diffusers {diffusers.__version__} has "
                "none: upgrade diffusers")
    return None


def build(kind: str, folder: str | Path) -> Path:
    """Build the tiny pipeline `kind` (one of KINDS) and save it to `folder`; returns the folder.

    A folder that already holds a finished tiny build of this kind is reused as it is. A missing or empty
    folder, or a previous tiny build (of another kind, or interrupted) holding nothing else, is (re)built;
    anything else raises `FolderInUse` and is left untouched. A diffusers too old for the family raises
    `Unavailable` before anything is touched.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny pipeline {kind!r}: choose one of {', '.join(KINDS)}")
    folder = Path(folder)
    if built(kind, folder):
        return folder
    reason = unavailable(kind)
    if reason:
        raise Unavailable(reason)
    problem = folder_problem(folder)
    if problem:
        raise FolderInUse(problem)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():  # a previous tiny build and nothing else (checked above)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / MARKER).write_text(BUILDING)  # first: an interrupted build is still recognised as ours
    with tempfile.TemporaryDirectory() as scratch:
        _save(_pipeline(KINDS[kind], Path(scratch)), KINDS[kind], folder, Path(scratch))
    (folder / MARKER).write_text(kind)
    return folder


def _pipeline(kind: Kind, scratch: Path):
    """The float32 pipeline `kind`'s builder makes (tokenizer files written to `scratch` on the way)."""
    module, function = kind.builder.split(":")
    return getattr(importlib.import_module(f"planner.tiny.{module}"), function)(scratch)


def _save(pipe, kind: Kind, folder: Path, scratch: Path) -> None:
    """Save as the plans load it: float32 files plus `variant` files in torch_dtype, or (no variant) the weights in
    torch_dtype only, as the hub keeps them (SD 1.5 and SDXL carry fp16 variants; FLUX.1 ships bf16 weights). The
    torch_dtype files are what `from_pretrained(torch_dtype=...)` makes of the float32 ones, so the modules a class
    keeps in float32 (Wan's norms and time embedding, T5's `wo` in float16) are stored as it loads them. With a
    variant, the float32 files are written last: transformers records a dtype in config.json, which the variant
    files share, and the hub's says float32 (so does a load without torch_dtype)."""
    if not kind.torch_dtype:
        pipe.save_pretrained(folder)
        return
    import torch

    full = scratch / "float32"
    pipe.save_pretrained(full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `torch_dtype` is being renamed; the floor knows only it
        cast = type(pipe).from_pretrained(full, torch_dtype=getattr(torch, kind.torch_dtype))
    cast.save_pretrained(folder, variant=kind.variant)
    if kind.variant:
        pipe.save_pretrained(folder)


def built(kind: str, folder: str | Path) -> bool:
    """Whether `folder` holds a finished tiny build of `kind` (which `build` reuses)."""
    return _marker(Path(folder)) == kind and (Path(folder) / "model_index.json").is_file()


def folder_problem(folder: str | Path) -> str | None:
    """Why a tiny build must not be written to `folder`, or None: a missing or empty folder is fine, and so is a
    previous tiny build (any kind, or interrupted) holding nothing else. Imports no torch: the CLI asks first."""
    folder = Path(folder)
    try:
        if not folder.exists():
            return None
        if not folder.is_dir():
            return f"{str(folder)!r} is a file, not a folder"
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        return f"cannot read {str(folder)!r}: {exc.strerror or exc}"
    marker = _marker(folder)
    if not entries or marker == BUILDING:
        return None
    if marker is None:
        return (f"{str(folder)!r} is not empty and holds no tiny build ({_some(entries)}): building there would "
                "overwrite it")
    foreign = sorted(set(entries) - _build_entries(folder))
    if foreign:
        return f"{str(folder)!r} holds a tiny build and other files ({_some(foreign)}) that a rebuild would delete"
    return None


def _marker(folder: Path) -> str | None:
    """What the marker of a tiny build in `folder` says (a kind, or BUILDING), or None when there is none."""
    try:
        text = (folder / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text in KINDS or text == BUILDING else None


def _build_entries(folder: Path) -> set[str]:
    """What a finished tiny build holds: model_index.json, the marker, one folder per component it names."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    components = {name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)} \
        if isinstance(index, dict) else set()
    return {"model_index.json", MARKER, "_tok"} | components  # `_tok`: tokenizer files of older builds


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
