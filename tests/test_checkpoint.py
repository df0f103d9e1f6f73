from __future__ import annotations

import errno
import math

import pytest
import torch
from helpers import tiny_config

import smp_lite.harness.checkpoint
from smp_lite.errors import MissingPath, TrainError
from smp_lite.harness.checkpoint import (
    CHECKPOINT_FORMAT,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)
from smp_lite.models import ActionNet, MotionNet, build_backbone
from smp_lite.train import train


def test_checkpoints_are_checked_on_load(tmp_path) -> None:
    save_checkpoint(tmp_path / "x.pt", {"format": "something-else"})
    with pytest.raises(TrainError, match="not a smp-lite checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(MissingPath, match="does not exist"):  # a usage mistake: exit code 2
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(
        TrainError, match=r"is a folder, not a checkpoint: give a file, e.g. .*best"
    ):
        load_checkpoint(tmp_path)
    with pytest.raises(TrainError, match="/dev/null is not a file"):
        load_checkpoint("/dev/null")
    assert not list(tmp_path.glob("*.tmp"))  # atomic save leaves no temporary file


def test_a_save_interrupted_before_the_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 1})

    def killed(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(smp_lite.harness.checkpoint.os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 2})
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.slow
def test_init_from_a_smp_lite_checkpoint_loads_the_backbone(ucf_tiny, tmp_path) -> None:
    torch.manual_seed(1)
    source = ActionNet("r3d10", num_classes=2)  # another task's checkpoint serves too
    state = {"format": CHECKPOINT_FORMAT, "arch": "r3d10", "model": source.state_dict()}
    save_checkpoint(tmp_path / "sup.pt", state)
    target = MotionNet("r3d10")
    load_backbone(target, tmp_path / "sup.pt", "r3d10")
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key
    with pytest.raises(TrainError, match=r"sup.pt holds a r3d10 backbone, not c3d$"):
        load_backbone(MotionNet("c3d"), tmp_path / "sup.pt", "c3d")
    # in a run: the first step starts from the loaded backbone
    result = train(
        tiny_config(ucf_tiny, tmp_path / "run", epochs=1, init_from=str(tmp_path / "sup.pt")),
        progress=False,
    )
    assert math.isfinite(result["train_loss"])


def original_modules(arch: str) -> list[tuple[str, str]]:
    """(module, kind) of the original PRP/SMP backbones, in the order of smp-lite's tensors.

    Mirrors PRP's models/c3d.py (conv1, bn1, ..., conv5b, bn5b) and VCOP's models/r3d.py and
    r21d.py: R3DNet / R2Plus1DNet((1,1,1,1)) = stem conv1 + bn1, layers conv2..conv5 of one
    SpatioTemporalResBlock `block1` (conv1, bn1, conv2, bn2; downsampleconv, downsamplebn from
    conv3 on), each conv a SpatioTemporalConv: temporal_spatial_conv (R3D), or spatial_conv,
    bn, temporal_conv (R(2+1)D).
    """
    if arch == "c3d":
        layers = ["1", "2", "3a", "3b", "4a", "4b", "5a", "5b"]
        return [m for n in layers for m in ((f"conv{n}", "conv+bias"), (f"bn{n}", "bn"))]

    def conv(name: str) -> list[tuple[str, str]]:
        if arch == "r3d10":
            return [(f"{name}.temporal_spatial_conv", "conv")]
        return [
            (f"{name}.spatial_conv", "conv"),
            (f"{name}.bn", "bn"),
            (f"{name}.temporal_conv", "conv"),
        ]

    modules = [*conv("conv1"), ("bn1", "bn")]
    for layer in range(2, 6):
        block = f"conv{layer}.block1"
        modules += [*conv(f"{block}.conv1"), (f"{block}.bn1", "bn")]
        modules += [*conv(f"{block}.conv2"), (f"{block}.bn2", "bn")]
        if layer > 2:
            modules += [*conv(f"{block}.downsampleconv"), (f"{block}.downsamplebn", "bn")]
    return modules


TENSORS = {
    "conv": ["weight"],
    "conv+bias": ["weight", "bias"],
    "bn": ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"],
}


def random_backbone_state(arch: str) -> dict[str, torch.Tensor]:
    state = build_backbone(arch).state_dict()
    return {
        k: torch.randint(0, 1000, v.shape) if v.dtype == torch.long else torch.randn(v.shape)
        for k, v in state.items()
    }


