"""Residency schedules: the optimum against a brute force, every policy within its budget, the peers' rules on
hand-made cases, the documented SDXL figures, and the chain against the executor's trace on tiny pipelines."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache
from itertools import combinations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from planner.budget import peers
from planner.budget.components import BudgetTooSmall, ScheduleError, belady, chain, lower_bound, optimal
from planner.trace import EXCLUSION_ROUND_TRIP

GIB = 1 << 30
SDXL = {"text_encoder": 246144352, "text_encoder_2": 1389382176, "unet": 5135092072, "vae": 167335590}
SDXL_USES = ["text_encoder", "text_encoder_2", "unet", "vae"]
BUDGETED = {"optimal": optimal, "belady": belady, **peers.PEERS}


# -- an independent brute force --------------------------------------------------------------------------------
def brute_force(uses, sizes, budget, calls, resident=()):
    """(bytes, evictions) of the best schedule, by trying every eviction choice before every use: any subset of
    what is resident plus the use, holding the use and fitting. Memoised on (position, resident set)."""
    fixed = {name for name in resident if name in sizes}
    room = budget - sum(sizes[name] for name in fixed)
    order = [name for _ in range(calls) for name in uses if name not in fixed]

    @lru_cache(maxsize=None)
    def best(i, on):
        if i == len(order):
            return (0, 0)
        use = order[i]
        load = 0 if use in on else sizes[use]
        pool = sorted(on - {use})
        options = []
        for count in range(len(pool) + 1):
            for kept in combinations(pool, count):
                after = frozenset(kept) | {use}
                if sum(sizes[name] for name in after) <= room:
                    rest = best(i + 1, after)
                    options.append((rest[0], rest[1] + len(on | {use}) - len(after)))
        cheapest = min(options)
        return (load + cheapest[0], cheapest[1])

    spent, evictions = best(0, frozenset())
    return spent + sum(sizes[name] for name in fixed), evictions


@st.composite
def problems(draw, max_components=8):
    count = draw(st.integers(1, max_components))
    names = [f"m{i}" for i in range(count)]
    sizes = {name: draw(st.integers(0, 60)) for name in names}
    uses = draw(st.lists(st.sampled_from(names), min_size=1, max_size=7))
    calls = draw(st.integers(1, 3))
    resident = draw(st.sets(st.sampled_from(names), max_size=2))
    fixed = sum(sizes[name] for name in resident)
    largest = max((sizes[name] for name in uses if name not in resident), default=0)
    budget = fixed + largest + draw(st.integers(0, sum(sizes.values())))
    return uses, sizes, budget, calls, sorted(resident)


def replay(result, sizes, resident):
    """Walk the events step by step: every use finds its component on the device, the device never holds more
    than the budget, and what each step reports is what the events leave resident."""
    on = set()
    events = iter(result.events)
    fixed = sorted(name for name in resident if name in sizes)
    for name in fixed:
        event = next(events)
        assert (event.event, event.component, event.call) == ("load", name, 1)
        on.add(name)
    for step in result.steps:
        for name in step.evicted:
            event = next(events)
            assert (event.event, event.component, event.call) == ("offload", name, step.call)
            on.remove(name)
        for name in step.loaded:
            event = next(events)
            assert (event.event, event.component, event.call) == ("load", name, step.call)
            on.add(name)
            assert sum(sizes[n] for n in on) <= result.budget
        assert step.component in on and set(step.resident) == on
        assert step.resident_bytes == sum(sizes[n] for n in on) <= result.budget
    assert next(events, None) is None  # a budget policy offloads nothing at the end of a call
    assert set(fixed) <= on


# -- the optimum -----------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(problems())
@example((["a", "b", "c", "d"], {"a": 2, "b": 1, "c": 1, "d": 2}, 4, 1, []))  # evict a, or b and c: one is fewer
def test_optimal_equals_the_brute_force_in_bytes_and_evictions(case):
    uses, sizes, budget, calls, resident = case
    result = optimal(uses, sizes, budget, calls, resident=resident)
    assert result.exact and result.note == ""
    evictions = sum(e.event == "offload" for e in result.events)
    assert (result.h2d_bytes, evictions) == brute_force(uses, sizes, budget, calls, resident)
    bound = lower_bound(uses, sizes, budget, calls, resident=resident)
    assert bound.exact and bound.h2d_bytes == result.h2d_bytes


@settings(max_examples=200, deadline=None)
@given(problems())
def test_every_budget_policy_stays_within_the_budget_and_never_beats_the_optimum(case):
    uses, sizes, budget, calls, resident = case
    best = optimal(uses, sizes, budget, calls, resident=resident).h2d_bytes
    for name, policy in BUDGETED.items():
        result = policy(uses, sizes, budget, calls, resident=resident)
        replay(result, sizes, resident)
        assert result.peak_bytes <= budget and not result.over_budget, name
        assert result.h2d_bytes >= best, name
        assert sum(e.bytes for e in result.events if e.event == "load") == result.h2d_bytes, name
        assert len(result.steps) == calls * len(uses) and len(result.h2d_per_call) == calls


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_the_chain_within_the_budget_never_beats_the_optimum(case, data):
    uses, sizes, budget, calls, resident = case
    free = [name for name in sizes if name not in resident]
    order = data.draw(st.permutations(free))
    sequence = order[: data.draw(st.integers(0, len(order)))]
    result = chain(sequence, uses, sizes, calls, resident=resident, budget=budget)
    assert result.d2h_bytes == sum(e.bytes for e in result.events if e.event == "offload" and e.call <= calls)
    if not result.over_budget:
        assert result.h2d_bytes >= optimal(uses, sizes, budget, calls, resident=resident).h2d_bytes


def test_evictions_copy_nothing_back_when_host_copies_are_kept():
    kept = optimal(SDXL_USES, SDXL, 6 * GIB, 4)
    copied = optimal(SDXL_USES, SDXL, 6 * GIB, 4, keep_host_copy=False)
    assert kept.d2h_bytes == 0 and kept.events == copied.events
    assert copied.d2h_bytes == sum(e.bytes for e in copied.events if e.event == "offload") > 0


def test_eight_components_over_four_calls_are_solved_exactly_at_once():
    sizes = {f"c{i}": 50 + 7 * i for i in range(8)}
    uses = ["c3", "c0", "c7", "c1", "c5", "c2", "c6", "c4"]
    for budget in (200, 300, 400):
        result = optimal(uses, sizes, budget, 4)
        assert result.exact and not result.note  # within MAX_WORK search steps: no fallback, counted not timed


def test_past_its_step_bound_the_optimum_gives_way_to_belady_and_says_so():
    sizes = {f"c{i}": 10 + i for i in range(6)}
    uses = list(sizes) * 2
    result = optimal(uses, sizes, 40, 3, max_work=5)
    assert not result.exact and "Belady" in result.note and "5 steps" in result.note
    assert result.policy == "optimal" and result.events == belady(uses, sizes, 40, 3).events
    assert result.to_json()["note"] == result.note and result.to_json()["exact"] is False
    bound = lower_bound(uses, sizes, 40, 3, max_work=5)
    assert not bound.exact and bound.h2d_bytes == sum(sizes.values())  # each component's first load
    assert bound.h2d_bytes <= optimal(uses, sizes, 40, 3).h2d_bytes


def test_belady_evicts_the_furthest_next_use_and_among_ties_the_largest():
    sizes = {"a": 10, "b": 10, "c": 10, "d": 20}
    first = belady(["a", "b", "c", "a", "b"], sizes, 20, 1).steps[2]
    assert first.evicted == ("b",)  # a comes back sooner
    assert belady(["d", "a", "c"], {"a": 5, "c": 20, "d": 15}, 30, 1).steps[2].evicted == ("d",)  # neither used again
    assert belady(["d", "a", "c"], {"a": 10, "c": 20, "d": 10}, 30, 1).steps[2].evicted == ("a",)  # then by name


# -- the budget refused ------------------------------------------------------------------------------------------
def test_a_budget_below_the_largest_component_is_an_error_with_the_numbers():
    with pytest.raises(BudgetTooSmall) as caught:
        optimal(SDXL_USES, SDXL, 4 * GIB, 1)
    error = caught.value
    assert (error.budget, error.needed, error.component, error.resident_bytes) == (4 * GIB, SDXL["unet"], "unet", 0)
    assert "4.00 GiB" in str(error) and "4.78 GiB" in str(error) and str(SDXL["unet"]) in str(error)
    with pytest.raises(BudgetTooSmall) as caught:  # the resident ones count against it
        peers.comfyui(SDXL_USES, SDXL, 6 * GIB, 1, resident=["text_encoder_2"])
    assert caught.value.needed == SDXL["unet"] + SDXL["text_encoder_2"] and "kept resident" in str(caught.value)
    assert isinstance(caught.value, ScheduleError) and isinstance(caught.value, ValueError)
    for policy in BUDGETED.values():
        with pytest.raises(BudgetTooSmall):
            policy(SDXL_USES, SDXL, SDXL["unet"] - 1, 2)
        policy(SDXL_USES, SDXL, SDXL["unet"], 2)  # exactly enough is enough


@pytest.mark.parametrize("call, message", [
    (lambda: optimal(["unet", "vea"], SDXL, 8 * GIB), "'vea' in uses has no size"),
    (lambda: optimal(SDXL_USES, {**SDXL, "vae": -1}, 8 * GIB), "size of 'vae'"),
    (lambda: optimal(SDXL_USES, SDXL, 8 * GIB, 0), "calls must be"),
    (lambda: optimal(SDXL_USES, SDXL, 8.5 * GIB), "budget must be"),
    (lambda: chain(SDXL_USES, SDXL_USES, SDXL, 1, budget=-1), "budget must be"),
    (lambda: optimal(SDXL_USES, SDXL, None), "needs a budget"),
])
def test_inputs_no_schedule_can_come_from_are_refused_plainly(call, message):
    with pytest.raises(ScheduleError, match=message):
        call()


# -- the documented figures: SDXL at fp16 ------------------------------------------------------------------------
def test_sdxl_at_8_gib_over_4_calls_moves_a_quarter_of_the_chains_bytes():
    ours, theirs = optimal(SDXL_USES, SDXL, 8 * GIB, 4), chain(SDXL_USES, SDXL_USES, SDXL, 4, budget=8 * GIB)
    total = sum(SDXL.values())  # 6,937,954,190 bytes
    assert theirs.h2d_per_call == (total,) * 4 and theirs.d2h_per_call == (total,) * 4
    assert ours.h2d_per_call == (total, 0, 0, 0) and ours.d2h_bytes == 0
    assert ours.h2d_bytes / theirs.h2d_bytes == 0.25
    assert theirs.peak_bytes == SDXL["unet"] and ours.peak_bytes == total


def test_sdxl_at_6_gib_reloads_the_second_text_encoder_and_the_unet_each_call():
    ours, theirs = optimal(SDXL_USES, SDXL, 6 * GIB, 4), chain(SDXL_USES, SDXL_USES, SDXL, 4)
    steady = SDXL["text_encoder_2"] + SDXL["unet"]  # they cannot share 6 GiB; the rest stays
    assert ours.h2d_per_call == (sum(SDXL.values()), steady, steady, steady)
    assert round(ours.h2d_bytes / theirs.h2d_bytes, 4) == 0.9553  # over 4 calls; 0.9404 per call after the first
    assert [(s.evicted, s.loaded) for s in ours.steps if s.call == 2] == [
        ((), ()), (("unet",), ("text_encoder_2",)), (("text_encoder_2",), ("unet",)), ((), ())]
    assert lower_bound(SDXL_USES, SDXL, 6 * GIB, 4).h2d_bytes == ours.h2d_bytes
    found = {name: peer(SDXL_USES, SDXL, 6 * GIB, 4).h2d_bytes for name, peer in peers.PEERS.items()}
    assert found == {"components_manager": ours.h2d_bytes, "comfyui": theirs.h2d_bytes,
                     "comfyui_lru": theirs.h2d_bytes}


# -- the peers' rules ----------------------------------------------------------------------------------------------
def test_components_manager_evicts_the_smallest_combination_that_frees_enough():
    sizes = {"a": 50, "b": 30, "c": 25, "d": 60}
    result = peers.components_manager(["a", "b", "c", "d"], sizes, 110, 1)
    assert result.steps[3].evicted == ("b", "c")  # 55 frees the 55 short; a alone (50) does not
    assert result.d2h_bytes == 55  # its `.to("cpu")` copies back


def test_components_manager_evicts_the_smallest_even_when_the_model_exactly_fits():
    result = peers.components_manager(["a", "b", "c"], {"a": 40, "b": 10, "c": 50}, 100, 1)
    assert result.steps[2].evicted == ("b",)  # `size < free` is strict: a shortfall of 0 bytes still evicts


def test_components_manager_keeps_models_across_calls_without_look_ahead():
    result = peers.components_manager(["a", "b"], {"a": 10, "b": 10}, 21, 3)
    assert result.h2d_per_call == (20, 0, 0) and not [e for e in result.events if e.event == "offload"]
    exact = peers.components_manager(["a", "b"], {"a": 10, "b": 10}, 20, 3)  # its strict `<` again
    assert exact.h2d_per_call == (20, 20, 20) and optimal(["a", "b"], {"a": 10, "b": 10}, 20, 3).h2d_bytes == 20


def test_comfyui_unloads_the_smallest_first_and_its_older_rule_the_least_recently_used():
    sizes = {"a": 50, "b": 20, "c": 40}
    assert peers.comfyui(["a", "b", "c"], sizes, 100, 1).steps[2].evicted == ("b",)
    assert peers.comfyui_lru(["a", "b", "c"], sizes, 100, 1).steps[2].evicted == ("a",)
    # a model asked for again becomes the most recently used
    assert peers.comfyui_lru(["a", "b", "a", "c"], sizes, 100, 1).steps[3].evicted == ("b",)
    # the current rule frees until more than needed is free: 20 + 40 = 60 is not more than 60
    assert peers.comfyui(["a", "b", "c"], {"a": 40, "b": 20, "c": 60}, 100, 1).steps[2].evicted == ("b", "a")


def test_comfyui_loads_a_model_anyway_once_nothing_is_left_to_unload():
    result = peers.comfyui(["a", "b"], {"r": 40, "a": 60, "b": 60}, 100, 1, resident=["r"])
    assert [(s.evicted, s.loaded) for s in result.steps] == [((), ("a",)), (("a",), ("b",))]
    assert result.peak_bytes == 100  # 60 free is not more than 60 needed, but nothing else can go


# -- the chain: diffusers' enable_model_cpu_offload ----------------------------------------------------------------
def events_of(result):
    return [(e.call, e.event, e.component, e.reason) for e in result.events]


def test_chain_follows_the_uses_when_they_differ_from_the_sequence():
    sizes = {"text_encoder": 3, "unet": 10, "vae": 2}
    result = chain(["text_encoder", "unet", "vae"], ["text_encoder", "vae", "unet", "vae"], sizes, 1)
    assert events_of(result) == [(1, "load", "text_encoder", None), (1, "load", "vae", None),
                                 (1, "offload", "text_encoder", None), (1, "load", "unet", None),
                                 (1, "offload", "unet", None), (1, "offload", "vae", None)]
    assert result.peak_bytes == 12  # the vae encoded first stays beside the unet: nothing offloads it
    assert result.steps[1].loaded == ("vae",) and result.steps[3].loaded == ()


def test_chain_gives_used_components_outside_the_sequence_a_hook_of_their_own():
    sizes = {"text_encoder": 3, "unet": 10, "controlnet": 4, "vae": 2}
    uses = ["text_encoder", "controlnet", "unet", "vae"]
    result = chain(["text_encoder", "unet", "vae"], uses, sizes, 2)
    assert [e for e in events_of(result) if e[2] == "controlnet"] == [
        (1, "load", "controlnet", None), (1, "offload", "controlnet", None),
        (2, "load", "controlnet", None), (2, "offload", "controlnet", None)]
    assert result.peak_bytes == 14 and result.h2d_per_call == (19, 19) == result.d2h_per_call


def test_chain_moves_exclusions_out_and_back_at_the_end_of_every_call():
    sizes = {"text_encoder": 3, "unet": 10, "controlnet": 4, "vae": 2, "safety_checker": 5}
    uses = ["text_encoder", "controlnet", "unet", "vae"]
    result = chain(["text_encoder", "unet", "vae", "absent"], uses, sizes, 2, resident=["controlnet", "gone"])
    labelled = [e[:3] for e in events_of(result) if e[3] == EXCLUSION_ROUND_TRIP]
    assert labelled == [(1, "offload", "controlnet"), (2, "load", "controlnet"), (2, "offload", "controlnet"),
                        (3, "load", "controlnet")]
    assert events_of(result)[0] == (1, "load", "controlnet", None)  # once, by the install before the first call
    assert result.h2d_per_call == (19, 19) and result.d2h_per_call == (19, 19)  # call 3's reload is in no figure
    assert "safety_checker" not in {e.component for e in result.events}


def test_a_sequence_member_named_resident_is_chained_as_diffusers_does():
    result = chain(["a", "b"], ["a", "b"], {"a": 1, "b": 2}, 1, resident=["a"])
    assert events_of(result) == [(1, "load", "a", None), (1, "offload", "a", None), (1, "load", "b", None),
                                 (1, "offload", "b", None)]


def test_schedules_read_as_the_simulate_json():
    result = chain(SDXL_USES, SDXL_USES, SDXL, 2, budget=6 * GIB)
    data = result.to_json()
    assert {"h2d_bytes", "d2h_bytes", "peak_bytes", "events"} <= data.keys() and "note" not in data
    assert data["events"][0] == {"call": 1, "event": "load", "component": "text_encoder", "bytes": 246144352,
                                 "device": "cuda:0"}
    assert not result.over_budget and chain(SDXL_USES, SDXL_USES, SDXL, 1, budget=4 * GIB).over_budget
    assert result.steps[0].to_json()["resident"] == ["text_encoder"]


# -- the chain against the executor on tiny pipelines --------------------------------------------------------------
CASES = {  # kind, plan components, exclusions, the pipeline's call order (2 steps; the negative prompt of sd is
    # encoded by a second text_encoder call, sdxl's is zeros; guidance is batched)
    "sd": ("sd", ["text_encoder", "unet", "vae"], [], ["text_encoder", "text_encoder", "unet", "unet", "vae"]),
    "sdxl reordered": ("sdxl", ["text_encoder_2", "text_encoder", "unet", "vae"], [],
                       ["text_encoder", "text_encoder_2", "unet", "unet", "vae"]),
    "controlnet excluded": ("controlnet", ["text_encoder", "unet", "vae"], ["controlnet"],
                            ["text_encoder", "text_encoder", "controlnet", "unet", "controlnet", "unet", "vae"]),
    "controlnet own hook": ("controlnet", ["unet", "vae", "text_encoder"], [],
                            ["text_encoder", "text_encoder", "controlnet", "unet", "controlnet", "unet", "vae"]),
    "img2img": ("img2img", ["text_encoder", "unet", "vae"], [],
                ["text_encoder", "text_encoder", "vae", "unet", "unet", "vae"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_chain_equals_the_executors_dry_run_trace(case, tiny_pipelines, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    import torch
    from accelerate.hooks import CpuOffload
    from PIL import Image

    import planner

    kind, components, exclude, uses = CASES[case]
    pipe = _tiny(kind, tiny_pipelines)
    names = {id(m): n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    fired = []
    original = CpuOffload.pre_forward

    def logged(hook, module, *args, **kwargs):  # the real hook, and the name of the component it serves
        fired.append(names[id(module)])
        return original(hook, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", logged)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"version: 1\ndevice: cuda\ncomponents: [{', '.join(components)}]\n"
                    + (f"exclude: [{', '.join(exclude)}]\n" if exclude else ""))
    applied = planner.apply(pipe, planner.load_plan(plan), dry_run=True)
    kwargs = dict(prompt="a cat", num_inference_steps=2, output_type="np")
    if kind in ("controlnet", "img2img"):
        kwargs["image"] = Image.new("RGB", (64, 64))
    if kind == "img2img":
        kwargs["strength"] = 1.0
    for _ in range(2):
        pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    assert fired == [name for name in uses if name not in exclude] * 2  # the call order the case states
    simulated = chain(applied.plan.sequence, uses, applied.trace.sizes, 2, resident=applied.plan.exclude,
                      device=applied.trace.device)
    assert simulated.events == tuple(applied.trace.events)
    calls = [applied.trace.calls[call] for call in (1, 2)]
    assert simulated.h2d_per_call == tuple(stats.loaded_bytes for stats in calls)
    assert simulated.d2h_per_call == tuple(stats.offloaded_bytes for stats in calls)
    assert simulated.peak_bytes == max(applied.trace.calls[c].peak_resident_bytes for c in (1, 2))


def _tiny(kind, tiny_pipelines):
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline

    def load(folder):  # float32 on the CPU, whatever dtype the build stores beside it
        return DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)

    if kind == "img2img":
        pipe = StableDiffusionImg2ImgPipeline(**load(tiny_pipelines["sd"]).components)
    else:
        pipe = load(tiny_pipelines[kind])
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the core stays light ------------------------------------------------------------------------------------------
def test_the_schedule_module_is_pure_and_validate_does_not_load_it():
    code = ("import sys, planner.budget.components; print(sorted(m for m in ('torch', 'diffusers', 'accelerate', "
            "'planner.folder', 'planner.rules') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    code = "import sys, planner.validate, planner.loader; print('planner.budget.components' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
