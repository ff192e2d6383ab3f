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
    torch.manual_seed(0)  # random LoRA weights from torch's global generator: not from whatever ran before
    donor.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                           init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(donor.unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)

    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe(**call_kwargs("sd"))
    # weight_name: offline, older diffusers refuse to guess the file name
    pipe.load_lora_weights(tmp_path / "lora", weight_name="pytorch_lora_weights.safetensors")
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


def _needs_group_offload(module):
    """Group offloading came with diffusers 0.33: CI's floors job runs an older diffusers, where it cannot be on."""
    if not hasattr(module, "enable_group_offload"):
        pytest.skip("this diffusers has no group offloading")


def _group_offloaded(pipe):
    _needs_group_offload(pipe.unet)
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
             "no cuda device found: pass dry_run=True to trace the plan on the CPU")


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


# -- faults: a call that raises still ends ---------------------------------------------------------------------
def attributes(pipe) -> dict:
    """Each submodule's instance attributes, by identity, for every model component: accelerate's leftovers (a
    `forward` instance attribute, `_old_forward`, `_hf_hook`) show here."""
    return {f"{name}.{sub}": {k: id(v) for k, v in mod.__dict__.items()}
            for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)
            for sub, mod in m.named_modules()}


def warmed(folder, kind="sd"):
    """A pipeline called once: transformers installs its output-capturing hooks on a text encoder's first call."""
    pipe = load(folder)
    pipe(**call_kwargs(kind))
    return pipe


def figures(trace, call):
    stats = trace.calls[call]
    events = [(e.event, e.component, e.bytes, e.reason) for e in trace.events if e.call == call]
    return events, (stats.loaded_bytes, stats.offloaded_bytes, stats.peak_resident_bytes)


class Injected(Exception):
    pass


def _raise(exc=Injected):
    def hook(*args, **kwargs):
        raise exc("injected failure")
    return hook


def _in_pipeline_code(pipe):
    pipe.check_inputs = _raise()  # the pipeline's own code, before any model runs


def _before_the_text_encoder(pipe):
    pipe.text_encoder.register_forward_pre_hook(_raise())  # torch's pre-hooks run before accelerate's


def _inside_the_unet(pipe):
    steps = []

    def second_step(module, args, output):
        steps.append(1)
        if len(steps) == 2:
            raise Injected("injected failure")

    pipe.unet.register_forward_hook(second_step)  # the unet is on the device, the text encoder offloaded


def _in_the_vae_decode(pipe):
    vae = pipe.vae

    def decode(*args, **kwargs):
        type(vae).decode(vae, *args, **kwargs)  # the vae's hook has fired: it sits on the device
        raise Injected("injected failure")

    vae.decode = decode


def _interrupted_in_the_controlnet(pipe):
    pipe.controlnet.register_forward_pre_hook(_raise(KeyboardInterrupt))


@pytest.mark.parametrize("inject, exc", [
    (_in_pipeline_code, Injected), (_before_the_text_encoder, Injected), (_inside_the_unet, Injected),
    (_in_the_vae_decode, Injected), (_interrupted_in_the_controlnet, KeyboardInterrupt),
], ids=["pipeline-code", "text-encoder", "unet", "vae-decode", "keyboard-interrupt"])
def test_a_failing_call_through_the_handle_still_ends_the_call(inject, exc, tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=["controlnet"]),
                            dry_run=True)
    applied(**call_kwargs("controlnet"))
    applied(**call_kwargs("controlnet"))
    normal = figures(applied.trace, 2)
    undo = inject_and_undo(pipe, inject)
    with pytest.raises(exc):
        applied(**call_kwargs("controlnet"))
    assert applied.trace.call == 4 and applied.trace.resident == {"controlnet"}  # offloaded as after a call
    assert applied.active and applied.trace.calls[3].seconds > 0
    undo()
    applied(**call_kwargs("controlnet"))
    assert figures(applied.trace, 4) == normal
    assert chain(pipe) == [("text_encoder", None), ("unet", "text_encoder"), ("vae", "unet")]


