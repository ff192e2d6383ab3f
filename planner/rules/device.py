"""The device a plan loads components to: `device` and `gpu_id` (PLN202-205), checked without importing torch.

`device_problems` also serves the executor, which re-checks a `Plan` built by hand; the schema's own errors on
these two keys are left to it, so each mistake is said once, with its reason.
"""

from __future__ import annotations

import re
from typing import Callable

from planner.rules import PLN202, PLN203, PLN204, PLN205, Rule
from planner.rules.context import Context, did_you_mean

# Device types torch knows as accelerators; kept here so that validating never imports torch.
ACCELERATORS = ("cuda", "xpu", "mps", "npu", "hpu", "mlu", "musa", "mtia", "xla", "ipu", "maia", "privateuseone",
                "hip", "ve", "lazy", "vulkan")
NOT_TARGETS = ("cpu", "meta", "disk")
# torch keeps a device index in 8 bits: cuda:128 wraps to -128 and 256 to 0, so 127 is the largest real index.
MAX_DEVICE_INDEX = 127
_DEVICE = re.compile(r"([a-z][a-z0-9_]*)(?::([0-9]+))?")  # fullmatch: "cuda\n" is no device
# What people write for a device type, and the torch type that means it (ROCm builds of torch use `cuda`).
_DEVICE_SYNONYMS = {"gpu": "cuda", "nvidia": "cuda", "rocm": "cuda", "amd": "cuda", "metal": "mps", "apple": "mps",
                    "intel": "xpu", "tpu": "xla", "gaudi": "hpu", "habana": "hpu", "ascend": "npu"}
_DEVICE_GUESS = re.compile(r"\s*([A-Za-z][A-Za-z_]*?)[\s:_\-]*([0-9]*)\s*")
_COMMON = frozenset(ACCELERATORS)  # a bare accelerator type: valid, with any gpu_id from 0 to 127 or none

Found = tuple[str, Rule, str, "str | None"]  # (key, rule, message, fix: None for the rule's own)


def check(ctx: Context) -> None:
    device, gpu_id = ctx.data.get("device"), ctx.data.get("gpu_id")
    if type(device) is str and device in _COMMON and (gpu_id is None or _is_index(gpu_id)):
        return  # the common case, where `device_problems` finds nothing
    for key, rule, message, fix in device_problems(device, gpu_id, lambda key, value: ctx.describe((key,), value)):
        ctx.add((key,), rule, message, fix)


def _shown(key: str, value) -> str:
    return repr(value)


def device_problems(device, gpu_id, shown: Callable[[str, object], str] = _shown) -> list[Found]:
    """(key, rule, message, fix) for a device and gpu_id that cannot be a plan's target, fix None for the rule's
    own; `shown(key, value)` writes a value in a message. `plan.problem(*found)` makes each a located problem."""
    found = [] if device is None else _device_string(device, shown)  # missing: PLN103
    found += _gpu_id(gpu_id, shown)
    match = _DEVICE.fullmatch(device) if isinstance(device, str) else None
    if match and match.group(2) is not None and _is_index(gpu_id):
        kind = match.group(1)
        found.append(("gpu_id", PLN205, f"gpu_id {gpu_id} is given together with the indexed device {device!r}",
                      f"keep one: `device: {kind}` with `gpu_id: {gpu_id}`, or `device: {device}` alone"))
    return found


def _device_string(device, shown) -> list[Found]:
    match = _DEVICE.fullmatch(device) if isinstance(device, str) else None
    if not match:
        hint = suggest_device(device) if isinstance(device, str) else None
        return [("device", PLN203, f"device {shown('device', device)} is not a device string",
                 did_you_mean([hint]) if hint else None)]
    found: list[Found] = []
    kind, index = match.groups()
    if kind in NOT_TARGETS:
        found.append(("device", PLN202, f"device {device!r} cannot be an offload target", None))
    elif kind not in ACCELERATORS:
        hint = suggest_device(device)
        found.append(("device", PLN203, f"unknown device type {kind!r}",
                      did_you_mean([hint]) if hint else f"write one of {', '.join(ACCELERATORS[:8])}, ..."))
    if index is not None and int(index) > MAX_DEVICE_INDEX:
        found.append(("device", PLN203, f"device index {index} is beyond {MAX_DEVICE_INDEX}, the largest torch "
                      "accepts (it keeps the index in 8 bits: 128 would become -128)",
                      f"write an index from 0 to {MAX_DEVICE_INDEX}, such as "
                      f"`{kind if kind in ACCELERATORS else 'cuda'}:1`"))
    elif index is not None and len(index) > 1 and index[0] == "0":
        found.append(("device", PLN203, f"device {device!r} has an index with a leading zero, which torch refuses",
                      f"write `{kind}:{int(index)}`"))
    return found


def _gpu_id(gpu_id, shown) -> list[Found]:
    if gpu_id is None:
        return []
    if isinstance(gpu_id, bool) or not isinstance(gpu_id, int) or gpu_id < 0:
        return [("gpu_id", PLN204, f"gpu_id must be a non-negative integer, not {shown('gpu_id', gpu_id)}", None)]
    if gpu_id > MAX_DEVICE_INDEX:
        return [("gpu_id", PLN204, f"gpu_id {gpu_id} is beyond {MAX_DEVICE_INDEX}, the largest device index "
                 "torch accepts (it keeps the index in 8 bits: 128 would become -128)",
                 f"write a gpu_id from 0 to {MAX_DEVICE_INDEX}")]
    return []


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DEVICE_INDEX


def suggest_device(device: str) -> str | None:
    """The device string `device` most likely meant (`gpu:0` -> `cuda:0`, `CUDA` -> `cuda`, `cuda0` -> `cuda:0`,
    `metal` -> `mps`), with cuda favoured among close spellings; None when nothing is close."""
    guess = _DEVICE_GUESS.fullmatch(device)
    if not guess:
        return None
    kind, index = guess.group(1).lower(), guess.group(2)
    if kind not in ACCELERATORS and kind not in NOT_TARGETS:
        import difflib  # only a misspelt device needs it

        close = difflib.get_close_matches(kind, ACCELERATORS, n=3, cutoff=0.5)
        kind = _DEVICE_SYNONYMS.get(kind) or ("cuda" if "cuda" in close else (close or [None])[0])
    if kind is None:
        return None
    if index and int(index) <= MAX_DEVICE_INDEX:
        kind = f"{kind}:{int(index)}"
    return kind if kind != device else None
