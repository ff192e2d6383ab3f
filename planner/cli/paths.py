"""Whether a command can use the paths it was given, found before any work: each check returns why not, or None.

Nothing is written, nothing is raised: a folder that cannot be reached, a file that cannot be written, an output
that would destroy an input, an image PIL cannot read or write are each one message for the command to exit 2 with.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

from planner.report.common import visible


def apply_path_problem(args) -> str | None:
    """The first input or output path `apply` could not use, found now rather than after loading and generating."""
    for flag, value in (("--out", args.out), ("--trace-json", args.trace_json)):
        problem = output_problem(value) if value is not None else None
        if problem:
            return f"{flag}: {problem}"
    if args.out is not None and (problem := _image_format_problem(args.out)):
        return f"--out: {problem}"
    if args.out and args.trace_json and os.path.abspath(args.out) == os.path.abspath(args.trace_json):
        return f"--out and --trace-json name the same file {args.out!r}: give each its own"
    if args.image is not None and (problem := _image_problem(args.image)):
        return f"--image: {problem}"
    return None


def clobbers(output: str, files: list, folders: list) -> str | None:
    """Why writing `output` would destroy an input of the run, or None: it is one of the `files` read (the plan, an
    image), or an existing file inside one of the model `folders` (its model_index.json, a weights file)."""
    if not os.path.lexists(output):
        return None
    try:
        target = Path(output).resolve()
        for name in files:
            if name and os.path.exists(name) and os.path.samefile(name, output):
                return f"{visible(output)!r} is {visible(name)!r}, which this run reads: name another file"
        for folder in folders:
            root = Path(folder).resolve()
            if root in target.parents:
                return (f"{visible(output)!r} is a file of {visible(folder)!r}, the model folder this run reads: "
                        "name a file outside it")
    except (OSError, RuntimeError):  # a path that cannot be resolved is for output_problem to name
        return None
    return None


def _nearest(path: Path) -> tuple[Path, os.stat_result]:
    """`path` or its nearest ancestor that exists, with its stat; raises OSError (no permission to look) or
    ValueError (a NUL byte)."""
    for place in (path, *path.parents):
        try:
            return place, os.stat(place)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return Path("."), os.stat(".")  # a relative path's parents end at "." itself


def _creatable_in(folder: Path) -> str | None:
    """Why nothing can be created in the existing `folder`, found by doing it: an unnamed temporary file is opened
    there and vanishes (permission bits alone would pass for root, and miss a read-only file system)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"cannot create files in {str(folder)!r}: {exc.strerror or exc}"


def output_problem(path: str) -> str | None:
    """Why a file could not be written at `path` when the run ends, or None. Missing folders are fine (they are
    created then) when the nearest existing one lets us create an entry; nothing is written now."""
    if not path:
        return "an empty path: name a file"
    if path.endswith(("/", os.sep)):
        return f"{path!r} names a folder: name a file in it"
    try:
        place, info = _nearest(Path(path))
    except (OSError, ValueError) as exc:
        return f"cannot reach {path!r}: {getattr(exc, 'strerror', None) or exc}"
    if place == Path(path):
        if stat.S_ISDIR(info.st_mode):
            return f"{path!r} is a folder: name a file in it"
        if stat.S_ISREG(info.st_mode):
            try:
                open(path, "ab").close()  # opening to append changes neither the content nor the time stamps
            except OSError as exc:
                return f"{path!r} cannot be written: {exc.strerror or exc}"
        return None  # an existing special file (/dev/null, a pipe from the shell) is the user's choice
    if not stat.S_ISDIR(info.st_mode):
        return f"{str(place)!r} is a file, so {path!r} cannot be created under it"
    return _creatable_in(place)


def folder_problem(path: str) -> str | None:
    """Why the folder `path` could not be created or written to, or None; like `output_problem` for a folder."""
    if not path:
        return "the folder is an empty string: name a folder"
    try:
        place, info = _nearest(Path(path))
    except (OSError, ValueError) as exc:
        return f"cannot reach {path!r}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISDIR(info.st_mode):
        if place == Path(path):
            return f"{path!r} is a file, not a folder"
        return f"{str(place)!r} is a file, so {path!r} cannot be created under it"
    return _creatable_in(place)


def _image_format_problem(path: str) -> str | None:
    """Why PIL could not write the RGB image to `path` (an extension it does not know or cannot write an RGB
    image in), found by writing a tiny image in that format to memory."""
    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        return (f"{path!r} has {f'the extension {extension!r}' if extension else 'no extension'}, which names no "
                "image format PIL can write: use .png, .jpg or .webp")
    try:
        Image.new("RGB", (8, 8)).save(io.BytesIO(), format=image_format)
    except Exception as exc:  # a plugin without a save handler, or one that takes no RGB images
        return f"PIL cannot write an RGB image as {image_format} ({exc}): use .png, .jpg or .webp"
    return None


def _image_problem(path: str) -> str | None:
    """Why `path` is not an image PIL can read, or None; reads the header only."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        return f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path!r} is {'a folder' if stat.S_ISDIR(info.st_mode) else 'not a regular file'}: name an image"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except UnidentifiedImageError:
        return f"{path!r} is not an image PIL can read"
    except Exception as exc:  # an image too large to decode safely, an unreadable file
        return f"cannot read {path!r} as an image: {type(exc).__name__}: {exc}"