def inject_and_undo(pipe, inject):
    """Run `inject` on `pipe`; returns what takes the injection away again (hooks, instance attributes)."""
    before = {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks), dict(m.__dict__))
              for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    had = dict(pipe.__dict__)
    inject(pipe)

    def undo():
        for name, (pre, post, attrs) in before.items():
            module = getattr(pipe, name)
            module._forward_pre_hooks.clear()
            module._forward_pre_hooks.update(pre)
            module._forward_hooks.clear()
            module._forward_hooks.update(post)
            for key in set(module.__dict__) - set(attrs) - set(applied_mod.HOOK_KEYS):
                del module.__dict__[key]
        for key in set(pipe.__dict__) - set(had):
            del pipe.__dict__[key]

    return undo


def test_a_failure_while_ending_the_call_leaves_the_pipelines_own_error_raised(tiny_pipelines, tmp_path,
                                                                              monkeypatch):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe.check_inputs = _raise()
    monkeypatch.setattr(type(pipe), "maybe_free_model_hooks", _raise(OSError))
    with pytest.raises(Injected) as info:
        applied(**call_kwargs("sd"))
    if hasattr(info.value, "__notes__"):
        assert "could not end the call: OSError" in info.value.__notes__[0]
    monkeypatch.undo()
    del pipe.check_inputs
    applied(**call_kwargs("sd"))
    assert applied.trace.resident == set() and applied.active


# -- two pipelines sharing components -------------------------------------------------------------------------
def hooked_forwards(pipe) -> list:
    """Records, for each model forward of the pipeline's calls, whether a model offload hook was on it."""
    from accelerate.hooks import CpuOffload

    seen = []
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            module.register_forward_pre_hook(
                lambda m, a, name=name: seen.append((name, isinstance(getattr(m, "_hf_hook", None), CpuOffload))))
    return seen


@pytest.mark.parametrize("first", ["text", "img2img"])
def test_removing_one_of_two_plans_sharing_components_keeps_the_other_in_force(first, tiny_pipelines, tmp_path):
    text = warmed(tiny_pipelines["sd"])
    img2img = StableDiffusionImg2ImgPipeline(**text.components)
    img2img.set_progress_bar_config(disable=True)
    pristine = attributes(text)
    seen = hooked_forwards(text)
    img_kwargs = dict(image=Image.new("RGB", (64, 64)), strength=0.9)
    handles = {"text": planner.apply(text, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True),
               "img2img": planner.apply(img2img, write_plan(tmp_path, ["text_encoder", "vae", "unet"], name="b.yaml"),
                                        dry_run=True)}
    pipes = {"text": (text, {}), "img2img": (img2img, img_kwargs)}
    for name, (pipe, extra) in pipes.items():  # plain calls of either pipeline offload
        pipe(**call_kwargs("sd", **extra))
        handles[name](**call_kwargs("sd", **extra))
    assert seen and all(hooked for _, hooked in seen)
    handles[first].remove()
    other = "img2img" if first == "text" else "text"
    assert handles[other].active and not handles[first].active
    for pipe, extra in pipes.values():  # both still offload: the shared modules carry the other plan's hooks
        seen.clear()
        pipe(**call_kwargs("sd", **extra))
        assert seen and all(hooked for _, hooked in seen)
    calls = handles[other].trace.call
    pipes[other][0](**call_kwargs("sd", **pipes[other][1]))
    handles[other](**call_kwargs("sd", **pipes[other][1]))
    assert handles[other].trace.call == calls + 2 and handles[other].trace.resident == set()
    handles[other].remove()
    assert attributes(text) == pristine and not hasattr(text, "_all_hooks") and not hasattr(img2img, "_all_hooks")


# -- hooks removed or replaced behind the handle's back -------------------------------------------------------
def _remove_all_hooks(pipe):
    pipe.remove_all_hooks()


def _diffusers_own_offload(pipe):
    type(pipe).enable_model_cpu_offload(pipe, device="cpu")  # the class's own, past the plan's shadow


def _unet_hook_replaced_by_a_model_offload_hook(pipe):
    from accelerate.hooks import CpuOffload, add_hook_to_module

    add_hook_to_module(pipe.unet, CpuOffload(execution_device="cpu"))


def _unet_hook_removed(pipe):
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(pipe.unet)


def _lora_load_failed_half_way(pipe):
    from diffusers.loaders import lora_base

    disable = getattr(lora_base, "_func_optionally_disable_offloading", None)
    if disable is None:
        pytest.skip("this diffusers removes offload hooks for a LoRA load in another way")
    disable(pipe)  # diffusers removed the hooks; the load then raised


def _shadow_overwritten(pipe):
    pipe.model_cpu_offload_seq = "vae->unet->text_encoder"


