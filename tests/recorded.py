"""What every command prints, recorded: the commands, how they run, and how their output is made comparable.

`scripts/record_outputs.py` runs `commands()` and writes `tests/data/recorded.json`; `tests/test_recorded.py` runs
them again and compares stdout, stderr and the exit status byte for byte. The inputs: every plan file of `plans/` and
`tests/data`, the header-only real-sized folders (`tests/headers.py`), the `simulate` rows the README shows, and
`apply --dry-run` on a tiny Stable Diffusion build. Paths of the folders built for the run read `<FOLDERS>`; the
seconds an apply call took read `<S>s` (the only figure that is measured, not computed).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
RECORDED = DATA / "recorded.json"
PLACEHOLDER = "<FOLDERS>"

SDXL_SIZES = "text_encoder=246120960,text_encoder_2=1389319680,unet=5134927368,vae=167307726,image_encoder=none"
SD3_SIZES = ("text_encoder=247300608,text_encoder_2=1389319680,text_encoder_3=11537887232,transformer=4169902208,"
             "vae=167639366,image_encoder=none")


def plan_files() -> list[str]:
    """Every plan file of the library and of the test corpus, relative to the repository."""
    found = []
    for folder in ("plans", "plans/examples", "tests/data/good", "tests/data/warned", "tests/data/bad"):
        found += sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*.yaml"))
    return found


def commands(folders: dict[str, str]) -> list[list[str]]:
    """The command lines recorded. `folders`: {"sdxl", "flux"} header-only folders, "tiny-sd" a tiny SD build,
    "plan-blocks" a block plan for it, "scratch" a folder for outputs."""
    sdxl, flux, tiny, scratch = folders["sdxl"], folders["flux"], folders["tiny-sd"], folders["scratch"]
    found: list[list[str]] = [["--version"], ["schema"]]
    for target in ("plans", "tests/data/good", "tests/data/warned", "tests/data/bad"):
        found.append(["validate", target])
    for fmt in ("json", "github", "sarif", "junit"):
        found.append(["validate", "tests/data/bad", "tests/data/warned", "--format", fmt])
    found.append(["validate", "--strict", "tests/data/warned"])
    found += [["show", path] for path in plan_files()]
    found += [["show", "plans/no-such-plan.yaml"], ["show", "plans"], ["validate", "no/such/folder"]]
    classes = sorted({_class_of(path) for path in plan_files() if path.startswith("plans/")} - {None})
    found += [["init", "--pipeline-class", cls] for cls in classes]
    found += [["init", "--pipeline-class", "NoSuchPipeline"], ["init", "--pipeline-class", "FluxPipeline",
                                                                 "--dtype", "bfloat16", "--device", "cuda:1"]]
    for source, extra in ((sdxl, []), (sdxl, ["--variant", "fp16", "--dtype", "float16"]), (flux, []),
                          (flux, ["--dtype", "float16"])):
        found.append(["inspect", source, *extra])
        found.append(["inspect", source, *extra, "--format", "json"])
    found += [["inspect", "no/such/folder"], ["inspect", "plans"]]
    found += [["validate", "--model", sdxl, "plans/sdxl-base.yaml", "tests/data/good/block-granularity.yaml"],
              ["validate", "--model", flux, "plans/flux.1-dev.yaml", "plans/examples/flux.1-dev-16gib-blocks.yaml"],
              ["validate", "--model", flux, "plans/flux.1-dev.yaml", "--format", "json"],
              ["validate", "--model", sdxl, "plans/flux.1-dev.yaml"],
              ["init", "--model", sdxl, "--dtype", "float16", "--variant", "fp16"],
              ["init", "--model", flux]]
    sim = ["simulate", "plans/sdxl-base.yaml"]
    found += [[*sim, "--budget", "6GiB", "--sizes", SDXL_SIZES],
              [*sim, "--budget", "6GiB", "--sizes", SDXL_SIZES, "--format", "json"],
              [*sim, "--budget", "1GiB", "--sizes", SDXL_SIZES],
              [*sim, "--budget", "6GiB", "--sizes", "unet=1GiB"],
              ["simulate", "plans/sd3-medium.yaml", "--sizes", SD3_SIZES, "--budget", "16GiB", "--calls", "3"],
              [*sim, "--model", sdxl, "--budget", "6GiB", "--granularity", "block", "--steps", "30",
               "--host-spare", "8GiB", "--block-ms", "2"],
              [*sim, "--model", sdxl, "--budget", "6GiB", "--granularity", "block", "--steps", "30",
               "--host-spare", "8GiB", "--block-ms", "2", "--format", "json"],
              [*sim, "--model", sdxl, "--budget", "4GiB", "--granularity", "block", "--steps", "30",
               "--host-spare", "8GiB"],
              [*sim, "--model", sdxl, "--budget", "8GiB", "--host-spare", "8GiB"],
              ["simulate", "plans/examples/flux.1-dev-16gib-blocks.yaml", "--model", flux, "--steps", "28",
               "--host-spare", "0"],
              ["simulate", "plans/examples/flux.1-dev-16gib-blocks.yaml", "--model", flux, "--budget", "12GiB",
               "--no-prefetch", "--host-spare", "64GiB", "--bandwidth", "25", "--block-ms", "5"],
              [*sim, "--budget", "6GiB", "--steps", "3", "--sizes", SDXL_SIZES],
              [*sim, "--budget", "6GiB", "--granularity", "block", "--sizes", SDXL_SIZES],
              [*sim, "--sizes", SDXL_SIZES],
              [*sim, "--budget", "6gb", "--sizes", SDXL_SIZES]]
    tiny_plan = "plans/examples/tiny-sd.yaml"
    apply = ["apply", tiny_plan, "--source", tiny, "--dry-run", "--quiet"]
    found += [[*apply, "--calls", "2"],
              [*apply, "--calls", "2", "--events"],
              [*apply, "--calls", "3", "--policy", "budget", "--budget", "600KiB", "--events"],
              [*apply, "--policy", "budget", "--budget", "1KiB"],
              [*apply, "--policy", "budget"],
              ["apply", folders["plan-blocks"], "--source", tiny, "--dry-run", "--quiet", "--calls", "2",
               "--steps", "3"],
              [*apply, "--out", f"{scratch}/image.txt"],
              [*apply, "--device", "cpu"]]
    return found


def _class_of(path: str) -> str | None:
    import yaml

    try:
        doc = yaml.safe_load((ROOT / path).read_text())
    except Exception:  # noqa: BLE001 - the corpus holds broken plans on purpose
        return None
    pipeline = doc.get("pipeline") if isinstance(doc, dict) else None
    cls = pipeline.get("class") if isinstance(pipeline, dict) else None
    return cls if isinstance(cls, str) else None


TINY_BLOCK_PLAN = """\
version: 1
device: cuda
policy: budget
budget: 500KiB
granularity: block
steps: 3
components:
  text_encoder: {}
  unet: {after: [text_encoder]}
  vae: {after: [unet]}
