"""The budget policy's executor (planner.executor.budget) on real tiny pipelines: its dry-run trace equals the
simulator's schedule on every tiny build, it stays within its budget when the pipeline does what the plan did not
predict, evictions copy nothing back unless a weight changed on the device (then it is never lost), diffusers' end
of call does not undo it, `offload_all()` frees the device for both policies, and `remove()` restores exactly."""

from __future__ import annotations

import warnings

import pytest
import torch

import planner
from planner import tiny
from planner.budget import components as schedules
from planner.plan import PlanError
from planner.units import human

diffusers = pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline  # noqa: E402
from PIL import Image  # noqa: E402
from test_applied import attributes, state, warmed  # noqa: E402

from planner.budget import decide  # noqa: E402
from planner.budget.problems import Asker  # noqa: E402
from planner.executor import budget as exec_budget  # noqa: E402
from planner.executor import reasons, residency  # noqa: E402
from planner.executor.run import Request, _call_kwargs  # noqa: E402


# -- helpers --------------------------------------------------------------------------------------------------
def write_plan(tmp_path, components, budget=None, exclude=(), uses=None, keep_host_copy=None, name="plan.yaml"):
    lines = ["version: 1", "device: cuda", "policy: budget", f"components: [{', '.join(components)}]"]
    if budget is not None:
        lines.append(f"budget: {budget}")
    if exclude:
        lines.append(f"exclude: [{', '.join(exclude)}]")
    if uses is not None:
        lines.append(f"uses: [{', '.join(uses)}]")
    if keep_host_copy is not None:
        lines.append(f"keep_host_copy: {str(keep_host_copy).lower()}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return planner.load_plan(path)


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)  # fp16 convolutions crawl on a CPU
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_kwargs(**extra):
    return dict(prompt="a cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0),
                **extra)