@pytest.mark.parametrize("displace", [_remove_all_hooks, _diffusers_own_offload,
                                      _unet_hook_replaced_by_a_model_offload_hook, _unet_hook_removed,
                                      _lora_load_failed_half_way, _shadow_overwritten],
                         ids=["remove_all_hooks", "diffusers-offload", "hook-replaced", "hook-removed",
                              "lora-failed", "shadow-overwritten"])
def test_hooks_removed_behind_the_handle_are_reinstalled_by_its_next_call(displace, tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    applied(**call_kwargs("sd"))
    normal = figures(applied.trace, 1)
    displace(pipe)
    assert applied.state == "displaced" and not applied.active  # never reports itself active unhooked
    assert "displaced" in repr(applied)
    seen = hooked_forwards(pipe)
    applied(**call_kwargs("sd"))
    assert seen and all(hooked for _, hooked in seen)
    assert figures(applied.trace, 2) == normal and applied.active
    assert chain(pipe) == [("text_encoder", None), ("unet", "text_encoder"), ("vae", "unet")]
    assert pipe.model_cpu_offload_seq == "text_encoder->unet->vae"


def test_a_plain_call_after_remove_all_hooks_ends_with_the_plan_back(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    pipe.remove_all_hooks()
    assert not applied.active
    pipe(**call_kwargs("sd"))  # runs as the pipeline is (no hooks), as diffusers' own offload would
    assert applied.active and applied.trace.call == 2
    seen = hooked_forwards(pipe)
    pipe(**call_kwargs("sd"))
    assert seen and all(hooked for _, hooked in seen)


def test_a_swapped_component_is_hooked_and_the_old_one_given_back(tiny_pipelines, tmp_path):
    pipe = warmed(tiny_pipelines["sd"])
    new_unet = load(tiny_pipelines["sd"]).unet
    old_unet = pipe.unet
    old_before, new_before = attributes(pipe)["unet."], {k: id(v) for k, v in new_unet.__dict__.items()}
    old_tree = {n: {k: id(v) for k, v in m.__dict__.items()} for n, m in old_unet.named_modules()}
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    applied(**call_kwargs("sd"))
    pipe.unet = new_unet
    assert applied.state == "displaced"
    applied(**call_kwargs("sd"))
    assert type(new_unet._hf_hook).__name__ == "CpuOffload" and applied.active
    assert {n: {k: id(v) for k, v in m.__dict__.items()} for n, m in old_unet.named_modules()} == old_tree
    assert {k: id(v) for k, v in old_unet.__dict__.items()} == old_before
    events = [(e.event, e.component) for e in applied.trace.events if e.call == 2]
    assert events == [("load", "text_encoder"), ("offload", "text_encoder"), ("load", "unet"),
                      ("offload", "unet"), ("load", "vae"), ("offload", "vae")]
    applied.remove()
    assert {k: id(v) for k, v in new_unet.__dict__.items()} == new_before


def hook_types(pipe) -> dict:
    return {f"{name}.{sub}": (type(getattr(m, "_hf_hook", None)).__name__, type(getattr(m, "_diffusers_hook", None)))
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)
            for sub, m in module.named_modules()}


def _sequential_offload(pipe):
    pipe.enable_sequential_cpu_offload(device="cpu")


def _foreign_hook_on_the_unet(pipe):
    from accelerate.hooks import ModelHook, add_hook_to_module

    add_hook_to_module(pipe.unet, ModelHook())


def _group_offload_through_the_pipeline(pipe):
    _needs_group_offload(pipe)
    with pytest.raises(ValueError):  # diffusers stops at the first hooked component, after the (excluded) vae
        pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                  num_blocks_per_group=1)


def _group_offload_on_the_vae(pipe):
    _needs_group_offload(pipe.vae)
    pipe.vae.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                  num_blocks_per_group=1)


