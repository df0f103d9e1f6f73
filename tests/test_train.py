from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import smp_lite.checkpoint
import smp_lite.train
from smp_lite.checkpoint import CHECKPOINT_FORMAT, load_backbone
from smp_lite.data import load_index, split_by_group
from smp_lite.models import ActionNet, MotionNet, build_backbone
from smp_lite.train import (
    ConfigError,
    RunInterrupted,
    Runtime,
    TrainError,
    blend_lambda,
    guard_cpu_bf16_conv3d,
    load_checkpoint,
    make_config,
    make_optimizer,
    motion_mask_cam,
    read_metrics,
    recompute_bn_stats,
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
    same = make_config("smp", "quick", arch="r3d10", lr=0.01, head_lr_scale=1.0)
    assert [g["lr"] for g in make_optimizer(model, same).param_groups] == [0.01, 0.01]


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
    with pytest.raises(ConfigError, match=message):  # a ValueError too: the CLI exits 2
        make_config("smp", "quick", **kw)
    with pytest.raises(ConfigError, match="unknown task"):
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
    _, val_videos = split_by_group(load_index(str(ucf_tiny)).train, cfg.val_fraction, cfg.seed)
    assert rows[0]["val_clips"] == 4 * len(val_videos) == 8  # every held-out video at every rate
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


def test_precise_bn_sets_the_statistics_of_the_current_weights() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
    model[1].running_mean.fill_(5.0)  # stale statistics, as after fast-changing weights
    weights = {k: v.clone() for k, v in model.named_parameters()}
    clips = [torch.rand(2, 3, 4, 6, 6) + i for i in range(3)]  # (B, 3, T, H, W), shifting means
    with torch.no_grad():
        inputs = [model[0](c) for c in clips]  # what the BN layer sees: (2, 4, 4, 6, 6) each
    recompute_bn_stats(model, iter(clips), Runtime(torch.device("cpu"), "fp32", False))
    bn = model[1]
    population_mean = torch.cat(inputs).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(bn.running_mean, population_mean)
    batch_vars = torch.stack([x.var(dim=(0, 2, 3, 4)) for x in inputs])  # unbiased, per batch
    torch.testing.assert_close(bn.running_var, batch_vars.mean(0))
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k


def test_precise_bn_changes_only_the_bn_statistics_of_a_run(ucf_tiny, tmp_path) -> None:
    for name, batches in (("running", 0), ("precise", 2)):
        cfg = tiny_config(ucf_tiny, tmp_path / name, task="prp", epochs=1, precise_bn=batches)
        train(cfg, progress=False)
    running = load_checkpoint(tmp_path / "running" / "last.pt")
    precise = load_checkpoint(tmp_path / "precise" / "last.pt")
    stats = [k for k in running["model"] if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(running["model"][k], precise["model"][k]) for k in stats)
    for k, v in running["model"].items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, precise["model"][k]), k  # training itself is unchanged
    assert running["metrics"]["train_loss"] == precise["metrics"]["train_loss"]
    assert running["metrics"]["val_loss"] != precise["metrics"]["val_loss"]


