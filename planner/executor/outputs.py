"""Writing what `planner apply` made: the last image (or a video's frames) and the trace JSON, where it was asked.

Importing this module loads no torch; `write` imports PIL only when there is an image to write. An OSError (a full
disk, a folder gone) is raised as it is: the CLI reports it in one line.
"""

from __future__ import annotations

import json
from pathlib import Path


def write(applied, request, images) -> None:
    """The last image (a video's frames as an animation where the format has them: .png, .gif, .webp; else its
    first frame) and the trace JSON, where the request (a `planner.executor.run.Request`) asks (missing folders
    created)."""
    plan = applied.plan
    if request.out and images:
        from PIL import Image

        Path(request.out).parent.mkdir(parents=True, exist_ok=True)
        first, *rest = images
        image_format = Image.registered_extensions().get(Path(request.out).suffix.lower())
        if rest and image_format in Image.SAVE_ALL:
            first.save(request.out, save_all=True, append_images=rest, duration=125, loop=0)
        else:
            first.save(request.out)
    if request.trace_json:
        Path(request.trace_json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"plan": plan.path, "sequence": list(plan.sequence), "exclude": sorted(plan.exclude),
                   "dry_run": request.dry_run, "skipped": list(applied.skipped), **applied.trace.to_json()}
        Path(request.trace_json).write_text(json.dumps(payload, indent=2) + "\n")