@pytest.mark.parametrize("block, text", [
    (_sequential_offload, "AlignDevicesHook (sequential CPU offload or another accelerate hook) was put "
                                    "on 'text_encoder' after the plan was applied"),
    (_foreign_hook_on_the_unet, "ModelHook (sequential CPU offload or another accelerate hook) was put on 'unet'"),
    (_group_offload_on_the_vae, "group offloading was enabled on a component after the plan was applied"),
    (_group_offload_through_the_pipeline, "group offloading was enabled on a component"),
], ids=["sequential", "foreign-hook", "group", "group-through-the-pipeline"])
def test_another_offload_put_on_behind_the_handle_blocks_its_calls(block, text, tiny_pipelines, tmp_path):
    pipe = warmed(tiny_pipelines["sd"])
    pristine = attributes(pipe)
    # the vae is excluded (no hook): diffusers refuses group offloading on a module with an accelerate hook
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet"], exclude=["vae"]), dry_run=True)
    applied(**call_kwargs("sd"))
    block(pipe)
    assert applied.state == "blocked" and not applied.active
    with pytest.raises(PlanError) as info:
        applied(**call_kwargs("sd"))
    assert [p.rule for p in info.value.problems] == ["PLN302"] and text in str(info.value)
    hooks = hook_types(pipe)
    if block is not _sequential_offload:  # (accelerate's sequential offload fails on the CPU here)
        pipe(**call_kwargs("sd"))  # a plain call runs under the other offload, and its end leaves it in place
    assert hook_types(pipe) == hooks and applied.state == "blocked"
    with pytest.raises(PlanError):
        applied(**call_kwargs("sd"))
    if "group" not in block.__name__:  # group offloading is undone by its own API, not by remove()
        applied.remove()
        assert attributes(pipe) == pristine
        pipe(**call_kwargs("sd"))


def test_group_offloading_found_only_at_the_end_of_a_call_blocks_the_next_one(tiny_pipelines, tmp_path):
    apply_group_offloading = getattr(pytest.importorskip("diffusers.hooks"), "apply_group_offloading", None)
    if apply_group_offloading is None:
        pytest.skip("this diffusers has no group offloading")

    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet"], exclude=["vae"]), dry_run=True)
    # deep inside an excluded component, where the check before each call does not look
    apply_group_offloading(pipe.vae.decoder.mid_block, onload_device=torch.device("cpu"), offload_type="block_level",
                           num_blocks_per_group=1)
    assert applied.state == "blocked"
    assert applied(**call_kwargs("sd")).images.shape == (1, 64, 64, 3)  # it ran hooked; its end finds the groups
    assert applied.trace.call == 2 and applied.trace.resident == set()
    with pytest.raises(PlanError, match="PLN302 group offloading was enabled"):
        applied(**call_kwargs("sd"))
    pipe(**call_kwargs("sd"))  # a plain call's end leaves the group offloading in place, without an error
    assert applied.trace.call == 3 and applied.state == "blocked"


# -- the pipeline and the handle are freed --------------------------------------------------------------------
def test_dropping_the_pipeline_and_the_handle_frees_both(tiny_pipelines, tmp_path):
    import gc
    import weakref

    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    applied(**call_kwargs("sd"))
    pipe(**call_kwargs("sd"))
    refs = [weakref.ref(pipe), weakref.ref(applied), weakref.ref(pipe.unet), weakref.ref(applied.trace)]
    del pipe, applied
    gc.collect()
    assert [r() for r in refs] == [None] * 4


def test_diffusers_own_offload_is_freed_too(tiny_pipelines):
    import gc
    import weakref

    pipe = load(tiny_pipelines["sd"])
    pipe.enable_model_cpu_offload(device="cpu")
    pipe(**call_kwargs("sd"))
    ref = weakref.ref(pipe)
    del pipe
    gc.collect()
    assert ref() is None


def test_dropping_the_handle_alone_keeps_the_plan_in_force(tiny_pipelines, tmp_path):
    import gc

    pipe = load(tiny_pipelines["sd"])
    planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    gc.collect()
    seen = hooked_forwards(pipe)
    pipe(**call_kwargs("sd"))
    assert seen and all(hooked for _, hooked in seen)
    applied = applied_mod.applied_to(pipe)
    assert applied.active and applied.trace.call == 2
    applied.remove()
    assert applied_mod.applied_to(pipe) is None


