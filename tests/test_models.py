import pytest
import torch
import torch.nn as nn

from smp_lite.config import ARCHS
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
@pytest.mark.slow
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