def models(pipe) -> dict:
    return {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def sizes_of(pipe) -> dict:
    from planner.executor.modules import module_bytes

    return {name: module_bytes(module) for name, module in models(pipe).items()}


def tight(sizes: dict) -> int:
    """A budget that holds the largest component and the smallest beside it, never everything."""
    ordered = sorted(sizes.values())
    return ordered[-1] + ordered[0]


def events(trace, call=None):
    return [(e.call, e.event, e.component, e.reason) for e in trace.events if call is None or e.call == call]


def collapsed(names: list[str]) -> list[str]:
    """Consecutive repeats as one use (a denoiser runs every step; the executor counts one use)."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


# -- the executor follows the simulator's schedule, on every tiny build -------------------------------------------
@pytest.fixture(scope="module")
def input_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "input.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(path)
    return path


def tiny_request(kind: str, image) -> Request:
    spec = tiny.KINDS[kind]
    flags = dict(zip(spec.call_args[::2], spec.call_args[1::2], strict=True))
    return Request(prompt="a cat", steps=int(flags.get("--steps", 2)), height=int(flags.get("--height", 0)) or None,
                   width=int(flags.get("--width", 0)) or None, image=str(image) if spec.image else None)


@pytest.mark.parametrize("kind", list(tiny.KINDS))
def test_dry_run_trace_equals_the_simulators_schedule_on_every_tiny_build(kind, tiny_builds, input_image, tmp_path,
                                                                          fired):
    if kind == "wan-i2v":
        pytest.importorskip("ftfy", reason="WanImageToVideoPipeline needs ftfy to clean its prompts")
    pipe = load(tiny_builds[kind])
    request = tiny_request(kind, input_image)
    sizes = sizes_of(pipe)
    components = [n for n in (type(pipe).model_cpu_offload_seq or "").split("->") if n in sizes]
    components += [n for n in sizes if n not in components]
    # the pipeline's own order of uses, as the hooks see it (one call with everything resident)
    probe = planner.apply(pipe, write_plan(tmp_path, components, budget=sum(sizes.values()), name="probe.yaml"),
                          dry_run=True)
    try:
        probe(**_call_kwargs(pipe, request))
    except Exception as exc:
        probe.remove()
        try:
            pipe(**_call_kwargs(pipe, request))  # without the plan
        except Exception:
            pytest.skip(f"tiny {kind} does not run with diffusers {diffusers.__version__}: {exc}")
        raise
    uses = collapsed(fired)
    probe.remove()
    for budget in (tight(sizes), sum(sizes.values())):
        plan = write_plan(tmp_path, components, budget=budget, uses=uses, name=f"{budget}.yaml")
        applied = planner.apply(pipe, plan, dry_run=True, calls=2)
        for _ in range(2):
            fired.clear()
            applied(**_call_kwargs(pipe, request))
            assert collapsed(fired) == uses
        simulated = schedules.optimal(uses, applied.trace.sizes, budget, 2, device=applied.trace.device)
        assert tuple(applied.trace.events) == simulated.events and simulated.exact
        calls = [applied.trace.calls[c] for c in (1, 2)]
        assert tuple(s.loaded_bytes for s in calls) == simulated.h2d_per_call
        assert max(s.peak_resident_bytes for s in calls) == simulated.peak_bytes <= budget
        assert applied.copied_back == {}  # nothing changed on the device: evictions copied nothing back
        evictions = [e for e in applied.trace.events if e.event == "offload"]
        assert bool(evictions) == (budget < sum(sizes.values()))
        applied.remove()


def test_calls_as_they_come_follow_the_planned_calls_then_their_steady_cycle(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    budget = tight(sizes)
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=budget), dry_run=True)
    calls = decide.HORIZON + 3
    for _ in range(calls):
        applied(**sd_kwargs())
    planned = schedules.optimal(["text_encoder", "unet", "vae"], applied.trace.sizes, budget, decide.HORIZON,
                                device=applied.trace.device)
    assert applied.schedule == planned
    assert tuple(e for e in applied.trace.events if e.call <= decide.HORIZON) == planned.events
    steady = [events(applied.trace, call) for call in range(2, calls + 1)]
    assert all([step[1:] for step in call] == [step[1:] for step in steady[0]] for call in steady)
    assert all(applied.trace.calls[call].peak_resident_bytes <= budget for call in range(1, calls + 1))
    assert all(e.reason is None for e in applied.trace.events)  # never off its schedule


# -- what the plan did not predict -----------------------------------------------------------------------------
def test_an_unpredicted_use_stays_within_the_budget_is_marked_and_warns_once(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    budget = sizes["unet"] + sizes["vae"] - 1  # the unet and the vae never fit together
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=budget, uses=["text_encoder", "unet"])
    applied = planner.apply(pipe, plan, dry_run=True, calls=2)
    with pytest.warns(RuntimeWarning, match="'vae' ran where the plan's call order"):
        applied(**sd_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per handle
        applied(**sd_kwargs())
    for call in (1, 2):
        marked = [(event, name) for _, event, name, reason in events(applied.trace, call) if reason]
        assert marked == [("offload", "unet"), ("load", "vae")]  # the vae's load and the eviction it forced
        assert applied.trace.calls[call].peak_resident_bytes <= budget
    assert all(e.reason == reasons.UNPREDICTED for e in applied.trace.events if e.reason)


def test_a_pipeline_calling_in_another_order_than_the_plan_stays_correct(tiny_pipelines, tmp_path):
    text = load(tiny_pipelines["sd"])
    img2img = StableDiffusionImg2ImgPipeline(**text.components)  # encodes with the vae before the unet runs
    img2img.set_progress_bar_config(disable=True)
    kwargs = dict(image=Image.new("RGB", (64, 64), (10, 200, 30)), strength=0.9)
    expected = img2img(**sd_kwargs(**kwargs)).images
    sizes = sizes_of(img2img)
    budget = tight(sizes)
    applied = planner.apply(img2img, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=budget), dry_run=True)
    with pytest.warns(RuntimeWarning, match="'vae' ran where"):
        out = applied(**sd_kwargs(**kwargs)).images
    assert (out == expected).all()
    assert applied.trace.calls[1].peak_resident_bytes <= budget
    assert ("load", "vae", reasons.UNPREDICTED) in [(e.event, e.component, e.reason) for e in applied.trace.events]


def test_a_component_outside_the_plan_is_loaded_when_it_runs_and_leaves_when_the_call_ends(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    sizes = sizes_of(pipe)
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=sum(sizes.values()))
    applied = planner.apply(pipe, plan, dry_run=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # outside the plan is not a surprise: no warning
        applied(**sd_kwargs(image=Image.new("RGB", (64, 64))))
    own = [(e.event, e.reason) for e in applied.trace.events if e.component == "controlnet"]
    assert own == [("load", reasons.OWN_HOOK), ("offload", reasons.OWN_HOOK)]
    assert applied.trace.resident == {"text_encoder", "unet", "vae"}


# -- the end of a call does not undo the policy --------------------------------------------------------------------
def test_diffusers_end_of_call_leaves_the_resident_components_resident(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=sum(sizes.values())),
                            dry_run=True)
    pipe(**sd_kwargs())  # a plain call: the pipeline's own maybe_free_model_hooks ends it
    applied(**sd_kwargs())
    pipe.maybe_free_model_hooks()  # called by hand, it ends a call of its own (as with the chain)
    pipe.enable_model_cpu_offload()  # diffusers' re-enable, as after a LoRA load: the plan stays
    pipe(**sd_kwargs())
    assert applied.trace.call == 5 and applied.active
    assert [e for e in applied.trace.events if e.event == "offload"] == []
    assert applied.trace.calls[2].loaded_bytes == applied.trace.calls[4].loaded_bytes == 0
    resident = applied._installer.residency.resident
    assert set(resident) == {"text_encoder", "unet", "vae"}
    assert all(type(m._hf_hook).__name__ == "BudgetHook" for m in models(pipe).values())


# -- host copies: nothing copied back unless a weight changed on the device ---------------------------------------
def _in_place(weight):
    with torch.no_grad():
        weight.add_(0.5)  # moves the version counter


def _through_data(weight):
    weight.data += 0.5  # peft's fuse_lora does this: no version counter sees it


def _replaced(weight):
    weight.data = weight.data + 0.5  # a new tensor (peft's safe merge)


def _one_element(weight):
    weight.data.view(-1)[7] += 1.0  # a single element through .data


@pytest.mark.parametrize("edit", [_in_place, _through_data, _replaced, _one_element],
                         ids=["in-place", "through-data", "replaced", "one-element"])
@pytest.mark.parametrize("keep_host_copy", [True, False], ids=["host-copy", "no-host-copy"])
def test_a_weight_changed_while_resident_is_copied_back_and_never_lost(edit, keep_host_copy, tiny_pipelines,
                                                                        tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=sum(sizes.values()),
                      keep_host_copy=keep_host_copy)
    applied = planner.apply(pipe, plan, dry_run=True)
    applied(**sd_kwargs())
    weight = pipe.unet.conv_in.weight
    host = applied._installer.residency.weights["unet"].kept[0].host  # the host copy kept while resident
    edit(weight)
    changed = weight.detach().clone()
    applied.offload_all()
    assert torch.equal(weight.detach(), changed)  # never lost
    copied = applied.copied_back[2]
    if keep_host_copy:
        assert copied == weight.nbytes  # the one changed tensor, nothing else
        if edit is not _replaced:
            assert weight.data_ptr() == host.data_ptr()  # copied back into its host copy
    else:
        assert copied == sum(sizes.values())  # without host copies every eviction copies back
    unet = [(e.event, e.reason) for e in applied.trace.events if e.component == "unet" and e.call == 2]
    assert unet == [("offload", "offload_all; " + reasons.COPIED_BACK)]
    reference = load(tiny_pipelines["sd"])
    edit(reference.unet.conv_in.weight)
    assert (applied(**sd_kwargs()).images == reference(**sd_kwargs()).images).all()  # the edit is in force


def test_evictions_copy_nothing_back_when_nothing_changed(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=tight(sizes)),
                            dry_run=True)
    before = {n: p.data_ptr() for n, p in pipe.unet.named_parameters()}
    for _ in range(3):
        applied(**sd_kwargs())
    assert [e for e in applied.trace.events if e.event == "offload"]  # it did evict
    assert applied.copied_back == {} and all(e.reason is None for e in applied.trace.events)
    applied.offload_all()
    assert {n: p.data_ptr() for n, p in pipe.unet.named_parameters()} == before  # the host tensors themselves


def _lora(tmp_path, folder):
    peft = pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    donor = load(folder)
    torch.manual_seed(0)
    donor.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                           init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(donor.unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)
    return dict(pretrained_model_name_or_path_or_dict=tmp_path / "lora", weight_name="pytorch_lora_weights.safetensors")


def test_fuse_lora_on_resident_weights_is_kept_when_they_are_evicted(tiny_pipelines, tmp_path):
    lora = _lora(tmp_path, tiny_pipelines["sd"])
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget="64MiB"),
                            dry_run=True)
    applied(**sd_kwargs())
    pipe.load_lora_weights(**lora)
    applied(**sd_kwargs())  # the adapter's weights are counted, and the plan is still ours
    assert type(pipe.unet._hf_hook).__name__ == "BudgetHook" and applied.active
    assert applied.trace.sizes["unet"] == sizes_of(pipe)["unet"] > applied.trace.events[1].bytes
    pipe.fuse_lora()  # peft adds the adapters into `weight.data` of the resident device copies
    applied.offload_all()
    assert applied.copied_back.get(3, 0) > 0
    reference = load(tiny_pipelines["sd"])
    reference.load_lora_weights(**lora)
    reference.fuse_lora()
    ours = dict(pipe.unet.named_parameters())
    for name, param in reference.unet.named_parameters():
        assert torch.equal(ours[name].detach(), param.detach()), name
    assert (applied(**sd_kwargs()).images == reference(**sd_kwargs()).images).all()


# -- offload_all, both policies -----------------------------------------------------------------------------------
def test_offload_all_empties_the_device_and_the_next_call_starts_the_schedule_again(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    sizes = sizes_of(pipe)
    uses = ["text_encoder", "controlnet", "unet", "controlnet", "unet", "vae"]
    budget = sizes["controlnet"] + sizes["unet"] + sizes["vae"]
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=budget,
                                             exclude=["controlnet"], uses=uses), dry_run=True, calls=1)
    kwargs = sd_kwargs(image=Image.new("RGB", (64, 64)))
    expected = applied(**kwargs).images
    first = events(applied.trace, 1)
    applied.offload_all()
    assert applied.trace.resident == set() and applied._installer.residency.resident == {}
    offloaded = [(e.component, e.reason) for e in applied.trace.events if e.call == 2]
    assert {reason for _, reason in offloaded} == {"offload_all"} and "controlnet" in dict(offloaded)
    out = applied(**sd_kwargs(image=Image.new("RGB", (64, 64)))).images
    assert (out == expected).all()
    again = [(event, name, reason) for _, event, name, reason in events(applied.trace, 2)][len(offloaded):]
    planned = [(event, name, reason) for _, event, name, reason in first]
    # the exclusion comes back when it next runs; the call follows the schedule's first call
    assert [step for step in again if step[1] == "controlnet"] == [("load", "controlnet", "after offload_all")]
    assert [step for step in again if step[1] != "controlnet"] == [step for step in planned if step[1] != "controlnet"]
    assert planned[0] == ("load", "controlnet", None)  # put there once, before the first call


# -- the handle: remove, displaced, blocked, rejections ------------------------------------------------------------
def test_remove_restores_every_submodule_exactly(tiny_pipelines, tmp_path):
    pipe = warmed(tiny_pipelines["sd"])
    before, pipe_before = attributes(pipe), state(pipe)
    pointers = {n: p.data_ptr() for n, p in pipe.unet.named_parameters()}
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet"], budget="64MiB", exclude=["vae"]),
                            dry_run=True)
    assert attributes(pipe) != before
    applied(**sd_kwargs())
    pipe(**sd_kwargs())
    applied.remove()
    assert attributes(pipe) == before and state(pipe) == pipe_before
    assert {n: p.data_ptr() for n, p in pipe.unet.named_parameters()} == pointers
    assert not applied.active and applied.state == "removed"


def test_hooks_removed_behind_the_handle_are_reinstalled_and_the_residency_carries_on(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=sum(sizes.values())),
                            dry_run=True)
    applied(**sd_kwargs())
    pipe.remove_all_hooks()
    assert applied.state == "displaced"
    applied(**sd_kwargs())
    assert applied.active and applied.trace.calls[2].loaded_bytes == 0  # still resident: nothing moved again
    from accelerate.hooks import ModelHook, add_hook_to_module

    add_hook_to_module(pipe.unet, ModelHook())
    assert applied.state == "blocked"
    with pytest.raises(PlanError, match="PLN302"):
        applied(**sd_kwargs())


def test_dropping_the_pipeline_and_the_handle_frees_both(tiny_pipelines, tmp_path):
    import gc
    import weakref

    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=tight(sizes_of(pipe))),
                            dry_run=True)
    applied(**sd_kwargs())
    pipe(**sd_kwargs())
    refs = [weakref.ref(pipe), weakref.ref(applied), weakref.ref(pipe.unet), weakref.ref(applied._installer.residency)]
    del pipe, applied
    gc.collect()
    assert [r() for r in refs] == [None] * 4


def test_a_swapped_component_leaves_the_device_and_the_new_one_is_hooked(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    old = pipe.unet
    pointers = {n: p.data_ptr() for n, p in old.named_parameters()}
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget="64MiB"),
                            dry_run=True)
    applied(**sd_kwargs())
    pipe.unet = load(tiny_pipelines["sd"]).unet
    applied(**sd_kwargs())
    assert ("offload", "unet", reasons.SWAPPED) in [(e.event, e.component, e.reason) for e in applied.trace.events]
    assert not hasattr(old, "_hf_hook") and {n: p.data_ptr() for n, p in old.named_parameters()} == pointers
    assert type(pipe.unet._hf_hook).__name__ == "BudgetHook" and applied.active


def test_a_dry_run_needs_a_budget(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    before = state(pipe)
    with pytest.raises(PlanError) as info:
        planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    assert [p.rule for p in info.value.problems] == ["PLN307"] and "a dry run has no device" in str(info.value)
    assert state(pipe) == before


def test_a_budget_below_the_largest_component_beside_the_exclusions_is_refused_with_the_numbers(tiny_pipelines,
                                                                                                 tmp_path):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    before = state(pipe)
    budget = sizes["unet"] + sizes["vae"] - 1
    plan = write_plan(tmp_path, ["text_encoder", "unet"], budget=budget, exclude=["vae"])
    with pytest.raises(PlanError) as info:
        planner.apply(pipe, plan, dry_run=True)
    problem = info.value.problems[0]
    assert problem.rule == "PLN307" and (problem.line, problem.column) == plan.locations["budget"] != (0, 0)
    assert "cannot hold unet (" in problem.message and "beside the excluded components" in problem.message
    assert problem.fix == f"raise budget to at least {budget + 1} bytes ({human(budget + 1)})"
    assert state(pipe) == before


def test_the_budget_comes_from_the_free_memory_minus_the_reserve(tiny_pipelines, tmp_path, monkeypatch):
    from planner.executor import devices

    monkeypatch.setattr(devices, "count", lambda kind: 1 if kind == "cuda" else 0)
    monkeypatch.setattr(devices, "free_memory", lambda device: 10 << 30)
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"])
    assert exec_budget.budget_for(plan, devices.target(plan), dry_run=False) == (10 << 30) - decide.DEFAULT_RESERVE
    path = tmp_path / "reserve.yaml"
    path.write_text("version: 1\ndevice: cuda\npolicy: budget\nreserve: 3GiB\ncomponents: [unet]\n")
    assert exec_budget.budget_for(planner.load_plan(path), devices.target(plan), dry_run=False) == 7 << 30
    monkeypatch.setattr(devices, "free_memory", lambda device: None)
    with pytest.raises(PlanError, match="PLN307 cuda does not report its free memory"):
        exec_budget.budget_for(plan, devices.target(plan), dry_run=False)


def test_a_combined_pipeline_keeps_one_budget_and_its_connected_pipelines_end_no_call(tmp_path, monkeypatch):
    from stubs import combined_pipeline, stub_type

    from planner import index, scaffold

    name = "KandinskyV22Img2ImgCombinedPipeline"
    record = index.get(name)
    stub = stub_type()
    modules = {n: stub() if c.model is not False else None for n, c in record.components.items()}
    pipe = combined_pipeline(getattr(diffusers, name), modules, DiffusionPipeline, monkeypatch)
    before = {attr: dict(vars(getattr(pipe, attr))) for attr in ("prior_pipe", "decoder_pipe")}
    path = tmp_path / "k.yaml"
    path.write_text(scaffold.plan_text(name) + "policy: budget\nbudget: 16\n")  # two stand-in modules at once
    applied = planner.apply(pipe, planner.load_plan(path), dry_run=True, calls=1)
    assert all(type(m._hf_hook).__name__ == "BudgetHook" for m in modules.values() if m is not None)
    assert pipe.prior_pipe._execution_device == torch.device("cpu")  # diffusers reads our hooks' device
    sequence = applied.plan.sequence  # prior_text_encoder, prior_image_encoder, prior_prior, unet, movq
    for name in sequence[:3]:
        modules[name](torch.ones(1, 1))
    pipe.prior_pipe.maybe_free_model_hooks()  # the prior pipeline's part ends: the combined call goes on
    assert applied.trace.call == 1 and len(applied.trace.resident) == 2
    for name in sequence[3:]:
        modules[name](torch.ones(1, 1))  # one budget for all: the prior's models make room
    pipe.maybe_free_model_hooks()
    assert applied.trace.call == 2 and applied.trace.calls[1].peak_resident_bytes <= 16
    assert tuple(applied.trace.events) == schedules.optimal(sequence, applied.trace.sizes, 16, 1).events
    applied.remove()
    assert {attr: dict(vars(getattr(pipe, attr))) for attr in ("prior_pipe", "decoder_pipe")} == before
    assert all(getattr(m, "_hf_hook", None) is None for m in modules.values() if m is not None)


# -- planner apply --policy --budget ----------------------------------------------------------------------------------
def test_apply_flags_choose_the_policy_and_budget_through_the_plan_rules(tiny_pipelines, tmp_path, capsys):
    from planner.cli import main

    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [text_encoder, unet, vae]\n")
    argv = ["apply", str(plan), "--source", str(tiny_pipelines["sd"]), "--dry-run", "--quiet", "--calls", "2"]
    assert main([*argv, "--policy", "budget", "--budget", "450KB"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("policy budget: 439.45 KiB on cuda:0 (schedule: the fewest bytes moved")
    assert "evicted  copied back" in out
    assert main([*argv, "--policy", "budget", "--budget", "8gb"]) == 1
    assert capsys.readouterr().err.startswith("--budget: PLN214 ")
    assert main([*argv, "--policy", "budget", "--budget", "100KB"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("--budget: PLN307 a budget of 97.66 KiB (100000 bytes) cannot hold unet (261.11 KiB")
    assert "pass --budget 267376 or more (261.11 KiB)" in err
    assert main([*argv, "--policy", "budget"]) == 1
    assert "--policy: PLN307" in capsys.readouterr().err  # a dry run has no device to take a budget from
    assert main([*argv, "--budget", "8GiB"]) == 0  # the chain ignores a budget (PLN217 warns at validate)
    assert "policy budget" not in capsys.readouterr().out


# -- on a real accelerator (skipped on CPU-only machines) -----------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_cuda(pipe) -> set:
    return {n for n, m in models(pipe).items() if next(m.parameters()).device.type == "cuda"}


@gpu
@pytest.mark.parametrize("fits", [True, False], ids=["fits", "tight"])
def test_on_gpu_the_budget_holds_and_images_equal_no_offload(fits, tiny_pipelines, tmp_path):
    reference = load(tiny_pipelines["sd"]).to("cuda")
    expected = [reference(**sd_kwargs()).images for _ in range(2)]
    del reference
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    budget = sum(sizes.values()) if fits else tight(sizes)
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=budget), calls=2)
    for call in (1, 2):
        assert abs(applied(**sd_kwargs()).images - expected[call - 1]).max() < 1e-4
        assert on_cuda(pipe) == set(applied._installer.residency.resident) == applied.trace.resident
        assert sum(sizes[n] for n in on_cuda(pipe)) <= budget
    assert applied.copied_back == {}
    assert tuple(applied.trace.events) == schedules.optimal(["text_encoder", "unet", "vae"], applied.trace.sizes,
                                                            budget, 2, device="cuda:0").events
    applied.offload_all()
    assert on_cuda(pipe) == set() and torch.cuda.memory_allocated() - baseline < 1 << 20
    applied.remove()


@gpu
def test_on_gpu_fuse_lora_on_the_device_is_copied_back(tiny_pipelines, tmp_path):
    lora = _lora(tmp_path, tiny_pipelines["sd"])
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget="64MiB"))
    applied(**sd_kwargs())
    pipe.load_lora_weights(**lora)
    pipe.fuse_lora()
    applied.remove()
    reference = load(tiny_pipelines["sd"])
    reference.load_lora_weights(**lora)
    reference.fuse_lora()
    ours = dict(pipe.unet.named_parameters())
    for name, param in reference.unet.named_parameters():
        assert ours[name].device.type == "cpu"
        assert torch.allclose(ours[name].detach(), param.detach(), atol=1e-6), name


# -- pinned host copies within the host's spare memory ----------------------------------------------------------
def spare_host(monkeypatch, spare: int) -> None:
    """This host can spare `spare` bytes (its memory as planner.budget.host reads it, faked)."""
    from planner.budget import host

    fake = host.HostMemory(total=8 << 30, available=spare + host.MARGIN, limit=None, usage=None)  # margin: 1 GiB
    assert fake.spare == spare
    monkeypatch.setattr(host, "read_host_memory", lambda **_: fake)


def test_only_the_chosen_host_copies_are_pinned_and_never_more_than_the_host_spares(tiny_pipelines, tmp_path,
                                                                                    monkeypatch):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=tight(sizes), exclude=["safety_checker"])
    spare = sizes["unet"] + sizes["vae"]  # not all three
    spare_host(monkeypatch, spare)
    asker = Asker.applying(plan)
    decision = decide.decide(plan, sizes, tight(sizes), asker, calls=4)
    found = residency.ComponentResidency(planner.trace.Trace("cuda:0"), torch.device("cuda"), decision, asker, 4)
    found.sync({n: m for n, m in models(pipe).items() if n in sizes})
    chosen = {name for name, weights in found.weights.items() if weights.pin}
    assert chosen and sum(sizes[n] for n in chosen) <= spare and "safety_checker" not in chosen
    assert found.pinning.pinned_bytes == sum(sizes[n] for n in chosen)
    spare_host(monkeypatch, 0)
    found.sync({n: m for n, m in models(pipe).items() if n in sizes and n != "vae"})  # a change re-plans
    assert not any(weights.pin for weights in found.weights.values())


def test_pin_true_beyond_the_spare_memory_is_pln411_before_anything_changes(tiny_pipelines, tmp_path, monkeypatch):
    pipe = load(tiny_pipelines["sd"])
    sizes = sizes_of(pipe)
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"], budget=tight(sizes))
    plan = planner.load_plan(plan.path, {"pin": True})
    spare_host(monkeypatch, 1 << 10)
    before = state(pipe)
    with pytest.raises(PlanError) as caught:
        planner.apply(pipe, plan, dry_run=True)
    [problem] = caught.value.problems
    assert problem.rule == "PLN411" and "pin: auto" in problem.fix
    assert state(pipe) == before
    spare_host(monkeypatch, 1 << 40)
    with planner.apply(pipe, plan, dry_run=True) as applied:
        assert applied.host.held == sum(sizes[n] for n in ("text_encoder", "unet", "vae"))
        assert applied.host.pinned == 0 and "CUDA" in applied.host.note  # a dry run pins nothing