def test_a_dropped_pipeline_sharing_components_with_a_live_one_is_freed(tiny_pipelines, tmp_path):
    import gc
    import weakref

    text = load(tiny_pipelines["sd"])
    img2img = StableDiffusionImg2ImgPipeline(**text.components)
    img2img.set_progress_bar_config(disable=True)
    kept = planner.apply(text, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    dropped = planner.apply(img2img, write_plan(tmp_path, ["text_encoder", "vae", "unet"], name="b.yaml"),
                            dry_run=True)  # its hooks are on the shared modules now
    refs = [weakref.ref(img2img), weakref.ref(dropped)]
    del img2img, dropped
    gc.collect()
    assert [r() for r in refs] == [None, None]
    kept(**call_kwargs("sd"))
    assert kept.active and kept.trace.call == 2


# -- remove() restores every module exactly -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl", "controlnet"])
def test_remove_restores_every_submodule_exactly(kind, tiny_pipelines, tmp_path):
    pipe = warmed(tiny_pipelines[kind], kind)
    before, pipe_before = attributes(pipe), state(pipe)
    exclude = ["controlnet"] if kind == "controlnet" else []
    applied = planner.apply(pipe, class_plan(tmp_path, pipe) if not exclude else
                            write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=exclude), dry_run=True)
    assert attributes(pipe) != before  # the hooks are there
    applied(**call_kwargs(kind))
    pipe(**call_kwargs(kind))
    applied.remove()
    assert attributes(pipe) == before and state(pipe) == pipe_before


def test_remove_keeps_leftovers_that_were_there_before_apply(tiny_pipelines, tmp_path):
    pipe = warmed(tiny_pipelines["sd"])
    pipe.enable_sequential_cpu_offload(device="cpu")
    pipe.remove_all_hooks()  # leaves a `forward` instance attribute on every submodule it hooked
    before = attributes(pipe)
    assert "forward" in pipe.unet.conv_in.__dict__
    with planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True) as applied:
        applied(**call_kwargs("sd"))
    assert attributes(pipe) == before


def test_rollback_of_a_failed_apply_restores_every_submodule_exactly(tiny_pipelines, tmp_path, monkeypatch):
    import accelerate

    pipe = warmed(tiny_pipelines["sd"])
    before = attributes(pipe)
    real, calls = accelerate.cpu_offload_with_hook, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "cpu_offload_with_hook", flaky)
    with pytest.raises(KeyboardInterrupt):
        planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    assert attributes(pipe) == before and applied_mod.applied_to(pipe) is None


# -- call times through the API -------------------------------------------------------------------------------
def test_calls_are_timed_through_the_handle_and_as_plain_calls(tiny_pipelines, tmp_path):
    import time

    pipe = load(tiny_pipelines["sd"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"]), dry_run=True)
    outer = []
    for run in (applied, pipe):
        start = time.perf_counter()
        run(**call_kwargs("sd"))
        outer.append(time.perf_counter() - start)
    handle, plain = applied.trace.calls[1].seconds, applied.trace.calls[2].seconds
    assert 0 < handle <= outer[0]
    assert 0 < plain <= outer[1]  # from the first hook firing to the end of the call's re-install
    assert applied.trace.to_json()["calls"][1]["seconds"] == plain


# -- the trace's labels and the summary -----------------------------------------------------------------------
def test_an_excluded_components_round_trip_is_labelled(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=["controlnet"]),
                            dry_run=True)
    applied(**call_kwargs("controlnet"))
    applied(**call_kwargs("controlnet"))
    labelled = [(e.call, e.event, e.component) for e in applied.trace.events if e.reason == "exclusion round trip"]
    assert labelled == [(1, "offload", "controlnet"), (2, "load", "controlnet"), (2, "offload", "controlnet"),
                        (3, "load", "controlnet")]
    first = applied.trace.events[0]
    assert (first.event, first.component, first.reason) == ("load", "controlnet", None)  # put there once by apply
    assert all(e.reason is None for e in applied.trace.events if e.component != "controlnet")
    assert applied.trace.to_json()["events"][-1]["reason"] == "exclusion round trip"


def test_summary_lists_components_in_running_order_and_the_events(tiny_pipelines, tmp_path):
    from planner.executor.run import Request
    from planner.executor.summary import summary

    pipe = load(tiny_pipelines["controlnet"])
    plan = write_plan(tmp_path, ["unet", "vae", "text_encoder"])  # controlnet outside the plan: its own hook
    applied = planner.apply(pipe, plan, dry_run=True)
    applied(**call_kwargs("controlnet"))
    table = summary(applied, Request(calls=1)).split("\n\n")[1].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["unet", "vae", "text_encoder", "controlnet"]
    assert "controlnet (own hook)" in table[-1]
    assert "transfer" not in summary(applied, Request(calls=1))
    applied.remove()

    pipe = load(tiny_pipelines["controlnet"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=["controlnet"],
                                             name="b.yaml"), dry_run=True)
    for _ in range(2):
        applied(**call_kwargs("controlnet"))
    text = summary(applied, Request(calls=2, events=True))
    assert [line.split()[0] for line in text.split("\n\n")[1].splitlines()[1:]] == \
        ["text_encoder", "unet", "vae", "controlnet"]
    events = text.split("\n\n")[3].splitlines()
    assert events[0].split() == ["call", "transfer", "component", "size", "why"]
    assert events[1].split()[:3] == ["1", "load", "controlnet"] and "round trip" not in events[1]
    assert events[2].split()[:3] == ["1", "load", "text_encoder"]
    assert sum("exclusion round trip" in line for line in events[:-1]) == 3
    assert events[-1] == "(and 1 after the last call: load controlnet (exclusion round trip))"
    assert summary(applied, Request(calls=2, events=True), events=False) == summary(applied, Request(calls=2))


# -- offload_all: the device freed on demand ---------------------------------------------------------------------
def test_offload_all_with_the_chain_brings_exclusions_back_when_they_run(tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=["controlnet"]),
                            dry_run=True)
    kwargs = call_kwargs("controlnet")
    expected = applied(**kwargs).images
    assert applied.trace.resident == {"controlnet"}
    applied.offload_all()
    assert applied.trace.resident == set()
    last = applied.trace.events[-1]
    assert (last.event, last.component, last.reason) == ("offload", "controlnet", "offload_all")
    assert applied.state == "in force"
    assert (pipe(**call_kwargs("controlnet")).images == expected).all()  # a plain call
    assert ("load", "controlnet", "after offload_all") in [(e.event, e.component, e.reason)
                                                           for e in applied.trace.events if e.call == 2]
    assert applied.trace.resident == {"controlnet"}  # the end of the call re-installed diffusers' chain
    assert "_hf_hook" not in pipe.controlnet.__dict__  # the exclusion's parking hook went with the re-install
    applied.remove()


