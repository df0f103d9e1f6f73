"""The linear probe (smp_lite/probe.py): standardised features, a speed probe from a
pretrained checkpoint through its run folder and resume, and a probe on another's features."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluate import TINY

from smp_lite.data import RATES
from smp_lite.engine import fit
from smp_lite.errors import ConfigError, DataError
from smp_lite.evaluate import make_eval_config
from smp_lite.folders import read_metrics
from smp_lite.index import load_index
from smp_lite.probe import probe, probe_results, probe_run
from smp_lite.runtime import make_runtime


def test_a_standardised_probe_sees_what_tiny_features_hold(tmp_path) -> None:
    """Features 1000x smaller than usual, their class in one dimension: with the seed's SGD the
    linear layer hardly moves; standardised, it finds the class."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> dict:
        labels = torch.randint(0, 2, (n,), generator=g)
        features = torch.randn(n, 16, generator=g)
        features[:, 3] += 6 * labels  # the class, along one dimension
        return {"output": 1e-3 * features, "label": labels, "rate": labels,
                "video": torch.arange(n)}  # fmt: skip

    cached = {"train": split(256), "test": split(128), "views_dropped": {"train": 0, "test": 0}}
    accuracy = {}
    for standardize in (False, True):
        (tmp_path / str(standardize)).mkdir()
        cfg = make_eval_config("probe", preset="quick", standardize=standardize,
                               out=str(tmp_path / str(standardize)))  # fmt: skip
        run = probe_run(cfg, make_runtime("cpu", "fp32"), tmp_path / str(standardize), cached,
                        ["1", "2", "4", "8"])  # fmt: skip
        fit(run, progress=False)
        accuracy[standardize] = probe_results(cfg, run, cached, ["1", "2", "4", "8"])["accuracy"]
    assert accuracy[True] > 0.95 > 0.7 > accuracy[False]  # chance: 0.5


def test_speed_probe_from_a_pretrained_checkpoint(ucf_tiny, pretrained, tmp_path) -> None:
    out = tmp_path / "probe"
    common = dict(data=str(ucf_tiny), init=str(pretrained), arch="r3d10", out=str(out), **TINY)
    results = probe(make_eval_config("probe", epochs=2, **common), progress=False)
    test_videos = len(load_index(ucf_tiny).test)
    assert results["items"] == len(RATES) * test_videos  # every test video at every rate
    assert set(results["per_class"]) == {"1", "2", "4", "8"}
    assert sum(map(sum, results["confusion"])) == results["items"]
    assert results["accuracy"] == pytest.approx(
        sum(results["per_class"].values()) / 4  # balanced: the mean of the per-rate accuracies
    )
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "val_acc_speed" in rows[0] and "val_acc_at_rate_8" in rows[0]
    assert json.loads((out / "results.json").read_text())["accuracy"] == results["accuracy"]
    assert not (out / "best.pt").exists()  # the test set picks nothing
    features = (out / "features.pt").stat().st_mtime_ns
    probe(make_eval_config("probe", epochs=3, resume=True, **common), progress=False)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert (out / "features.pt").stat().st_mtime_ns == features  # reused, not recomputed


def test_a_probe_trains_on_another_probes_features(ucf_tiny, pretrained, tmp_path) -> None:
    common = dict(data=str(ucf_tiny), init=str(pretrained), arch="r3d10", epochs=2, **TINY)
    first = probe(make_eval_config("probe", out=str(tmp_path / "a"), **common), progress=False)
    cached = tmp_path / "a" / "features.pt"
    again = probe(
        make_eval_config("probe", out=str(tmp_path / "b"), features=str(tmp_path / "a"), **common),
        progress=False,
    )
    assert again["accuracy"] == first["accuracy"] and again["confusion"] == first["confusion"]
    assert torch.equal(torch.load(tmp_path / "b" / "features.pt")["test"]["output"],
                       torch.load(cached)["test"]["output"])  # fmt: skip
    refused = dict(common, out=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="holds other clips than this probe's: seed 0, not 1"):
        probe(make_eval_config("probe", features=str(cached), **dict(refused, seed=1)))
    with pytest.raises(ConfigError, match="not a probe run's features.pt"):
        probe(make_eval_config("probe", features=str(pretrained), **refused))  # a checkpoint
    cached.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="is not a readable features file"):
        probe(make_eval_config("probe", features=str(cached), **refused))
    assert not (tmp_path / "c").exists()  # refused before a run folder was made