TORCHRUN_ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    """`nproc` real processes on this CPU in a gloo process group, as torchrun starts them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*command, "--nproc-per-node", str(nproc), *args]


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(args), cwd=cwd, env=TORCHRUN_ENV, capture_output=True, text=True
    )


def tiny_pretrain_args(data, out, *extra: str) -> list[str]:
    args = ["-m", "smp_lite.cli", "pretrain", "--arch", "r3d10", "--data", f"synth:{data}"]
    args += ["--out", str(out), "--batch-size", "2", "--clip-len", "8", "--resize", "32x40"]
    args += ["--crop", "32", "--workers", "0", "--val-fraction", "0.25", "--precision", "fp32"]
    return [*args, "--no-progress", *extra]


def test_precise_bn_averages_the_statistics_over_ranks(tmp_path) -> None:
    script = tmp_path / "bn.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import torch
            import torch.distributed as dist
            from smp_lite.train import Runtime, recompute_bn_stats

            dist.init_process_group("gloo")
            rank = dist.get_rank()
            torch.manual_seed(0)  # the same weights on both ranks, as under DDP
            model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4))
            clips = [torch.rand(2, 3, 4, 6, 6) * (1 + rank) + rank for _ in range(2)]
            cpu = torch.device("cpu")
            recompute_bn_stats(model, clips, Runtime(cpu, "fp32", False))  # this rank alone
            alone = {k: v.clone() for k, v in model[1].state_dict().items()}
            recompute_bn_stats(model, clips, Runtime(cpu, "fp32", False, rank, 2))
            torch.save({"alone": alone, "ranks": model[1].state_dict()}, f"{sys.argv[1]}/{rank}.pt")
            dist.destroy_process_group()
            """
        )
    )
    done = torchrun([str(script), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for stat in ("running_mean", "running_var"):
        assert not torch.allclose(r0["alone"][stat], r1["alone"][stat])  # the ranks saw others
        mean = (r0["alone"][stat] + r1["alone"][stat]) / 2
        torch.testing.assert_close(r0["ranks"][stat], mean)
        torch.testing.assert_close(r1["ranks"][stat], mean)


def test_pretraining_under_torchrun_with_two_processes(ucf_tiny, tmp_path) -> None:
    """Real DistributedDataParallel over gloo: metrics count the clips of both ranks."""
    done = torchrun(tiny_pretrain_args(ucf_tiny, tmp_path / "run", "--epochs", "2"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1  # rank 0 speaks for both
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2]
    steps = rows[0]["step"]
    assert steps >= 1 and rows[0]["train_clips"] == 2 * 2 * steps  # 2 ranks x batch 2 x steps
    assert rows[0]["val_clips"] == 8  # both ranks' halves of the held-out set, at every rate
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 2 * steps


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resume_goes_on(ucf_tiny, tmp_path):
    out = tmp_path / "run"
    args = tiny_pretrain_args(ucf_tiny, out, "--epochs", "40", "--save-every", "1")
    running = subprocess.Popen(
        torchrun_command(args), cwd=tmp_path, env=TORCHRUN_ENV, text=True, stderr=subprocess.PIPE
    )
    for _ in range(1200):  # an epoch is done: the ranks are training, their handlers are set
        if (out / "metrics.jsonl").is_file() or running.poll() is not None:
            break
        time.sleep(0.1)
    running.send_signal(signal.SIGTERM)  # what a cluster's scheduler sends
    stderr = running.communicate(timeout=120)[1]
    assert running.returncode != 0
    assert stderr.count("to go on from there, run:") == 1, stderr[-3000:]  # rank 0's
    stopped = load_checkpoint(out / "last.pt")
    assert 1 <= stopped["epoch"] < 40
    epochs = str(stopped["epoch"] + 1)
    resumed = torchrun(tiny_pretrain_args(ucf_tiny, out, "--epochs", epochs, "--resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(out)] == list(range(1, stopped["epoch"] + 2))


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


# ---------------------------------------------------------------------------------------------
# Reliability (docs/reliability.md)


def test_a_save_interrupted_before_the_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 1})

    def killed(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(smp_lite.checkpoint.os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 2})
    assert load_checkpoint(path)["step"] == 1


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    ucf_tiny, tmp_path, monkeypatch
):
    calls, motion_step = [], smp_lite.train.motion_step

    def nan_at_step_3(model, batch, cfg, epoch):
        calls.extend([1] if model.training else [])  # count training steps only
        loss, terms, heads = motion_step(model, batch, cfg, epoch)
        return (loss * math.nan if len(calls) == 3 else loss), terms, heads

    monkeypatch.setattr(smp_lite.train, "motion_step", nan_at_step_3)
    cfg = tiny_config(ucf_tiny, tmp_path / "run", batch_size=2, limit_batches=0, save_every=1)
    with pytest.raises(TrainError, match=r"loss became nan at step 3 \(epoch 1, batch 3\)"):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # saved after step 2, mid-epoch
    assert (state["step"], state["epoch"], state["batches_done"]) == (2, 0, 2)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigterm_stops_after_the_step_with_last_pt_saved(ucf_tiny, tmp_path, monkeypatch):
    calls, motion_step = [], smp_lite.train.motion_step

    def terminated_in_step_2(model, batch, cfg, epoch):
        calls.extend([1] if model.training else [])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a cluster's time limit
        return motion_step(model, batch, cfg, epoch)

    monkeypatch.setattr(smp_lite.train, "motion_step", terminated_in_step_2)
    cfg = tiny_config(ucf_tiny, tmp_path / "run", batch_size=2, limit_batches=0, save_every=0)
    with pytest.raises(RunInterrupted, match="interrupted: saved .*last.pt"):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")  # step 2 finished, then saved
    assert (state["step"], state["epoch"], state["batches_done"]) == (2, 0, 2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_resume_refuses_what_would_not_continue_the_run(ucf_tiny, tmp_path) -> None:
    with pytest.raises(TrainError, match="nothing to resume"):
        train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1, resume=True), progress=False)
    assert not (tmp_path / "r").exists()  # nothing written
    train(tiny_config(ucf_tiny, tmp_path / "r", epochs=1), progress=False)
    with pytest.raises(TrainError, match="was run with batch_size 4, not 2"):
        train(tiny_config(ucf_tiny, tmp_path / "r", batch_size=2, resume=True), progress=False)
    with pytest.raises(TrainError, match="holds a smp r3d10 run, not smp c3d"):
        train(tiny_config(ucf_tiny, tmp_path / "r", arch="c3d", resume=True), progress=False)


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
