"""The peers' published rules, simulated on the same sizes as ours: whole components (diffusers' ComponentsManager,
ComfyUI's `free_memory` and its older least-recently-used rule: `PEERS`) and blocks (diffusers' group offloading,
mmgp's evenly spread resident blocks). Pure; each returns a schedule in our formats (`planner.budget.components.
Schedule`, `planner.budget.blocks.BlockSchedule`)."""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Iterable, Mapping, Sequence

from planner.blocknames import REST
from planner.budget.blocks import BlockSchedule, Model, uncompressed
from planner.budget.components import DEVICE, Problem, Schedule, budgeted, run_rule


def components_manager(uses: Sequence[str], sizes: Mapping[str, int], budget: int, calls: int = 1, *,
                       resident: Iterable[str] = (), device: str = DEVICE) -> Schedule:
    """diffusers' modular `ComponentsManager.enable_auto_cpu_offload` (`modular_pipelines/components_manager.py`,
    `CustomOffloadHook` and `AutoOffloadStrategy`, diffusers 0.42.1), on whole components.

    Every component has a hook; a component already on the device runs as it is. Otherwise, with other hooked
    components on the device: when its size is below the free memory it loads; if not, every combination of
    those on the device (largest first, then in component order) is tried, and the one with the smallest total
    that frees at least the shortfall is evicted (the first found among equal totals, so fewer components win); no
    combination frees enough: all of them go. No look-ahead, and nothing is offloaded at the end of a call.
    Its reserve margin (`memory_reserve_margin`, 3 GB by default) is modelled as part of the budget: the budget
    is the device's free memory minus the margin, so free memory here is the budget minus the resident bytes;
    its comparison stays strict, so a component that exactly fills the rest still evicts (the smallest).
    `resident` components are outside the manager, on the device for good. Its evictions copy their bytes back.
    """
    problem = budgeted(uses, sizes, calls, budget, resident, device)
    return run_rule("components_manager", problem, _ComponentsManager(problem), True)


class _ComponentsManager:
    def __init__(self, problem: Problem):
        self.problem = problem
        self.hooked = [name for name in problem.sizes if name not in problem.fixed]  # the manager's order

    def evict(self, position, name, resident):
        if name in resident:
            return ()
        hooks = [n for n in self.hooked if n in resident]
        if not hooks:
            return ()
        sizes = self.problem.sizes
        free = self.problem.room - self.problem.weight(resident)
        if sizes[name] < free:
            return ()
        shortfall = sizes[name] - free
        best, best_size = None, None
        by_size = sorted(hooks, key=lambda n: sizes[n], reverse=True)  # stable, as its sorted dict
        for count in range(1, len(by_size) + 1):
            for candidate in combinations(by_size, count):
                total = sum(sizes[n] for n in candidate)
                if total >= shortfall and (best is None or total < best_size):
                    best, best_size = candidate, total
        return tuple(hooks) if best is None else tuple(n for n in hooks if n in best)


def comfyui(uses: Sequence[str], sizes: Mapping[str, int], budget: int, calls: int = 1, *,
            resident: Iterable[str] = (), device: str = DEVICE) -> Schedule:
    """ComfyUI's `load_models_gpu` / `free_memory` (`comfy/model_management.py` as of 2025), whole models.

    Models stay loaded across calls while they fit. Before a model is used, models are unloaded until the free
    memory exceeds what it needs (its size, or nothing when it is loaded already), in the order `free_memory`
    sorts them: (memory already offloaded, reference count, size, list position). Whole models have nothing
    offloaded and equal reference counts are assumed, so the smallest model goes first and, among equal sizes,
    the most recently requested (position 0 is the newest). Its reserves (`minimum_inference_memory`, the 10 %
    over a model's size) are modelled as part of the budget; partial loading and unloading are left out (issue
    9). Its unloads copy their bytes back. See `comfyui_lru` for the least-recently-used rule."""
    problem = budgeted(uses, sizes, calls, budget, resident, device)
    sizes = problem.sizes
    return run_rule("comfyui", problem, _ComfyUI(problem, lambda loaded: [
        n for _, _, n in sorted((sizes[n], i, n) for i, n in enumerate(loaded))]), True)


def comfyui_lru(uses: Sequence[str], sizes: Mapping[str, int], budget: int, calls: int = 1, *,
                resident: Iterable[str] = (), device: str = DEVICE) -> Schedule:
    """Keep models loaded while they fit, unload the least recently requested first: ComfyUI's `free_memory`
    before it sorted by size (it walked `current_loaded_models` from the end), as its forks still do, and the
    rule usually quoted for ComfyUI. Same loading, reserves and copies as `comfyui`."""
    problem = budgeted(uses, sizes, calls, budget, resident, device)
    return run_rule("comfyui_lru", problem, _ComfyUI(problem, lambda loaded: list(reversed(loaded))), True)


