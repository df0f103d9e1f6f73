from __future__ import annotations

import copy

import pytest
import torch

from smp_lite.harness.accel import (
    ComposedUpsampleSequential,
    compose_upsample_convs,
    conv3d_as_matmul,
    conv3d_pointwise_strided,
    conv3d_space_to_depth,
    guard_cpu_bf16_conv3d,
    reform_cuda_convs,
)
from smp_lite.harness.runtime import Runtime, unwrap
from smp_lite.models import Decoder, MotionNet


@pytest.mark.parametrize("size", [(1, 2, 2), (2, 3, 4)])
@pytest.mark.slow
def test_the_composed_decoder_computes_what_its_plain_layers_compute(size) -> None:
    """The decoder's last transposed conv and 3-channel conv as one composed transposed conv:
    the same output and the same gradients, for every parameter and the input, as the plain
    layers (in float64, so rounding cannot hide a border or a tap wrong by one)."""
    torch.manual_seed(0)
    plain = Decoder().double()
    composed = compose_upsample_convs(copy.deepcopy(plain))
    swapped = [n for n, m in composed.named_modules() if isinstance(m, ComposedUpsampleSequential)]
    assert swapped == ["layers"]  # the last pair only: the up-blocks end in 64+ channels
    assert composed.state_dict().keys() == plain.state_dict().keys()
    c5 = torch.randn(2, 512, *size, dtype=torch.double, requires_grad=True)
    expected, got = plain(c5), composed(c5)
    assert got.shape == expected.shape == (2, 3, 16 * size[0], 16 * size[1], 16 * size[2])
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    grad = torch.rand_like(expected)
    wanted = torch.autograd.grad(expected, [c5, *plain.parameters()], grad)
    for a, b in zip(
        torch.autograd.grad(got, [c5, *composed.parameters()], grad), wanted, strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("arch", ["r3d18", "c3d", "r21d10"])
@pytest.mark.slow
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


@pytest.mark.slow
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
