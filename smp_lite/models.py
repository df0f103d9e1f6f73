"""Backbones (C3D, R3D, R(2+1)D), rate heads, reconstruction decoder and the two task models.

Every backbone maps a clip (B, 3, T, H, W) to five stage maps c1..c5, with c5 of shape
(B, 512, T/8, H/16, W/16): 512x2x7x7 for the standard 16x112x112 clip.
"""

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.video import r2plus1d_18, r3d_18
from torchvision.models.video.resnet import (
    BasicBlock,
    BasicStem,
    Conv2Plus1D,
    Conv3DSimple,
    VideoResNet,
)

from .config import ARCHS, INITS

NUM_RATES = 4  # playback rates 1, 2, 4, 8


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3x3 conv (same padding) + BN + ReLU: the C3D layer, and the unit of the heads/decoder."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, 3, padding=1), nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True)
    )


# -----------------------------------------------------------------------------
# backbones


class Backbone(nn.Module):
    """Five stages applied in sequence; forward returns every stage's output."""

    def __init__(self, stages: list[nn.Module], widths: tuple[int, int, int, int, int]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.widths = widths  # channels of c1..c5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return tuple(maps)


def build_backbone(arch: str, weight_init: str = "pytorch") -> Backbone:
    """The backbone `arch`, its weights drawn as `weight_init` says: "pytorch", each layer's own
    default (the original PRP/SMP code has no init code); "torchvision" (Kaiming fan-out); or
    "zero-residual", PyTorch's default with each residual branch's last BatchNorm scale at 0,
    so that every block starts as its shortcut (Goyal et al. 2017; C3D has no such branch)."""
    if weight_init not in INITS:
        raise ValueError(f"unknown weight init {weight_init!r}; valid: {', '.join(INITS)}")
    backbone = _build_stages(arch)
    for m in backbone.modules():
        if isinstance(m, (nn.Conv3d, nn.BatchNorm3d)):
            if weight_init == "torchvision":
                _init_like_torchvision(m)
            else:
                m.reset_parameters()
    if weight_init == "zero-residual":
        for block in backbone.modules():
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.conv2[1].weight)  # conv2 is (conv, BatchNorm)
    return backbone


def _build_stages(arch: str) -> Backbone:
    if arch == "c3d":
        return Backbone(_c3d_stages(), (64, 128, 256, 512, 512))
    resnet_widths = (64, 64, 128, 256, 512)
    if arch == "r3d10":
        # VCOP/PRP's R3DNet((1,1,1,1)) is exactly torchvision's VideoResNet with one block per stage
        net = VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem)
        return Backbone([net.stem, net.layer1, net.layer2, net.layer3, net.layer4], resnet_widths)
    if arch == "r21d10":
        return Backbone(_vcop_r2plus1d_10_stages(), resnet_widths)
    if arch in ("r3d18", "r21d18"):
        net = r3d_18(weights=None) if arch == "r3d18" else r2plus1d_18(weights=None)
        return Backbone([net.stem, net.layer1, net.layer2, net.layer3, net.layer4], resnet_widths)
    raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")


def _c3d_stages() -> list[nn.Module]:
    # PRP's C3D with BN; pool5/fc6/fc7 dropped, so c5 keeps T/8 and 8-frame clips still work
    stages = [
        nn.Sequential(conv_bn_relu(3, 64), nn.MaxPool3d((1, 2, 2))),  # (B, 64, T, H/2, W/2)
        nn.Sequential(conv_bn_relu(64, 128), nn.MaxPool3d(2)),  # (B, 128, T/2, H/4, W/4)
        nn.Sequential(conv_bn_relu(128, 256), conv_bn_relu(256, 256), nn.MaxPool3d(2)),  # T/4, H/8
        nn.Sequential(conv_bn_relu(256, 512), conv_bn_relu(512, 512), nn.MaxPool3d(2)),  # T/8, H/16
        nn.Sequential(conv_bn_relu(512, 512), conv_bn_relu(512, 512)),  # (B, 512, T/8, H/16, W/16)
    ]
    return stages


def _vcop_r2plus1d_10_stages() -> list[nn.Module]:
    # Follows the R2Plus1DNet((1,1,1,1)) of the VCOP/PRP code, the net PRP/SMP report R(2+1)D
    # results with (14.37M params); torchvision's blocks with layers (1,1,1,1) give 12.49M.
    # Differences from torchvision, all with Tran et al.'s middle width M (_tran_midplanes):
    #  - stem: (2+1)D conv 3->83->64 with kernel 3x7x7 (torchvision's R2Plus1dStem: 45 mid);
    #  - a block's second conv gets M(Nout, Nout) (torchvision reuses the first's M(Nin, Nout));
    #  - shortcut: factored 1x1x1 conv Nin->M->Nout, BN+ReLU between (torchvision: one conv).
    def block(in_ch: int, out_ch: int) -> BasicBlock:
        shortcut = None
        if in_ch != out_ch:
            shortcut = nn.Sequential(
                _factored_conv(in_ch, out_ch, 1, 1, 2, 2), nn.BatchNorm3d(out_ch)
            )
        b = BasicBlock(
            in_ch, out_ch, Conv2Plus1D, stride=1 if in_ch == out_ch else 2, downsample=shortcut
        )
        b.conv2[0] = Conv2Plus1D(out_ch, out_ch, _tran_midplanes(out_ch, out_ch, 3, 3))
        return b

    stem = nn.Sequential(
        _factored_conv(3, 64, 3, 7, 1, 2), nn.BatchNorm3d(64), nn.ReLU(inplace=True)
    )
    widths = [(64, 64), (64, 128), (128, 256), (256, 512)]
    return [stem, *(nn.Sequential(block(i, o)) for i, o in widths)]


