"""Faster forms of the same layers, which `Runtime.prepare` applies to a model in place (its
state dict unchanged, each swapped layer printing what runs). Each computes what the plain
layer computes (tests/test_accel.py); the speeds are in docs/benchmarks.md.

- `compose_upsample_convs`: a kernel-2 stride-2 transposed conv followed by a kernel-3 conv
  (the PRP decoder's last two layers) as one composed transposed conv;
- `guard_cpu_bf16_conv3d`: on a CPU under bf16 autocast, convs over a depth-2 input as one
  matmul (oneDNN's own gives garbage weight gradients there);
- `reform_cuda_convs`: on a GPU inside torch.compile, the 3-channel stems and the strided
  pointwise shortcuts in forms of the same sum that cuDNN runs well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# The decoder's last upsampling and conv, composed


def compose_upsample_convs(model: nn.Module) -> nn.Module:
    """Make each nn.Sequential whose last two items are a kernel-2 stride-2 ConvTranspose3d
    and a (Conv3d kernel 3 padding 1, ...) block to a few channels a
    `ComposedUpsampleSequential`. Only to a few channels (the decoder's last conv, 64 -> 3):
    there the pair spends its time on the full-size map between them, which the composed conv
    never makes."""
    for seq in model.modules():
        if type(seq) is nn.Sequential and len(seq) >= 2 and composable(seq[-2], seq[-1]):
            seq.__class__ = ComposedUpsampleSequential  # the same children, another forward
    return model


def composable(up: nn.Module, block: nn.Module) -> bool:
    if not isinstance(up, nn.ConvTranspose3d) or not isinstance(block, nn.Sequential):
        return False
    conv = block[0]
    return (
        up.kernel_size == (2, 2, 2) and up.stride == (2, 2, 2) and up.padding == (0, 0, 0)
        and isinstance(conv, nn.Conv3d) and conv.kernel_size == (3, 3, 3)
        and conv.stride == (1, 1, 1) and conv.padding == (1, 1, 1) and conv.groups == 1
        and conv.out_channels < 8
    )  # fmt: skip


class ComposedUpsampleSequential(nn.Sequential):
    """nn.Sequential, its last transposed conv and the conv after it computed as one
    (`upsample_then_conv`)."""

    def forward(self, x: Tensor) -> Tensor:
        *head, up, (conv, *rest) = self
        for layer in head:
            x = layer(x)
        x = upsample_then_conv(x, up, conv)
        for layer in rest:
            x = layer(x)
        return x

    def extra_repr(self) -> str:
        return "its last transposed conv and the conv after it computed as one composed conv"


def upsample_then_conv(x: Tensor, up: nn.ConvTranspose3d, conv: nn.Conv3d) -> Tensor:
    """conv(up(x)) for a kernel-2 stride-2 transposed conv and a kernel-3 padding-1 conv, two
    linear maps with nothing between them, as the one transposed conv (kernel 4, stride 2,
    padding 1) whose kernel is their composition, plus the bias they add. It skips the
    full-size map of the middle channels and costs 8 taps an output voxel, not 27
    (the decoder's time either way: docs/benchmarks.md)."""
    taps = torch.arange(4, device=x.device)
    # one_hot[r, d, m] = 1 where the upsampling tap r then the conv tap d is the composed tap m
    one_hot = taps == torch.arange(2, device=x.device)[:, None, None] - taps[:3, None] + 2
    e = one_hot.to(up.weight.dtype)
    # under autocast in bf16 with fp32 sums, rounded once, as the two convs round their weights
    kernel = torch.einsum(  # (C_in, C_out, 4, 4, 4)
        "icxyz,ocuvw,xup,yvq,zwr->iopqr", up.weight, conv.weight, e, e, e
    )
    y = F.conv_transpose3d(x, kernel, stride=2, padding=1)  # (B, C_out, 2T, 2H, 2W)
    return y + bias_of_upsample_then_conv(up, conv, y.shape[2:]).to(y.dtype)


def bias_of_upsample_then_conv(up: nn.ConvTranspose3d, conv: nn.Conv3d, size) -> Tensor:
    """(1, C_out, *size): conv(up(0)), constant inside and another value along each border,
    where the conv's zero padding meets the upsampled bias; taken from a 3x3x3 volume."""
    bias = up.bias.view(1, -1, 1, 1, 1).expand(1, -1, 3, 3, 3)
    small = F.conv3d(bias, conv.weight, conv.bias, padding=1)  # (1, C_out, 3, 3, 3)
    index = []
    for n in size:  # the first position, the inner ones, the last
        i = torch.ones(n, dtype=torch.long, device=small.device)
        i[0], i[-1] = 0, 2
        index.append(i)
    return small[:, :, index[0]][:, :, :, index[1]][:, :, :, :, index[2]]


# ---------------------------------------------------------------------------------------------
# CPU bf16


def guard_cpu_bf16_conv3d(model: nn.Module) -> nn.Module:
    """Make each 3D conv with temporal kernel > 1 and temporal stride 1 a `GuardedConv3d`:
    under bf16 autocast on the CPU it computes depth-2 inputs as one explicit bf16 matmul.

    PyTorch 2.14 with oneDNN computes garbage bf16 weight gradients (relative error ~1, up to
    1e34) for such a conv over an input of depth 2, which a 16-frame clip meets at c5
    (docs/benchmarks.md). A bf16 matmul computes them right, and faster than oneDNN's fp32
    conv, the first remedy tried. The model prints as what runs; state dicts are unchanged.
    """
    for conv in model.modules():
        if isinstance(conv, nn.Conv3d) and conv.kernel_size[0] > 1 and conv.stride[0] == 1:
            plain = conv.groups == 1 and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros"
            if not plain or isinstance(conv.padding, str):
                raise ValueError(f"the CPU bf16 conv guard handles plain convolutions, not {conv}")
            conv.__class__ = GuardedConv3d  # the same parameters, another forward
    return model


class GuardedConv3d(nn.Conv3d):
    """A Conv3d that computes a depth-2 input under CPU bf16 autocast as one bf16 matmul
    (`guard_cpu_bf16_conv3d`), and any other input as Conv3d does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 2 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return conv3d_as_matmul(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def conv3d_as_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> torch.Tensor:
    """F.conv3d with groups 1, dilation 1 and zero padding, as im2col and one matmul."""
    pt, ph, pw = padding
    x = F.pad(x, (pw, pw, ph, ph, pt, pt))
    kt, kh, kw = weight.shape[2:]
    cols = x.unfold(2, kt, stride[0]).unfold(3, kh, stride[1]).unfold(4, kw, stride[2])
    b, _, t, h, w = cols.shape[:5]  # cols: (B, C, T', H', W', kt, kh, kw)
    cols = cols.permute(0, 2, 3, 4, 5, 6, 7, 1).reshape(b * t * h * w, -1)  # (BT'H'W', k*C)
    # (O, k*C) in the order of cols: a view, no copy, of a channels_last weight
    weights = weight.permute(0, 2, 3, 4, 1).reshape(len(weight), -1)
    out = cols @ weights.t()  # (BT'H'W', O)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.view(b, t, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, O, T', H', W'), channels_last


# ---------------------------------------------------------------------------------------------
# The convolutions cuDNN runs far from the GPU's peak, in forms of the same sum that it runs well

ConvForm = Callable[..., torch.Tensor]  # (x, weight, bias, stride, padding) -> F.conv3d's output


def reform_cuda_convs(model: nn.Module) -> nn.Module:
    """Make each 3D conv that cuDNN runs far below the GPU's bf16 peak a `ReformedConv3d`:
    inside torch.compile's graph it computes another form of the same sum (`cuda_conv_form`;
    the step times: docs/benchmarks.md, "On a GPU"). Eager calls (evaluation, `--no-compile`)
    keep cuDNN's conv. The model prints as what runs; state dicts are unchanged."""
    for conv in model.modules():
        form = cuda_conv_form(conv) if isinstance(conv, nn.Conv3d) else None
        if form is not None:
            conv.__class__ = ReformedConv3d  # the same parameters, another forward
            conv.compiled_form = form
    return model


class ReformedConv3d(nn.Conv3d):
    """A Conv3d computed in `compiled_form` inside torch.compile's graph (`reform_cuda_convs`),
    as Conv3d does elsewhere."""

    compiled_form: ConvForm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self.compiled_form(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, compiled as {self.compiled_form.__name__}"


def cuda_conv_form(conv: nn.Conv3d) -> ConvForm | None:
    """The form for this conv, or None where cuDNN's own is kept: few input channels at
    spatial stride 2 (the ResNet stems, 3 -> 64), a strided pointwise conv (the residual
    shortcuts). Not the decoder's last conv (64 -> 3 at full size): as one pointwise conv to
    every kernel tap and a sum of the shifted taps it was slower (docs/benchmarks.md);
    `upsample_then_conv` composes it with the transposed conv before it instead."""
    plain = conv.groups == 1 and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros"
    if not plain or isinstance(conv.padding, str):
        return None
    if conv.in_channels < 8 and conv.stride[0] == 1 and conv.stride[1:] == (2, 2):
        return conv3d_space_to_depth
    if conv.kernel_size == (1, 1, 1) and conv.padding == (0, 0, 0) and conv.stride != (1, 1, 1):
        return conv3d_pointwise_strided
    return None


def conv3d_space_to_depth(x, weight, bias, stride, padding) -> torch.Tensor:
    """F.conv3d at spatial stride 2 as a stride-1 conv over 2x2 pixel blocks folded into the
    channels: (B, C, T, H, W) -> (B, 4C, T, H'', W''), the kernel padded to even size and folded
    the same way: a 3-channel stem, slow in cuDNN, gets 12 channels."""
    o, c, kt, kh, kw = weight.shape
    pt, ph, pw = padding
    b, _, t, h, w = x.shape
    qh, qw = (kh + 1) // 2, (kw + 1) // 2  # the kernel in blocks
    nh, nw = (h + 2 * ph - kh) // 2 + qh, (w + 2 * pw - kw) // 2 + qw  # the input in blocks
    x = F.pad(x, (pw, 2 * nw - w - pw, ph, 2 * nh - h - ph))  # (B, C, T, 2nh, 2nw)
    x = x.view(b, c, t, nh, 2, nw, 2).permute(0, 1, 4, 6, 2, 3, 5).reshape(b, 4 * c, t, nh, nw)
    weight = F.pad(weight, (0, 2 * qw - kw, 0, 2 * qh - kh))  # (O, C, kt, 2qh, 2qw)
    weight = weight.view(o, c, kt, qh, 2, qw, 2).permute(0, 1, 4, 6, 2, 3, 5)
    weight = weight.reshape(o, 4 * c, kt, qh, qw)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    return F.conv3d(x, weight, bias, (stride[0], 1, 1), (pt, 0, 0))


def conv3d_pointwise_strided(x, weight, bias, stride, padding) -> torch.Tensor:
    """A strided 1x1x1 conv as the subsampled input through a stride-1 one (cuDNN's strided
    pointwise conv reads the whole input)."""
    st, sh, sw = stride
    return F.conv3d(x[:, :, ::st, ::sh, ::sw], weight, bias)