# -- on a real accelerator (skipped on CPU-only machines such as CI) ------------------------------------------
def on_cuda(pipe) -> set:
    return {n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)
            and next(m.parameters()).device.type == "cuda"}


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
        on_device = on_cuda(ours)
        models = {n for n, m in ours.components.items() if isinstance(m, torch.nn.Module)}
        assert on_device == models & applied.plan.exclude  # (a None component, such as safety_checker, is none)
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


@gpu
@pytest.mark.parametrize("inject, exc", [(_inside_the_unet, Injected), (_in_the_vae_decode, Injected),
                                         (_interrupted_in_the_controlnet, KeyboardInterrupt)],
                         ids=["unet", "vae-decode", "keyboard-interrupt"])
def test_on_gpu_a_failing_call_ends_with_only_the_exclusions_on_the_device(inject, exc, tiny_pipelines, tmp_path):
    pipe = load(tiny_pipelines["controlnet"])
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=["controlnet"]))
    applied(**call_kwargs("controlnet"))
    normal = figures(applied.trace, 1)[1]
    undo = inject_and_undo(pipe, inject)
    with pytest.raises(exc):
        applied(**call_kwargs("controlnet"))
    assert on_cuda(pipe) == {"controlnet"} == applied.trace.resident
    undo()
    applied(**call_kwargs("controlnet"))
    assert on_cuda(pipe) == {"controlnet"} and figures(applied.trace, 3)[1][:2] == normal[:2]


@gpu
def test_on_gpu_remove_puts_every_module_back_exactly_and_sharing_plans_keep_offloading(tiny_pipelines, tmp_path):
    text = warmed(tiny_pipelines["sd"])
    img2img = StableDiffusionImg2ImgPipeline(**text.components)
    img2img.set_progress_bar_config(disable=True)
    before = attributes(text)
    a = planner.apply(text, write_plan(tmp_path, ["text_encoder", "unet", "vae"], exclude=[]))
    b = planner.apply(img2img, write_plan(tmp_path, ["text_encoder", "vae", "unet"], name="b.yaml"))
    text.remove_all_hooks()  # behind a's back: its next call re-installs
    a(**call_kwargs("sd"))
    assert on_cuda(text) == set()
    a.remove()
    img2img(**call_kwargs("sd", image=Image.new("RGB", (64, 64)), strength=0.9))
    assert on_cuda(img2img) == set() and b.active
    b.remove()
    assert attributes(text) == before and on_cuda(text) == set()
