from __future__ import annotations

import json
import math

import pytest
import torch

from smp_lite.models import MotionNet
from smp_lite.train import (
    TrainError,
    blend_lambda,
    guard_cpu_bf16_conv3d,
    load_checkpoint,
    make_config,
    make_optimizer,
    motion_mask_cam,
    read_metrics,
    save_checkpoint,
    train,
)


def tiny_config(data, out, **kw):
    """Clips of 8x32x32 and two batches per epoch: a step takes ~0.2 s on a CPU."""
    settings = dict(
        arch="r3d10",
        data=str(data),
        out=str(out),
        epochs=3,
        batch_size=4,
        clip_len=8,
        resize=(32, 40),
        crop=32,
        workers=0,
        limit_batches=2,
        val_fraction=0.25,
        precision="fp32",
    )
    return make_config(kw.pop("task", "smp"), "quick", **(settings | kw))


def test_exp_lambda_schedule() -> None:
    assert blend_lambda("exp", 300, 300) == pytest.approx(1.0)
    assert blend_lambda("exp", 150, 300) == pytest.approx(math.exp(-2), rel=1e-6)  # ~0.135
    assert blend_lambda("exp", 75, 100) == pytest.approx(math.exp(-1))  # s = 25 when E <= 100
    assert blend_lambda("linear", 30, 120) == pytest.approx(0.25)
    assert blend_lambda("sigmoid", 50, 100) == pytest.approx(0.5)
    assert blend_lambda("dpau", 10, 100) == 0.0 and blend_lambda("cam", 1, 100) == 1.0
    values = [blend_lambda("exp", e, 300) for e in range(1, 301)]
    assert values == sorted(values)


def test_cam_mask_follows_the_ground_truth_rate() -> None:
    fc_weight = torch.zeros(4, 2)
    fc_weight[0, 0] = 1.0  # rate 0 looks at channel 0, rate 1 at channel 1
    fc_weight[1, 1] = 1.0
    rate_map = torch.zeros(2, 2, 2, 4, 4)
    rate_map[:, 0, :, 0, 0] = 5.0  # channel 0 fires top-left
    rate_map[:, 1, :, 3, 3] = 5.0  # channel 1 fires bottom-right
    mask = motion_mask_cam(fc_weight, rate_map, torch.tensor([0, 1]), (8, 16, 16))
    assert mask.shape == (2, 3, 8, 16, 16)
    assert mask.min() >= 0.8 - 1e-6 and mask.max() <= 2.0 + 1e-6
    assert mask[0, :, :, 0, 0].min() > 1.5 and mask[0, :, :, -1, -1].max() < 1.0
    assert mask[1, :, :, -1, -1].min() > 1.5 and mask[1, :, :, 0, 0].max() < 1.0


def test_cam_mask_of_a_flat_map_has_no_nan() -> None:
    mask = motion_mask_cam(
        torch.randn(4, 8), torch.zeros(3, 8, 2, 2, 2), torch.tensor([0, 1, 3]), (16, 32, 32)
    )
    assert torch.isfinite(mask).all() and torch.allclose(mask, torch.tensor(2.0))


def test_rate_heads_learn_ten_times_faster() -> None:
    cfg = make_config("smp", "quick", arch="r3d10", lr=0.01)
    model = MotionNet("r3d10", mg=True)
    groups = make_optimizer(model, cfg).param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert len(groups[1]["params"]) == 8  # weight and bias of four rate-head Linear layers


def test_presets_and_overrides() -> None:
    paper = make_config("prp", data="ucf101:/somewhere")
    assert (paper.preset, paper.epochs, paper.batch_size, paper.crop) == ("paper", 300, 8, 112)
    sup = make_config("supervised", "paper")
    assert (sup.batch_size, sup.lr, sup.schedule, sup.warmup_epochs) == (32, 0.1, "cosine", 5)
    quick = make_config("smp", data="synth:data/synth", epochs=2)
    assert quick.preset == "quick" and quick.epochs == 2


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(arch="vgg"), "unknown architecture"),
        (dict(epochs=0), "epochs must be positive"),
        (dict(batch_size=-1), "batch size must be positive"),
        (dict(crop=50), "divisible by 16"),
        (dict(lam_schedule="cubic"), "unknown lambda schedule"),
    ],
)
def test_bad_settings_are_refused(kw, message) -> None:
    with pytest.raises(TrainError, match=message):
        make_config("smp", "quick", **kw)
    with pytest.raises(TrainError, match="unknown task"):
        make_config("jigsaw")


def test_smp_run_writes_the_run_and_its_loss_goes_down(ucf_tiny, tmp_path) -> None:
    cfg = tiny_config(ucf_tiny, tmp_path / "run", epochs=5, lr=0.05)
    result = train(cfg, progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for key in (
        "val_loss",
        "train_acc_rate_c5",
        "train_acc_rate_c2",
        "val_acc_rate_c5",
        "lr",
        "clips_per_s",
        "train_recon",
        "train_ce_mg",
        "skipped_videos",
    ):
        assert key in rows[0], key
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "smp" and config["version"] and config["crop"] == 32
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 5 and state["arch"] == "r3d10" and state["task"] == "smp"
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best_val"] == pytest.approx(min(r["val_loss"] for r in rows))
    assert result["best_val"] == pytest.approx(best["best_val"])


def test_same_seed_same_numbers(ucf_tiny, tmp_path) -> None:
    def run(name: str, seed: int) -> list[dict]:
        train(
            tiny_config(ucf_tiny, tmp_path / name, task="prp", epochs=2, seed=seed), progress=False
        )
        rows = read_metrics(tmp_path / name)
        return [{k: v for k, v in r.items() if k != "clips_per_s"} for r in rows]

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a == b
    assert a != c


def test_supervised_run(ucf_tiny, tmp_path) -> None:
    result = train(
        tiny_config(ucf_tiny, tmp_path / "sup", task="supervised", epochs=1), progress=False
    )
    assert "train_acc_action" in result and "val_loss" in result
    assert load_checkpoint(tmp_path / "sup" / "best.pt")["task"] == "supervised"


def test_a_second_run_in_the_same_folder_is_refused(ucf_tiny, tmp_path) -> None:
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1), progress=False)
    with pytest.raises(TrainError, match="already holds a run"):
        train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1), progress=False)
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1, overwrite=True), progress=False)
    assert len(read_metrics(tmp_path / "r")) == 1


def test_checkpoints_are_checked_on_load(tmp_path) -> None:
    save_checkpoint(tmp_path / "x.pt", {"format": "something-else"})
    with pytest.raises(TrainError, match="not a smp-lite checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(TrainError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    assert not list(tmp_path.glob("*.tmp"))  # atomic save leaves no temporary file


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
