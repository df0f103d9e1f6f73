from __future__ import annotations

import pytest
import torch

from smp_lite.harness.runtime import (
    GuardedConv3d,
    Runtime,
    conv3d_as_matmul,
    conv3d_pointwise_strided,
    conv3d_space_to_depth,
    cpu_has_native_bf16,
    guard_cpu_bf16_conv3d,
    loader_workers,
    make_runtime,
    reform_cuda_convs,
    unwrap,
)
from smp_lite.models import MotionNet


@pytest.mark.parametrize("arch", ["r3d18", "c3d", "r21d10"])
def test_bf16_on_cpu_gives_gradients_that_agree_with_fp32(arch) -> None:
    """The guard around depth-2 3D convs (c5 of a 16-frame clip) keeps bf16 weight gradients
    close to fp32's; without it oneDNN returns garbage there (docs/benchmarks.md)."""
    torch.manual_seed(0)
    model = MotionNet(arch)
    x = torch.rand(2, 3, 16, 32, 32)

    def weight_grads(bf16: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = out["recon"].float().mean() + sum(
                z.float().logsumexp(1).mean() for z in out["logits"]
            )
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.dim() > 1}

    reference = weight_grads(False)
    guard_cpu_bf16_conv3d(model)
    guarded = weight_grads(True)
    for name, ref in reference.items():
        assert torch.isfinite(guarded[name]).all(), name
        cos = torch.nn.functional.cosine_similarity(guarded[name].flatten(), ref.flatten(), dim=0)
        assert cos > 0.5, (name, cos.item())  # bf16 noise gives >= 0.7, the bug ~0 or NaN


def test_runtime_prepare_guards_bf16_convs_on_a_cpu_only() -> None:
    cpu = torch.device("cpu")
    guarded = Runtime(cpu, "bf16", True).prepare(MotionNet("r3d10"))
    plain = Runtime(cpu, "fp32", False).prepare(MotionNet("r3d10"))

    def patched(model) -> list[bool]:
        return [isinstance(m, GuardedConv3d) for m in model.modules()]

    assert any(patched(guarded)) and not any(patched(plain))
    assert "GuardedConv3d(" in str(guarded)  # the model prints as what runs
    # temporal kernel > 1 and temporal stride 1: the convs oneDNN gets wrong at depth 2
    for m in guarded.modules():
        if isinstance(m, torch.nn.Conv3d):
            assert isinstance(m, GuardedConv3d) == (m.kernel_size[0] > 1 and m.stride[0] == 1)
    assert guarded.state_dict().keys() == plain.state_dict().keys()
    conv = next(m for m in guarded.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_automatic_runtime_on_this_cpu() -> None:
    runtime = make_runtime()
    assert runtime.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if runtime.device.type == "cpu":
        assert runtime.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
        assert runtime.channels_last == (runtime.precision == "bf16")


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("cuda", "nccl"), ("auto", "nccl")])
def test_under_torchrun_the_process_group_follows_the_device(device, backend, monkeypatch):
    """--device cpu on a GPU machine joins with gloo (NCCL cannot reduce CPU tensors); the GPU
    is the rank's own. The GPU is faked: no process group is joined."""
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", joined.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", joined.append)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    runtime = make_runtime(device, "fp32")
    assert (runtime.rank, runtime.world) == (1, 2)
    if backend == "gloo":
        assert runtime.device == torch.device("cpu") and joined == ["gloo"]
    else:
        assert runtime.device == torch.device("cuda", 1) and joined == [runtime.device, "nccl"]


def test_wrap_compiles_only_where_asked_and_unwrap_gives_the_bare_model_back() -> None:
    cpu, model = torch.device("cpu"), torch.nn.Linear(2, 2)
    assert make_runtime("cpu").compile is False  # a CPU compiles only with --compile
    compiled = Runtime(cpu, "fp32", False, compile=True).wrap(model)
    assert compiled is not model and unwrap(compiled) is model
    assert compiled.state_dict().keys() != model.state_dict().keys()  # why checkpoints unwrap
    plain = Runtime(cpu, "fp32", False).wrap(model)
    assert plain is model and unwrap(plain) is model


