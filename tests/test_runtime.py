from __future__ import annotations

import pytest
import torch

from smp_lite.harness.accel import ComposedUpsampleSequential, GuardedConv3d
from smp_lite.harness.runtime import (
    Runtime,
    cpu_has_native_bf16,
    loader_workers,
    make_runtime,
    unwrap,
)
from smp_lite.models import MotionNet


def test_runtime_prepare_guards_bf16_convs_on_a_cpu_only() -> None:
    cpu = torch.device("cpu")
    guarded = Runtime(cpu, "bf16", True).prepare(MotionNet("r3d10"))
    plain = Runtime(cpu, "fp32", False).prepare(MotionNet("r3d10"))

    def patched(model) -> list[bool]:
        return [isinstance(m, GuardedConv3d) for m in model.modules()]

    assert any(patched(guarded)) and not any(patched(plain))
    for model in (guarded, plain):  # the decoder's tail composed on every device
        assert isinstance(model.decoder.layers, ComposedUpsampleSequential)
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
