"""The executor against real diffusers pipelines (tiny, random weights, CPU)."""

from __future__ import annotations

import pytest
import torch

import planner
from planner.executor import applied as applied_mod
from planner.executor import devices
from planner.plan import PlanError

diffusers = pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline  # noqa: E402
from PIL import Image  # noqa: E402


# -- helpers --------------------------------------------------------------------------------------------------
def write_plan(tmp_path, components, exclude=(), device="cuda", gpu_id=None, name="plan.yaml"):
    lines = ["version: 1", f"device: {device}"]
    if gpu_id is not None:
        lines.append(f"gpu_id: {gpu_id}")
    lines.append(f"components: [{', '.join(components)}]")
    if exclude:
        lines.append(f"exclude: [{', '.join(exclude)}]")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return planner.load_plan(path)


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(kind, **extra):
    kwargs = dict(prompt="a cat", num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0))
    if kind == "controlnet":
        kwargs["image"] = Image.new("RGB", (64, 64))
    kwargs.update(extra)
    return kwargs


def class_plan(tmp_path, pipe):
    cls = type(pipe)
    return write_plan(tmp_path, cls.model_cpu_offload_seq.split("->"), cls._exclude_from_cpu_offload)


def hooks_of(pipe) -> dict:
    """Per component: hook class, execution device, the component its hook offloads first, and the device of
    its weights; plus the order of `_all_hooks` and the offload device."""
    names = {id(m): n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    table = {}
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            table[name] = type(module).__name__
            continue
        hook = getattr(module, "_hf_hook", None)
        prev = getattr(hook, "prev_module_hook", None)
        table[name] = (type(hook), str(getattr(hook, "execution_device", None)),
                       names.get(id(prev.model)) if prev is not None else None, str(next(module.parameters()).device))
    table["_all_hooks"] = [names[id(h.model)] for h in getattr(pipe, "_all_hooks", [])]
    table["_offload_device"] = str(getattr(pipe, "_offload_device", None))
    return table


def chain(pipe) -> list:
    """The components in hook order, each with the component its hook offloads."""
    names = {id(m): n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    return [(names[id(h.model)], names.get(id(h.hook.prev_module_hook.model)) if h.hook.prev_module_hook else None)
            for h in pipe._all_hooks]


def state(pipe) -> dict:
    """Everything apply may change: instance attributes (by identity), hooks anywhere, and weight devices."""
    hooks = sorted(f"{n}.{sub}" for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)
                   for sub, mod in m.named_modules() if hasattr(mod, "_hf_hook"))
    return {"attrs": {k: id(v) for k, v in pipe.__dict__.items()}, "hooks": hooks,
            "devices": {n: str(next(m.parameters()).device) for n, m in pipe.components.items()
                        if isinstance(m, torch.nn.Module)},
            "seq": pipe.model_cpu_offload_seq, "exclude": list(pipe._exclude_from_cpu_offload)}


@pytest.fixture
def one_cuda(monkeypatch):
    """Pretend torch sees cuda devices so that hooks for `cuda` install here as diffusers' do (nothing moves)."""
    monkeypatch.setattr(devices, "count", lambda kind: 2 if kind == "cuda" else 0)


# -- exactly diffusers' chain ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl", "controlnet"])
def test_hooks_equal_diffusers_own_for_the_class_sequence(kind, tiny_pipelines, tmp_path, one_cuda):
    ours, theirs = load(tiny_pipelines[kind]), load(tiny_pipelines[kind])
    planner.apply(ours, class_plan(tmp_path, ours))
    theirs.enable_model_cpu_offload(device="cuda")
    assert hooks_of(ours) == hooks_of(theirs)
    if kind == "controlnet":  # outside the sequence: a hook of its own, linked to nothing
        assert hooks_of(ours)["controlnet"][2] is None and "controlnet" in hooks_of(ours)["_all_hooks"]


@pytest.mark.parametrize("kind", ["sd", "sdxl", "controlnet"])
def test_dry_run_hooks_equal_diffusers_on_the_cpu(kind, tiny_pipelines, tmp_path):
    ours, theirs = load(tiny_pipelines[kind]), load(tiny_pipelines[kind])
    planner.apply(ours, class_plan(tmp_path, ours), dry_run=True)
    theirs.enable_model_cpu_offload(device="cpu")
    assert hooks_of(ours) == hooks_of(theirs)
    assert (ours(**call_kwargs(kind)).images == theirs(**call_kwargs(kind)).images).all()


def test_plan_order_survives_the_pipelines_own_calls(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sdxl"])
    plan = write_plan(tmp_path, ["text_encoder_2", "text_encoder", "unet", "vae"])
    applied = planner.apply(pipe, plan, dry_run=True)
    expected = [("text_encoder_2", None), ("text_encoder", "text_encoder_2"), ("unet", "text_encoder"),
                ("vae", "unet")]
    for _ in range(3):
        pipe(**call_kwargs("sdxl"))
        assert chain(pipe) == expected
    # SDXL runs text_encoder first: against this order, text_encoder_2 (first in the chain, so nothing offloads
    # it) stays on the device beside the unet until the call ends. The trace shows what the plan costs.
    events = [(e.event, e.component) for e in applied.trace.events if e.call == 3]
    assert events == [("load", "text_encoder"), ("load", "text_encoder_2"), ("offload", "text_encoder"),
                      ("load", "unet"), ("offload", "unet"), ("load", "vae"), ("offload", "vae"),
                      ("offload", "text_encoder_2")]
    sizes = applied.trace.sizes
    assert applied.trace.calls[3].peak_resident_bytes == sizes["text_encoder_2"] + sizes["unet"]


def test_trace_of_one_call_for_a_three_component_chain(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe(**call_kwargs("sd"))
    events = [(e.call, e.event, e.component) for e in applied.trace.events]
    assert events == [(1, "load", "text_encoder"), (1, "offload", "text_encoder"), (1, "load", "unet"),
                      (1, "offload", "unet"), (1, "load", "vae"), (1, "offload", "vae")]
    sizes = {e.component: e.bytes for e in applied.trace.events}
    assert sizes["unet"] == sum(p.numel() * p.element_size() for p in pipe.unet.parameters()) + \
        sum(b.numel() * b.element_size() for b in pipe.unet.buffers())
    assert {e.device for e in applied.trace.events} == {"cuda:0"}
    assert applied.trace.calls[1].peak_resident_bytes == max(sizes.values())


def test_after_every_call_only_exclusions_stay_on_the_device(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=["controlnet"]),
                            dry_run=True)
    for call in (1, 2):
        pipe(**call_kwargs("controlnet"))
        assert applied.trace.resident == {"controlnet"}
        assert applied.trace.call == call + 1
    assert not hasattr(pipe.controlnet, "_hf_hook")


def test_handle_offloads_even_when_the_pipeline_never_frees_its_hooks(tiny_pipelines, tmp_path):
    from diffusers import StableDiffusionPipeline

    class Forgetful(StableDiffusionPipeline):
        """A pipeline whose call never ends with maybe_free_model_hooks (diffusers has shipped such)."""

        def __call__(self, *args, **kwargs):
            free = self.__dict__["maybe_free_model_hooks"]
            self.__dict__["maybe_free_model_hooks"] = lambda: None
            try:
                return super().__call__(*args, **kwargs)
            finally:
                self.__dict__["maybe_free_model_hooks"] = free

    pipe = Forgetful(**load(tiny_pipelines["sd"]).components)
    pipe.set_progress_bar_config(disable=True)
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe(**call_kwargs("sd"))
    assert applied.trace.resident == {"vae"} and applied.trace.call == 1  # its last model was left behind
    applied(**call_kwargs("sd"))  # through the handle the call ends with everything offloaded
    assert applied.trace.resident == set() and applied.trace.call == 2


# -- the handle -----------------------------------------------------------------------------------------------
def test_remove_leaves_the_pipeline_as_before(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    before = state(pipe)
    with planner.apply(pipe, write_plan(tmp_path, ["vae", "unet", "text_encoder"]), dry_run=True) as applied:
        assert pipe.model_cpu_offload_seq == "vae->unet->text_encoder"
        assert applied.active
    assert state(pipe) == before
    assert not applied.active
    applied.remove()  # twice is harmless
    assert state(pipe) == before


def test_remove_after_calls_leaves_no_hooks_or_shadows(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe(**call_kwargs("sd"))
    applied.remove()
    after = state(pipe)
    assert after["hooks"] == []
    for name in applied_mod.SHADOWED + applied_mod.OFFLOAD_STATE:
        assert name not in pipe.__dict__
    assert after["seq"] == type(pipe).model_cpu_offload_seq
    pipe(**call_kwargs("sd"))  # and the plain pipeline still runs


def test_applying_twice_and_after_remove_works(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    first = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    second = planner.apply(pipe, write_plan(tmp_path, ["unet", "text_encoder", "vae"], name="b.yaml"), dry_run=True)
    assert not first.active and second.active
    pipe(**call_kwargs("sd"))
    assert chain(pipe) == [("unet", None), ("text_encoder", "unet"), ("vae", "text_encoder")]
    second.remove()
    third = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe(**call_kwargs("sd"))
    assert third.trace.call == 2


def test_two_pipelines_sharing_components_each_run_their_own_plan(tiny_pipelines, tmp_path):
    text = load(tiny_pipelines["sd"])
    img2img = StableDiffusionImg2ImgPipeline(**text.components)
    img2img.set_progress_bar_config(disable=True)
    a = planner.apply(text, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    b = planner.apply(img2img, write_plan(tmp_path, ["text_encoder", "vae", "unet"], name="b.yaml"), dry_run=True)
    for _ in range(2):
        a(**call_kwargs("sd"))
        assert chain(text) == [("text_encoder", None), ("unet", "text_encoder"), ("vae", "unet")]
        out = b(**call_kwargs("sd", image=Image.new("RGB", (64, 64)), strength=0.9))
        assert out.images.shape == (1, 64, 64, 3)
        assert chain(img2img) == [("text_encoder", None), ("vae", "text_encoder"), ("unet", "vae")]
    assert a.trace.call == 3 and b.trace.call == 3
    assert [e.component for e in b.trace.events if e.call == 1 and e.event == "load"][0] == "text_encoder"


def test_lora_load_keeps_the_plan_and_never_turns_sequential(tiny_pipelines, tmp_path):
    peft = pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    donor = load(tiny_pipelines["sd"])
    donor.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                           init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(donor.unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)

    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe(**call_kwargs("sd"))
    pipe.load_lora_weights(tmp_path / "lora")
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    assert chain(pipe) == [("text_encoder", None), ("unet", "text_encoder"), ("vae", "unet")]
    assert type(pipe.unet._hf_hook).__name__ == "CpuOffload"  # model offload, not sequential (AlignDevicesHook)
    assert not any(hasattr(m, "_hf_hook") for m in pipe.unet.modules() if m is not pipe.unet)
    pipe(**call_kwargs("sd"))
    assert applied.trace.call == 3
    assert applied.trace.sizes["unet"] > applied.trace.events[2].bytes  # the LoRA weights are counted now


# -- rejections, before anything changes ----------------------------------------------------------------------
def rejected(pipe, plan, rule, text, **kwargs):
    before = state(pipe)
    with pytest.raises(PlanError) as info:
        planner.apply(pipe, plan, **kwargs)
    assert [p.rule for p in info.value.problems] == [rule]
    assert text in str(info.value)
    assert state(pipe) == before
    return info.value.problems[0]


def test_hand_built_plan_with_cpu_device_is_rejected(tiny_pipelines, tmp_path):
    import dataclasses

    pipe = load(tiny_pipelines["sd"])
    plan = dataclasses.replace(write_plan(tmp_path, ["text_encoder", "unet", "vae"]), device="cpu")
    rejected(pipe, plan, "PLN202", "device 'cpu' cannot be an offload target", dry_run=True)
    plan = dataclasses.replace(plan, device="meta")
    rejected(pipe, plan, "PLN202", "'meta'", dry_run=True)


def test_hand_built_plan_with_gpu_id_and_indexed_device_is_rejected(tiny_pipelines, tmp_path):
    import dataclasses

    pipe = load(tiny_pipelines["sd"])
    plan = dataclasses.replace(write_plan(tmp_path, ["unet"], gpu_id=1), device="cuda:1")
    rejected(pipe, plan, "PLN205", "gpu_id 1 is given together with the indexed device 'cuda:1'", dry_run=True)


def _device_mapped(pipe):
    pipe.hf_device_map = {"unet": "cuda:0", "text_encoder": "cuda:1"}


def _unet_spread(pipe):
    pipe.unet.hf_device_map = {"down_blocks": 0, "up_blocks": 1}


def _group_offloaded(pipe):
    pipe.unet.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                   num_blocks_per_group=1)


@pytest.mark.parametrize("setup, text", [
    (_device_mapped, "the pipeline was loaded with a device_map"),
    (_unet_spread, "'unet' is dispatched over several devices"),
    (lambda pipe: pipe.enable_sequential_cpu_offload(device="cpu"), "sequential CPU offload"),
    (_group_offloaded, "group offloading is active"),
    (lambda pipe: pipe.enable_model_cpu_offload(device="cpu"), "call pipe.remove_all_hooks() first"),
], ids=["device-map", "component-spread", "sequential", "group", "diffusers-model-offload"])
def test_pipeline_already_mapped_or_offloaded_is_rejected(setup, text, tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    setup(pipe)
    rejected(pipe, write_plan(tmp_path, ["unet"]), "PLN302", text, dry_run=True)


def test_unknown_component_names_the_pipelines_components(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    problem = rejected(pipe, write_plan(tmp_path, ["text_encoder", "unet2", "vae"]), "PLN301",
                       "StableDiffusionPipeline has no component 'unet2' (it has: vae, text_encoder", dry_run=True)
    assert problem.fix == "did you mean 'unet'?"
    assert (problem.line, problem.column) == (3, 28)


def test_non_model_component_is_rejected(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    rejected(pipe, write_plan(tmp_path, ["tokenizer", "unet"]), "PLN301", "is a CLIPTokenizer", dry_run=True)


def test_missing_accelerator_says_to_dry_run(tiny_pipelines, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "count", lambda kind: 0)
    pipe = load(tiny_pipelines["sd"])
    rejected(pipe, write_plan(tmp_path, ["unet"]), "PLN303",
             "no cuda device found: run with --dry-run to trace the plan on the CPU")


def test_gpu_id_beyond_the_device_count_is_rejected(tiny_pipelines, tmp_path, one_cuda):
    pipe = load(tiny_pipelines["sd"])
    rejected(pipe, write_plan(tmp_path, ["unet"], gpu_id=3), "PLN303", "cuda:3 is beyond the 2 cuda devices")


def test_gpu_id_zero_is_honoured(tiny_pipelines, tmp_path, one_cuda):
    pipe = load(tiny_pipelines["sd"])
    pipe._offload_gpu_id = 1  # left by an earlier diffusers offload; diffusers' `gpu_id or ...` would keep it
    planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], gpu_id=0))
    assert {h.hook.execution_device for h in pipe._all_hooks} == {torch.device("cuda:0")}
    planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], gpu_id=1))
    assert {h.hook.execution_device for h in pipe._all_hooks} == {torch.device("cuda:1")}


def test_none_component_is_skipped_and_reported(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "image_encoder", "unet", "vae"],
                                             exclude=["safety_checker"]), dry_run=True)
    assert applied.skipped == ("image_encoder", "safety_checker")
    assert [n for n, _ in chain(pipe)] == ["text_encoder", "unet", "vae"]