@pytest.mark.parametrize(
    ("device", "cores", "world", "expected"),
    [
        ("cpu", 16, 1, 0),
        ("cuda", 16, 1, 15),
        ("cuda", 16, 4, 3),
        ("cuda", 64, 1, 16),
        ("cuda", 1, 1, 1),
    ],
)
def test_default_loader_workers_leave_the_cpu_to_the_step(
    monkeypatch, device, cores, world, expected
) -> None:
    """No loader processes on a CPU (they take cores from the step); on a GPU one core per rank
    is left to the training process."""
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(cores)), raising=False)
    runtime = Runtime(torch.device(device), "fp32", False, world=world)
    assert loader_workers(None, runtime) == expected
    assert loader_workers(3, runtime) == 3  # asked for: kept


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "bias"),
    [(3, 1, 1, False), (3, (1, 2, 2), 1, True), ((3, 1, 1), (1, 1, 1), (1, 0, 0), False)],
)
def test_the_guards_matmul_is_conv3d(kernel, stride, padding, bias) -> None:
    """The guard's im2col matmul computes F.conv3d, in fp32 to float rounding, with channels_last
    or contiguous tensors."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 6, kernel, stride, padding, bias=bias)
    x = torch.randn(2, 8, 2, 7, 7)
    expected = conv(x)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        conv = conv.to(memory_format=layout)
        got = conv3d_as_matmul(
            x.contiguous(memory_format=layout), conv.weight, conv.bias, conv.stride, conv.padding
        )
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)


def test_the_guard_refuses_a_conv_it_cannot_compute() -> None:
    model = torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3, padding=1, groups=2))
    with pytest.raises(ValueError, match="plain convolutions"):
        guard_cpu_bf16_conv3d(model)


@pytest.mark.parametrize(
    ("form", "in_ch", "out_ch", "kernel", "stride", "padding", "size"),
    [
        (conv3d_space_to_depth, 3, 8, (3, 7, 7), (1, 2, 2), (1, 3, 3), (4, 16, 16)),  # R3D stem
        (conv3d_space_to_depth, 3, 8, (3, 7, 7), (1, 2, 2), (1, 3, 3), (4, 15, 17)),  # odd sizes
        (conv3d_space_to_depth, 3, 5, (1, 7, 7), (1, 2, 2), (0, 3, 3), (2, 12, 10)),  # R(2+1)D
        (conv3d_space_to_depth, 2, 5, (2, 4, 4), (1, 2, 2), (0, 0, 0), (3, 9, 8)),  # even kernel
        (conv3d_pointwise_strided, 4, 6, 1, (2, 2, 2), 0, (5, 7, 8)),  # residual shortcuts
        (conv3d_pointwise_strided, 4, 6, 1, (1, 2, 2), 0, (4, 6, 6)),
    ],
)
def test_the_gpu_conv_forms_are_conv3d(form, in_ch, out_ch, kernel, stride, padding, size) -> None:
    """Each form of `reform_cuda_convs` computes F.conv3d and its gradients, in fp32 to float
    rounding, with channels_last or contiguous inputs."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(in_ch, out_ch, kernel, stride, padding)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x = torch.randn(2, in_ch, *size).contiguous(memory_format=layout).requires_grad_(True)
        expected, got = conv(x), form(x, conv.weight, conv.bias, conv.stride, conv.padding)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)
        grad = torch.randn_like(expected)
        inputs = [x, conv.weight, conv.bias]
        wanted = torch.autograd.grad(expected, inputs, grad)
        for a, b in zip(torch.autograd.grad(got, inputs, grad), wanted, strict=True):
            assert torch.allclose(a, b, atol=1e-4)


def test_gpu_conv_forms_replace_the_slow_convs_only_inside_a_compiled_graph() -> None:
    """On a GPU the stem and the strided shortcuts take their forms in torch.compile's graph
    (here traced by aot_eager, on the CPU), and only there: the eager model is the plain one,
    and the compiled one computes the same."""
    torch.manual_seed(0)
    model = MotionNet("r3d10").eval()  # BN's batch statistics of a tiny c5 amplify rounding
    x = torch.randn(1, 3, 8, 32, 32)
    plain = model(x)["recon"]
    reform_cuda_convs(model)
    formed = {n: m for n, m in model.named_modules() if hasattr(m, "compiled_form")}
    assert sorted(formed) == [
        "backbone.stages.0.0",
        "backbone.stages.2.0.downsample.0",
        "backbone.stages.3.0.downsample.0",
        "backbone.stages.4.0.downsample.0",
    ]
    used = []
    for name, conv in formed.items():
        form = conv.compiled_form
        conv.compiled_form = lambda *args, form=form, name=name: used.append(name) or form(*args)
    assert torch.equal(model(x)["recon"], plain) and not used
    compiled = torch.compile(model, backend="aot_eager")(x)["recon"]
    assert sorted(used) == sorted(formed)
    assert torch.allclose(compiled, plain, atol=1e-5)
    assert "forward" not in vars(
        unwrap(
            Runtime(torch.device("cpu"), "fp32", False).prepare(MotionNet("r3d10"))
        ).backbone.stages[0][0]
    )  # not on a CPU