@pytest.mark.parametrize("arch", ["c3d", "r3d10", "r21d10"])
@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model"])
def test_checkpoints_of_the_original_code_load_into_the_matching_backbone(
    arch, wrapper, tmp_path
) -> None:
    source = random_backbone_state(arch)
    # the n-th original tensor belongs where smp-lite keeps its n-th tensor
    original_keys = [
        (f"{m}.{t}", kind) for m, kind in original_modules(arch) for t in TENSORS[kind]
    ]
    original = {}
    for (key, kind), value in zip(original_keys, source.values(), strict=True):
        if key.endswith(".weight"):  # a conv weight is 5-D and a BN weight 1-D, in both nets
            assert value.dim() == (1 if kind == "bn" else 5), key
        original[f"module.base_network.{key}"] = value
    original["module.fc8.weight"] = torch.randn(4, 512)  # the task head: not the backbone
    saved = original if wrapper == "plain" else {wrapper: original, "epoch": 300}
    torch.save(saved, tmp_path / "prp.pth")

    target = MotionNet(arch)
    load_backbone(target, tmp_path / "prp.pth", arch)
    loaded = target.backbone.state_dict()
    for ours, value in source.items():
        assert torch.equal(loaded[ours], value), ours


def test_original_checkpoints_of_pytorch_0_4_0_lack_bn_counters(tmp_path) -> None:
    source = random_backbone_state("c3d")
    keys = [f"{m}.{t}" for m, kind in original_modules("c3d") for t in TENSORS[kind]]
    original = {k: v for k, v in zip(keys, source.values(), strict=True)}
    original = {k: v for k, v in original.items() if not k.endswith("num_batches_tracked")}
    torch.save(original, tmp_path / "c3d.pth")
    target = build_backbone("c3d")
    load_backbone(target, tmp_path / "c3d.pth", "c3d")
    assert torch.equal(target.state_dict()["stages.4.1.0.weight"], source["stages.4.1.0.weight"])


def test_wrong_original_checkpoints_fail_in_one_line(tmp_path) -> None:
    source = random_backbone_state("c3d")
    keys = [f"{m}.{t}" for m, kind in original_modules("c3d") for t in TENSORS[kind]]
    torch.save(dict(zip(keys, source.values(), strict=True)), tmp_path / "c3d.pth")
    with pytest.raises(TrainError, match=r"holds a c3d backbone \(original code\), not r3d10$"):
        load_backbone(MotionNet("r3d10"), tmp_path / "c3d.pth", "r3d10")
    torch.save({"encoder.fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(TrainError, match="unexpected key 'encoder.fc.weight'"):
        load_backbone(MotionNet("r21d10"), tmp_path / "other.pth", "r21d10")
    with pytest.raises(TrainError, match="unexpected key 'encoder.fc.weight'"):
        load_backbone(MotionNet("r3d18"), tmp_path / "other.pth", "r3d18")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        load_backbone(MotionNet("c3d"), tmp_path / "junk.pth", "c3d")


# ---------------------------------------------------------------------------------------------
# A full disk (docs/reliability.md)


def enospc_from_torch(state, f) -> None:
    f.write(b"x" * 1000)  # a partial file on the full disk
    context = OSError(errno.ENOSPC, "No space left on device")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from context


def enospc_at_fsync(fd) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")  # NFS reports it at the flush


def quota_exceeded(state, f) -> None:
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


@pytest.mark.parametrize(
    "target, fault",
    [
        ("torch.save", enospc_from_torch),
        ("os.fsync", enospc_at_fsync),
        ("torch.save", quota_exceeded),
    ],
)
def test_a_full_disk_says_what_the_save_needs_and_leaves_no_tmp(
    target, fault, tmp_path, monkeypatch
):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 1})
    module, name = target.split(".")
    monkeypatch.setattr(torch if module == "torch" else smp_lite.harness.checkpoint.os, name, fault)
    state = {"format": CHECKPOINT_FORMAT, "step": 2, "w": torch.zeros(2**20)}  # 4 MiB
    with pytest.raises(TrainError) as err:
        save_checkpoint(path, state)
    message = str(err.value)
    assert message.startswith(f"no space left in {tmp_path} to save last.pt: it needs about 4.0")
    assert "MiB free" in message and "\n" not in message
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the previous save is intact