def test_failure_part_way_rolls_back(tiny_pipelines, tmp_path, monkeypatch):
    import accelerate

    pipe = load(tiny_pipelines["sd"])
    before = state(pipe)
    real, calls = accelerate.cpu_offload_with_hook, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "cpu_offload_with_hook", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    assert state(pipe) == before


def test_failure_while_replacing_a_plan_restores_the_previous_one(tiny_pipelines, tmp_path, monkeypatch):
    import accelerate

    pipe = load(tiny_pipelines["sd"])
    planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    real, failed = accelerate.cpu_offload_with_hook, []

    def fails_once(*args, **kwargs):
        if not failed:
            failed.append(1)
            raise OSError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "cpu_offload_with_hook", fails_once)
    with pytest.raises(OSError):
        planner.apply(pipe, write_plan(tmp_path, ["unet", "vae"], name="b.yaml"), dry_run=True)
    assert pipe.model_cpu_offload_seq == "text_encoder->unet->vae"
    assert chain(pipe) == [("text_encoder", None), ("unet", "text_encoder"), ("vae", "unet")]


# -- on a real accelerator (skipped on CPU-only machines such as CI) ------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@gpu
@pytest.mark.parametrize("kind", ["sd", "sdxl", "controlnet"])
def test_on_gpu_hooks_equal_diffusers_and_only_exclusions_stay(kind, tiny_pipelines, tmp_path):
    ours, theirs = load(tiny_pipelines[kind]), load(tiny_pipelines[kind])
    applied = planner.apply(ours, class_plan(tmp_path, ours))
    theirs.enable_model_cpu_offload(device="cuda")
    assert hooks_of(ours) == hooks_of(theirs)
    for call in (1, 2, 3):
        a = ours(**call_kwargs(kind)).images
        b = theirs(**call_kwargs(kind)).images
        assert (a == b).all()
        on_device = {n for n, m in ours.components.items() if isinstance(m, torch.nn.Module)
                     and next(m.parameters()).device.type == "cuda"}
        assert on_device == set(ours.components) & applied.plan.exclude
        assert applied.trace.resident == on_device and applied.trace.call == call + 1
    assert hooks_of(ours) == hooks_of(theirs)


@gpu
def test_on_gpu_trace_follows_real_transfers(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]))
    where = []  # the device of each model's weights when the next model starts (torch pre-hooks run first)
    for name in ("unet", "vae"):
        getattr(pipe, name).register_forward_pre_hook(
            lambda m, a, name=name: where.append((name, str(next(pipe.text_encoder.parameters()).device))))
    pipe(**call_kwargs("sd"))
    assert where[0] == ("unet", "cuda:0")  # text_encoder is still there when the unet starts; its hook moves it
    assert [(e.event, e.component) for e in applied.trace.events] == [
        ("load", "text_encoder"), ("offload", "text_encoder"), ("load", "unet"), ("offload", "unet"),
        ("load", "vae"), ("offload", "vae")]
    assert all(next(m.parameters()).device.type == "cpu" for m in (pipe.text_encoder, pipe.unet, pipe.vae))
