"""Read a pipeline folder's sizes from its safetensors headers (planner.folder), against loading the same folder with
diffusers' `DiffusionPipeline.from_pretrained`, in the same run, and print the ratio. Not a test: it prints, it
never asserts.

    .venv/bin/python benchmarks/inspect_speed.py [--kind sdxl] [--reads 50] [--loads 5] [--processes 5] [--no-sdxl]

- The folder: a tiny random-weight pipeline (`planner tiny`), by default SDXL's four models (text_encoder,
  text_encoder_2, unet, vae).
- In process (imports done): median of `--reads` header reads against median of `--loads` loads.
- Whole processes (what `planner inspect` costs a user): `python -c "read"` against `python -c "from_pretrained"`,
  median of `--processes` runs each.
- SDXL-sized: the headers of SDXL base's four models at fp16 (6.9 GB described by sparse files, tests/headers.py)
  read in process; loading them is not timed, the files hold no weights.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _progress import progress  # noqa: E402

READ = "import sys; from planner.folder import reader; s, p = reader.read(sys.argv[1]); assert s and not p"
LOAD = "import sys; from diffusers import DiffusionPipeline; DiffusionPipeline.from_pretrained(sys.argv[1])"


def seconds(action, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(action, repeat: int) -> float:
    return statistics.median(seconds(action, repeat))


def whole_process(code: str, folder: Path, repeat: int) -> float:
    def run():
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, cwd=ROOT, capture_output=True)

    return median_seconds(run, repeat)


def in_process(folder: Path, reads: int, loads: int) -> tuple[float, float]:
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging
    from transformers.utils import logging as transformers_logging

    from planner.folder import reader as sizes

    logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    found, problems = sizes.read(folder)
    assert found and not problems, problems
    DiffusionPipeline.from_pretrained(folder)  # warm: imports, file cache
    progress(f"timing {reads} header reads")
    t_read = median_seconds(lambda: sizes.read(folder), reads)
    progress(f"timing {loads} loads with DiffusionPipeline.from_pretrained")
    t_load = median_seconds(lambda: DiffusionPipeline.from_pretrained(folder), loads)
    return t_read, t_load


def _sizes_of(folder: Path):
    from planner.folder import reader as sizes

    found, problems = sizes.read(folder)
    assert found and not problems, problems
    return found


def sdxl_sized(root: Path, reads: int) -> tuple[list[float], int, int]:
    import headers

    from planner.folder import reader as sizes

    progress("writing SDXL-sized sparse files (builds the four models on the meta device)")
    folder = headers.sdxl(root / "sdxl")
    found, problems = sizes.read(folder, variant="fp16")
    assert found and not problems, problems
    progress(f"timing {reads} header reads of the SDXL-sized folder")
    times = seconds(lambda: sizes.read(folder, variant="fp16"), reads)
    return times, sum(c.bytes for c in found.components.values()), sum(len(c.tensors)
                                                                         for c in found.components.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    from planner import tiny

    parser.add_argument("--kind", default="sdxl", choices=tiny.KINDS, help="the tiny pipeline to time")
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--no-sdxl", action="store_true", help="skip the SDXL-sized folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        progress(f"building the tiny {args.kind} pipeline")
        folder = tiny.build(args.kind, Path(tmp) / f"tiny-{args.kind}")
        models = list(_sizes_of(folder).components)
        t_read, t_load = in_process(folder, args.reads, args.loads)
        progress(f"timing whole processes ({args.processes} runs each)")
        p_read = whole_process(READ, folder, args.processes)
        p_load = whole_process(LOAD, folder, args.processes)
        big = None if args.no_sdxl else sdxl_sized(Path(tmp), args.reads)
    print(f"tiny {args.kind} pipeline, {len(models)} models ({', '.join(models)}), same run")
    print(f"in process    : headers {t_read * 1000:8.2f} ms   from_pretrained {t_load * 1000:8.1f} ms   "
          f"ratio {t_read / t_load:.4f}")
    print(f"whole process : planner {p_read * 1000:8.1f} ms   diffusers       {p_load * 1000:8.1f} ms   "
          f"ratio {p_read / p_load:.3f}")
    if big:
        times, total, count = big
        print(f"SDXL base fp16, 4 models, {count} tensors, {total / 1e9:.2f} GB described: headers "
              f"{statistics.median(times) * 1000:.1f} ms (median), {min(times) * 1000:.1f} ms (best)")


if __name__ == "__main__":
    main()