def _tran_midplanes(in_ch: int, out_ch: int, t: int, d: int) -> int:
    # Tran et al.: M = floor(t*d*d*Nin*Nout / (d*d*Nin + t*Nout)) keeps the (2+1)D conv's
    # parameter count at that of the full t x d x d conv
    return (t * d * d * in_ch * out_ch) // (d * d * in_ch + t * out_ch)


def _factored_conv(
    in_ch: int, out_ch: int, t: int, d: int, stride_t: int, stride_s: int
) -> nn.Sequential:
    """(2+1)D conv: d x d spatial conv to M channels, BN + ReLU, then t x 1 x 1 temporal conv."""
    mid = _tran_midplanes(in_ch, out_ch, t, d)
    return nn.Sequential(
        nn.Conv3d(in_ch, mid, (1, d, d), (1, stride_s, stride_s), (0, d // 2, d // 2), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, out_ch, (t, 1, 1), (stride_t, 1, 1), (t // 2, 0, 0), bias=False),
    )


def _init_like_torchvision(m: nn.Module) -> None:
    if isinstance(m, nn.Conv3d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    else:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -----------------------------------------------------------------------------
# clip features


def pooled_feature(c5: Tensor) -> Tensor:
    """Global average pool: (B, C, t, h, w) -> (B, C); the classification feature."""
    return c5.mean(dim=(2, 3, 4))


def retrieval_feature(c5: Tensor) -> Tensor:
    """VCOP's retrieval feature: (B, 512, 2, 7, 7) -> max pool (1,2,2) -> (B, 512*2*3*3 = 9216)."""
    return F.max_pool3d(c5, (1, 2, 2)).flatten(1)


# -----------------------------------------------------------------------------
# heads


class RateHead(nn.Module):
    """Playback-rate classifier on one stage map; `fc` is the original's "fc8" (10x lr)."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.conv = conv_bn_relu(in_ch, in_ch)
        self.fc = nn.Linear(in_ch, NUM_RATES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(pooled_feature(self.conv(x)))  # (B, NUM_RATES)


class Decoder(nn.Module):
    """c5 -> clip at twice the input frame rate, (B, 3, 2T, H, W); no skips, final ReLU so >= 0."""

    def __init__(self):
        super().__init__()

        def up(in_ch: int, out_ch: int) -> nn.Sequential:  # doubles t, h, w
            return nn.Sequential(
                nn.ConvTranspose3d(in_ch, in_ch, 2, stride=2), conv_bn_relu(in_ch, out_ch)
            )

        self.layers = nn.Sequential(
            conv_bn_relu(512, 512),  # (B, 512, T/8, H/16, W/16)
            up(512, 256),  # (B, 256, T/4, H/8, W/8)
            up(256, 128),  # (B, 128, T/2, H/4, W/4)
            up(128, 64),  # (B, 64, T, H/2, W/2)
            nn.ConvTranspose3d(64, 64, 2, stride=2),  # (B, 64, 2T, H, W)
            conv_bn_relu(64, 3),  # (B, 3, 2T, H, W)
        )

    def forward(self, c5: Tensor) -> Tensor:
        return self.layers(c5)  # (B, 3, 2T, H, W)


# -----------------------------------------------------------------------------
# models


class MotionNet(nn.Module):
    """Backbone + rate head on c5 (+ multiple-granularity rate heads on c4, c3, c2 when mg=True)
    + decoder (when decoder=True): PRP is mg=False, SMP is mg=True."""

    def __init__(
        self, arch: str, mg: bool = True, decoder: bool = True, weight_init: str = "pytorch"
    ):
        super().__init__()
        self.backbone = build_backbone(arch, weight_init)
        w = self.backbone.widths
        head_widths = (w[4], w[3], w[2], w[1]) if mg else (w[4],)  # c5 first, then c4, c3, c2
        self.rate_heads = nn.ModuleList(RateHead(c) for c in head_widths)
        self.decoder = Decoder() if decoder else None

    def forward(self, x: Tensor) -> dict:
        """{"logits": [c5, c4, c3, c2 heads], "c5", "rate_map", "recon"}: what PRP/SMP's loss
        reads (train.motion_loss)."""
        _, c2, c3, c4, c5 = self.backbone(x)
        # strict=False: without MG there is only the c5 head
        maps = [head.conv(c) for head, c in zip(self.rate_heads, (c5, c4, c3, c2), strict=False)]
        logits = [head.fc(pooled_feature(m)) for head, m in zip(self.rate_heads, maps, strict=True)]
        # rate_map: the c5 head's map right before pooling, whose class-activation map is SMP's
        # convolution motion attention (logits = fc(mean(map)) = mean(fc(map)))
        out: dict = {"logits": logits, "c5": c5, "rate_map": maps[0]}
        if self.decoder is not None:
            out["recon"] = self.decoder(c5)  # (B, 3, 2T, H, W)
        return out


class ActionNet(nn.Module):
    """Backbone + Linear(512, num_classes) on the pooled c5 feature (supervised pretraining,
    fine-tuning, linear probe)."""

    def __init__(
        self, arch: str, num_classes: int, dropout: float = 0.0, weight_init: str = "pytorch"
    ):
        super().__init__()
        self.backbone = build_backbone(arch, weight_init)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.backbone.widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        c5 = self.backbone(x)[-1]
        return self.fc(self.dropout(pooled_feature(c5)))  # (B, num_classes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