class _ComfyUI:
    def __init__(self, problem: Problem, victim_order: Callable[[list[str]], list[str]]):
        self.problem, self.victim_order = problem, victim_order
        self.loaded: list[str] = []  # `current_loaded_models`: the most recently requested first

    def evict(self, position, name, resident):
        needed = 0 if name in resident else self.problem.sizes[name]
        if name in self.loaded:  # a model asked for again leaves the list (and the candidates) and goes first
            self.loaded.remove(name)
        free = self.problem.room - self.problem.weight(resident)
        victims = []
        for victim in self.victim_order(self.loaded):
            if free > needed:
                break
            victims.append(victim)
            free += self.problem.sizes[victim]
        self.loaded = [n for n in self.loaded if n not in victims]
        self.loaded.insert(0, name)
        return tuple(victims)


# The peers simulated beside ours, named after their source; each takes (uses, sizes, budget, calls, resident=).
PEERS: dict[str, Callable[..., Schedule]] = {"components_manager": components_manager, "comfyui": comfyui,
                                             "comfyui_lru": comfyui_lru}


def group_offloading(model: Model) -> BlockSchedule:
    """diffusers' group offloading at block level (`apply_group_offloading(offload_type="block_level",
    num_blocks_per_group=1, use_stream=True)` on every component, diffusers 0.42): the groups are a component's
    top-level ModuleList children (`down_blocks.1`, `transformer_blocks.7`); everything else (a CLIP or T5
    encoder whole, a vae whole, a unet's mid block) is one unmatched group, onloaded for the forward. Each forward
    streams every group it runs, the next one prefetched on a side stream; nothing stays between forwards. It
    takes no budget: `over_budget` says when it passes ours."""
    flat = uncompressed(model, {c: _top_level_groups(b) for c, b in model.blocks.items()})
    keep = {key: (False,) * len(flat.runs_of[key]) for key in flat.keys}
    held = {key: (key[1] == REST,) * len(flat.runs_of[key]) for key in flat.keys}
    return BlockSchedule(flat, keep, held, "group_offloading", note="streams every group every forward")


def _top_level_groups(blocks: Mapping[str, int]) -> dict[str, int]:
    """A component's blocks as group offloading groups them: `name.N` (a top-level ModuleList's child) stays a
    block, everything else joins REST."""
    found = {REST: 0}
    for name, size in blocks.items():
        parts = name.split(".")
        if len(parts) == 2 and parts[1].isdigit():
            found[name] = size
        else:
            found[REST] += size
    return found


def mmgp(model: Model) -> BlockSchedule:
    """mmgp's rule (`offload.py`: `budgets`, `tune_preloading`, and `unload_all` whenever a model that is not a
    cotenant of the loaded ones becomes active), per call: a component that fits the budget is loaded whole for
    its forwards; a denoiser that does not keeps REST and as many blocks as the budget allows, spread evenly
    between the streamed ones, over its steps, the next streamed block prefetched; a component that does not fit
    and is no denoiser streams its blocks. Switching to the denoiser and back unloads everything, so every model
    is loaded again each call. The count is the largest whose schedule keeps within the budget; none fits: the
    schedule with none, over the budget."""
    flat = uncompressed(model)
    total = {c: sum(b.values()) for c, b in model.blocks.items()}
    whole = {c for c in total if model.resident_bytes + total[c] <= model.budget}
    candidates = [key for key in flat.keys if key[0] in model.denoisers and key[0] not in whole and key[1] != REST]
    best = None
    for count in range(len(candidates), -1, -1):
        chosen = {candidates[i] for i in _spread(len(candidates), count)}
        keep, held = {}, {}
        for key in flat.keys:
            runs_ = flat.runs_of[key]
            stays = key[0] in whole or key[1] == REST or key in chosen
            held[key] = (stays,) * len(runs_)
            # kept from one forward to the next of the same use (a denoiser's steps), dropped when the use ends
            keep[key] = tuple(stays and j + 1 < len(runs_) and flat.passes[runs_[j + 1]].use ==
                              flat.passes[runs_[j]].use for j in range(len(runs_)))
        best = BlockSchedule(flat, keep, held, "mmgp",
                             note=f"{count} of {len(candidates)} denoiser blocks kept over the steps" if candidates
                             else "every model loaded whole each call")
        if not best.over_budget:
            break
    return best


def _spread(total: int, count: int) -> list[int]:
    """`count` indices out of `total`, spread evenly (the middle of each of `count` equal stretches)."""
    return [int((i + 0.5) * total / count) for i in range(count)] if count else []
