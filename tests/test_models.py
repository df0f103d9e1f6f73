import math

import pytest
import torch
import torch.nn as nn

from smp_lite.config import ARCHS
from smp_lite.masks import motion_mask_cam
from smp_lite.models import (
    NUM_RATES,
    ActionNet,
    Decoder,
    MotionNet,
    build_backbone,
    count_parameters,
    pooled_feature,
    retrieval_feature,
)

RESNET_WIDTHS = (64, 64, 128, 256, 512)
WIDTHS = {"c3d": (64, 128, 256, 512, 512), **{a: RESNET_WIDTHS for a in ARCHS[1:]}}
# method.md table: backbone parameters without fc, in millions
PAPER_PARAMS_M = {"c3d": 27.66, "r3d10": 14.36, "r21d10": 14.37, "r3d18": 33.2, "r21d18": 31.3}


def clip(t: int, h: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, t, h, h)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_paper(arch):
    n = count_parameters(build_backbone(arch))
    assert abs(n / 1e6 - PAPER_PARAMS_M[arch]) / PAPER_PARAMS_M[arch] < 0.01, n


def test_r21d10_follows_vcop_stem():
    # Tran et al.'s formula for a 3x7x7 conv 3->64 gives 83 middle channels (torchvision: 45)
    first_conv = next(m for m in build_backbone("r21d10").modules() if isinstance(m, nn.Conv3d))
    assert first_conv.out_channels == 83


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_shapes_at_16x112x112(arch):
    with torch.device("meta"):  # shape inference only, no compute
        backbone = build_backbone(arch)
        maps = backbone(clip(16, 112, b=1))
    assert backbone.widths == WIDTHS[arch]
    if arch == "c3d":
        expected = [(16, 56), (8, 28), (4, 14), (2, 7), (2, 7)]
    else:
        expected = [(16, 56), (16, 56), (8, 28), (4, 14), (2, 7)]
    got = [tuple(m.shape[1:]) for m in maps]
    assert got == [(c, t, s, s) for c, (t, s) in zip(WIDTHS[arch], expected, strict=True)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("t,side", [(8, 32), (16, 64)])
def test_small_clips_give_c5_at_t8_h16(arch, t, side):
    backbone = build_backbone(arch)
    maps = backbone(clip(t, side, b=1))
    assert [m.shape[1] for m in maps] == list(WIDTHS[arch])
    assert maps[-1].shape == (1, 512, t // 8, side // 16, side // 16)


def test_pooled_and_retrieval_features():
    c5 = torch.randn(2, 512, 2, 7, 7)
    assert pooled_feature(c5).shape == (2, 512)
    torch.testing.assert_close(pooled_feature(c5)[1, 3], c5[1, 3].mean())
    feat = retrieval_feature(c5)
    assert feat.shape == (2, 9216)
    # first entry is the max over the top-left 2x2 window of channel 0, frame 0
    torch.testing.assert_close(feat[0, 0], c5[0, 0, 0, :2, :2].max())


@pytest.mark.parametrize("mg,decoder", [(True, True), (False, True), (True, False), (False, False)])
def test_motionnet_outputs(mg, decoder):
    model = MotionNet("r3d10", mg=mg, decoder=decoder)
    out = model(clip(8, 32))
    assert len(out["logits"]) == (4 if mg else 1)
    assert all(logits.shape == (2, NUM_RATES) for logits in out["logits"])
    assert out["c5"].shape == (2, 512, 1, 2, 2)
    # the c5 head's pre-pool map: its mean through fc gives the c5 logits (the CAM identity)
    assert out["rate_map"].shape == (2, 512, 1, 2, 2)
    head = model.rate_heads[0]
    torch.testing.assert_close(head.fc(out["rate_map"].mean(dim=(2, 3, 4))), out["logits"][0])
    torch.testing.assert_close(head(out["c5"]), out["logits"][0])
    assert ("recon" in out) == decoder
    assert (model.decoder is not None) == decoder
    if decoder:
        assert out["recon"].shape == (2, 3, 16, 32, 32)
        assert out["recon"].min() >= 0


@pytest.mark.parametrize("arch", ARCHS)
def test_rate_head_widths(arch):
    model = MotionNet(arch, decoder=False)
    w = WIDTHS[arch]
    assert [head.fc.in_features for head in model.rate_heads] == [w[4], w[3], w[2], w[1]]
    # the 10x learning rate is selected by name: only the rate heads' Linear layers are "fc"
    fc_names = {n for n, _ in model.named_parameters() if ".fc." in n}
    assert fc_names == {f"rate_heads.{i}.fc.{p}" for i in range(4) for p in ("weight", "bias")}


def test_decoder_doubles_frames_at_full_size():
    with torch.device("meta"):
        recon = Decoder()(torch.empty(1, 512, 2, 7, 7))
    assert recon.shape == (1, 3, 32, 112, 112)


def test_decoder_output_is_nonnegative():
    recon = Decoder()(torch.randn(2, 512, 1, 2, 2) * 10)
    assert recon.shape == (2, 3, 16, 32, 32)
    assert recon.min() >= 0 and recon.max() > 0


@pytest.mark.parametrize("size", [(1, 2, 2), (2, 3, 4)])
def test_the_decoder_computes_its_last_two_layers_as_one(size):
    """The decoder's transposed conv and 3-channel conv run as one composed transposed conv
    (`upsample_then_conv`): the same output and the same gradients, for every parameter and
    the input, as the layers one after the other (in float64, so rounding cannot hide a border
    or a tap wrong by one)."""
    torch.manual_seed(0)
    decoder = Decoder().double()
    c5 = torch.randn(2, 512, *size, dtype=torch.double, requires_grad=True)
    layers = nn.Sequential(*decoder.layers)
    expected, got = layers(c5), decoder(c5)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    grad = torch.rand_like(expected)
    inputs = [c5, *decoder.parameters()]
    wanted = torch.autograd.grad(expected, inputs, grad)
    for a, b in zip(torch.autograd.grad(got, inputs, grad), wanted, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_unknown_arch_raises_naming_valid_ones():
    with pytest.raises(ValueError, match="r21d10"):
        build_backbone("resnet50")


def test_backward_reaches_backbone():
    model = MotionNet("r21d10")
    out = model(clip(8, 32))
    loss = out["recon"].mean() + sum(logits.logsumexp(1).mean() for logits in out["logits"])
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert grads[0].abs().sum() > 0  # the stem's first conv


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_bf16_autocast(arch):
    model = MotionNet(arch).to(memory_format=torch.channels_last_3d)
    x = clip(8, 32).to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out["recon"].shape == (2, 3, 16, 32, 32)
    assert out["logits"][0].dtype == torch.bfloat16
    assert all(torch.isfinite(logits).all() for logits in out["logits"])


def test_actionnet():
    model = ActionNet("c3d", num_classes=101, dropout=0.5)
    assert model.fc.in_features == 512
    assert model(clip(8, 32)).shape == (2, 101)
    model.eval()
    x = clip(8, 32)
    torch.testing.assert_close(model(x), model(x))  # dropout off in eval


def cross_entropy_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the batch of -log softmax(logits)[label], one sample at a time."""
    losses = []
    for z, y in zip(logits.tolist(), labels.tolist(), strict=True):
        log_sum = math.log(sum(math.exp(v) for v in z))
        losses.append(log_sum - z[y])
    return sum(losses) / len(losses)


def test_motion_loss_computed_by_hand() -> None:
    """Rate-1 fillers are not supervised, the error is averaged over each sample's supervised
    elements and then over the batch, the mask is lam * CAM + (1 - lam) * DPAU, and the CE terms
    weigh 0.1 (MG heads: their mean)."""
    torch.manual_seed(0)
    model = MotionNet("r3d10", mg=True)
    b, t2, h, w = 2, 8, 16, 16  # a 4-frame clip's 8-frame target at 16x16
    out = {
        "recon": torch.rand(b, 3, t2, h, w),
        "logits": [torch.randn(b, NUM_RATES) for _ in range(4)],
        "rate_map": torch.randn(b, 512, 1, 2, 2),
    }
    rate = torch.tensor([0, 3])  # sample 0 at rate 1, sample 1 at rate 8
    weight = torch.tensor([[1.0, 0.0] * (t2 // 2), [1.0] * t2])  # rate 1: odd frames are fillers
    dpau_level = torch.tensor([1.5, 0.9])  # a flat DPAU map per sample: the same after upsampling
    targets = {
        "target": torch.rand(b, 3, t2, h, w),
        "target_weight": weight,
        "dpau": dpau_level[:, None, None, None, None].expand(b, 3, t2, 13, 13).clone(),
        "rate": rate,
    }
    lam = 0.3
    cam = motion_mask_cam(model.rate_heads[0].fc.weight, out["rate_map"], rate, (t2, h, w))

    per_sample = []
    for i in range(b):  # the mean over each sample's supervised elements
        total, count = 0.0, 0
        for f in range(t2):
            if weight[i, f] == 0:
                continue
            mask = lam * cam[i, :, f] + (1 - lam) * dpau_level[i]  # (3, h, w)
            err = (out["recon"][i, :, f] - targets["target"][i, :, f]) ** 2
            total += float((mask * err).sum())
            count += 3 * h * w
        per_sample.append(total / count)
    recon = sum(per_sample) / b  # then over the batch
    ce = [cross_entropy_by_hand(z, rate) for z in out["logits"]]
    expected = recon + 0.1 * ce[0] + 0.1 * sum(ce[1:]) / 3

    loss, terms = model.loss(out, targets, lam)
    assert terms["recon"].item() == pytest.approx(recon, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce[0], rel=1e-5)
    assert terms["ce_mg"].item() == pytest.approx(sum(ce[1:]) / 3, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_rate_1_sample_weighs_as_much_as_a_rate_8_sample() -> None:
    """Half of a rate-1 target is fillers; its error still counts as much as a rate-8 one's."""
    model = MotionNet("r3d10", mg=False)
    b, t2, h, w = 2, 8, 16, 16
    target = torch.zeros(b, 3, t2, h, w)
    recon = torch.zeros(b, 3, t2, h, w)
    recon[0] = 1.0  # only the rate-1 sample is wrong, by 1 everywhere
    targets = {
        "target": target,
        "target_weight": torch.tensor([[1.0, 0.0] * (t2 // 2), [1.0] * t2]),
        "dpau": torch.ones(b, 3, t2, 13, 13),  # a plain loss: every element weighs 1
        "rate": torch.tensor([0, 3]),
    }
    out = {"recon": recon, "logits": [torch.zeros(b, NUM_RATES)], "rate_map": None}
    _, terms = model.loss(out, targets, lam=0.0)
    assert terms["recon"].item() == pytest.approx(0.5)  # (1 + 0) / 2, not 16 / (16 + 32)
    recon = torch.zeros(b, 3, t2, h, w)
    recon[1] = 1.0  # now only the rate-8 sample is wrong
    _, terms = model.loss({**out, "recon": recon}, targets, lam=0.0)
    assert terms["recon"].item() == pytest.approx(0.5)