uses: [text_encoder, text_encoder, unet, vae]
exclude: [safety_checker]
"""


def build_inputs(root: Path) -> dict[str, str]:
    """The folders the commands read, built under `root` (header-only SDXL and FLUX, a tiny SD, a block plan)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import headers

    from planner import tiny

    root.mkdir(parents=True, exist_ok=True)
    plan = root / "tiny-sd-blocks.yaml"
    plan.write_text(TINY_BLOCK_PLAN)
    (root / "scratch").mkdir(exist_ok=True)
    return {"sdxl": str(headers.sdxl(root / "sdxl")), "flux": str(headers.flux(root / "flux")),
            "tiny-sd": str(tiny.build("sd", root / "tiny-sd")), "plan-blocks": str(plan),
            "scratch": str(root / "scratch")}


_SECONDS = re.compile(r" *(?<![\w.])[0-9]+\.[0-9]{3}s\b")  # with the padding before it: its width varies
# what a dry run says this host could pin: the host's own memory, which no recording can fix
_SPARE = re.compile(r"(would pin \S+ \S+ of )[0-9.]+ [KMGT]?i?B( the host can spare)")


def normalise(text: str, root: str) -> str:
    """`text` with the run's folders as PLACEHOLDER, the repository as `<ROOT>`, measured seconds as `<S>s` and
    this host's spare memory as `<HOST>`."""
    text = text.replace(root, PLACEHOLDER).replace(str(ROOT), "<ROOT>")
    return _SPARE.sub(r"\1<HOST>\2", _SECONDS.sub(" <S>s", text))


def run(argv: list[str], root: str) -> dict:
    """One command line run in this process from the repository's folder: {"argv", "code", "stdout", "stderr"},
    normalised."""
    import os

    from planner.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(cwd)
    shown = [PLACEHOLDER + a[len(root):] if a.startswith(root) else a for a in argv]
    return {"argv": shown, "code": code, "stdout": normalise(out.getvalue(), root),
            "stderr": normalise(err.getvalue(), root)}
