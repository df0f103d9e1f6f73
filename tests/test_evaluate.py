from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY, write_run
from torchmetrics.retrieval import RetrievalHitRate
from typer.testing import CliRunner

from smp_lite.cli import app
from smp_lite.errors import ConfigError
from smp_lite.evaluate import (
    TOP_K,
    bootstrap_std,
    eval_out,
    finetune,
    first_of_each,
    latest_pretraining,
    make_eval_config,
    neighbours,
    paired_bootstrap_std,
    retrieval_hits,
    retrieve,
    video_mean,
)
from smp_lite.harness.folders import json_text, read_metrics
from smp_lite.index import DatasetIndex, Video, load_index
from smp_lite.probe import probe


def test_retrieval_hits_match_a_brute_force_search_and_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(7, 5, generator=g), torch.randn(60, 5, generator=g)
    q_labels, g_labels = (
        torch.randint(0, 6, (7,), generator=g),
        torch.randint(0, 6, (60,), generator=g),
    )
    hits = retrieval_hits((queries, q_labels), (gallery, g_labels), TOP_K)
    assert hits.shape == (7, len(TOP_K))
    for q in range(7):
        sims = [(torch.dot(queries[q], x) / (queries[q].norm() * x.norm())).item() for x in gallery]
        ranked = sorted(range(60), key=lambda i: -sims[i])
        for j, k in enumerate(TOP_K):
            assert bool(hits[q, j]) == any(g_labels[i] == q_labels[q] for i in ranked[:k])
    sims = torch.nn.functional.cosine_similarity(queries[:, None], gallery[None], dim=2)
    indexes = torch.arange(7)[:, None].expand(7, 60)
    for j, k in enumerate(TOP_K):
        reference = RetrievalHitRate(top_k=k)(
            sims.flatten(),
            (q_labels[:, None] == g_labels[None]).flatten(),
            indexes=indexes.flatten(),
        )
        assert hits[:, j].float().mean().item() == pytest.approx(reference.item())


def test_neighbours_are_the_most_similar_training_videos_with_their_classes(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    train = tuple(Video(tmp_path / "v" / f"t{i}.mp4", i % 3, str(i)) for i in range(9))
    test = tuple(Video(tmp_path / "v" / f"q{i}.mp4", i % 3, str(i)) for i in range(4))
    index = DatasetIndex("toy", tmp_path, ("A", "B", "C"), train, test, tmp_path / "v")
    gallery_ids = torch.tensor([8, 0, 1, 2, 3, 4, 5, 6])  # video 7 was unreadable
    videos = {
        "queries": (torch.randn(3, 6, generator=g), None, torch.tensor([0, 2, 3])),
        "gallery": (torch.randn(8, 6, generator=g), None, gallery_ids),
    }
    found = neighbours(videos, index, k=5)
    assert [n["query"] for n in found] == ["v/q0.mp4", "v/q2.mp4", "v/q3.mp4"]
    assert [n["class"] for n in found] == ["A", "C", "A"]
    for n, query in zip(found, videos["queries"][0], strict=True):
        sims = torch.nn.functional.cosine_similarity(query[None], videos["gallery"][0])
        rows = sims.argsort(descending=True)[:5]
        assert n["nearest"] == [f"v/t{gallery_ids[r]}.mp4" for r in rows]
        assert n["classes"] == ["ABC"[gallery_ids[r] % 3] for r in rows]


def test_video_means_and_first_rows() -> None:
    values = torch.tensor([[1.0], [3.0], [10.0], [5.0]])
    video = torch.tensor([4, 2, 4, 2])
    means, ids = video_mean(values, video)
    assert ids.tolist() == [2, 4] and means.flatten().tolist() == [4.0, 5.5]
    assert first_of_each(video, ids).tolist() == [1, 0]


def test_bootstrap_spread_over_videos() -> None:
    video = torch.arange(40).repeat_interleave(4)  # 40 videos, 4 clips each
    alone = [str(v) for v in video.tolist()]  # every video its own group: the video bootstrap
    assert bootstrap_std(torch.ones(160), video, alone, seed=0) == 0.0
    half = (torch.arange(160) % 8 < 4).float()  # half the videos right, half wrong
    spread = bootstrap_std(half, video, alone, seed=0)
    assert 0.05 < spread < 0.11  # sqrt(0.25 / 40) = 0.079
    assert spread == bootstrap_std(half, video, alone, seed=0)


def test_the_bootstrap_resamples_groups_then_videos() -> None:
    """Videos of one group that are right or wrong together are one draw, not ten: resampling
    the groups gives the spread a new draw of groups would, wider than the videos' own."""
    video = torch.arange(40).repeat_interleave(4)  # 40 videos in 4 groups of 10
    groups = [f"g{v // 10}" for v in video.tolist()]
    alone = [str(v) for v in video.tolist()]
    right = (video // 10 < 2).float()  # two groups all right, two all wrong
    clustered = bootstrap_std(right, video, groups, seed=0)
    assert clustered > 2.5 * bootstrap_std(right, video, alone, seed=0)
    assert 0.18 < clustered < 0.32  # sqrt(0.25 / 4) = 0.25
    # within groups that are each half right, the videos' draw alone makes the spread
    mixed = (video % 2 == 0).float()
    assert 0.02 < bootstrap_std(mixed, video, groups, seed=0) < 0.12


def test_a_paired_bootstrap_sees_two_rows_on_the_same_videos() -> None:
    """Two models that find the same videos hard: their accuracies move together over draws
    of test videos, so their difference varies much less than either accuracy."""
    g = torch.Generator().manual_seed(0)
    video = torch.arange(50).repeat_interleave(4)  # 50 videos, 4 clips each, 10 groups
    groups = [f"g{v // 5}" for v in video.tolist()]
    easy = torch.rand(50, generator=g) < 0.5  # per video: every clip right, or every clip wrong
    a = easy.repeat_interleave(4)
    b = a.clone()
    b[torch.randperm(200, generator=g)[:10]] ^= True  # 10 clips of 200 differ
    assert paired_bootstrap_std(a, a.clone(), video, groups, seed=0) == 0.0
    paired = paired_bootstrap_std(a, b, video, groups, seed=0)
    alone = min(bootstrap_std(x.float(), video, groups, 0) for x in (a, b))
    assert 0 < paired < 0.5 * alone
    # against a row of zeros, the difference is the accuracy itself: the same draws
    zeros = torch.zeros(200, dtype=torch.bool)
    assert paired_bootstrap_std(a, zeros, video, groups, seed=0) == pytest.approx(
        bootstrap_std(a.float(), video, groups, seed=0)
    )


def test_results_json_keeps_lists_of_numbers_on_one_line() -> None:
    results = {"accuracy": 0.5, "correct": [1, 0] * 500, "video": list(range(1000)),
               "confusion": [[3, 1], [0, 4]], "query": "v/x[1,\n 2].mp4", "empty": []}  # fmt: skip
    text = json_text(results, indent=2)
    assert json.loads(text) == results
    assert len(text.splitlines()) == 11  # { and }, a line per key, 2 confusion rows and "],"
    assert '"correct": [1, 0, 1, 0' in text and "[3, 1]" in text


@pytest.mark.slow
def test_action_probe_finetune_and_retrieval_from_random_weights(ucf_tiny, tmp_path) -> None:
    index = load_index(ucf_tiny)
    common = dict(data=str(ucf_tiny), arch="r3d10", test_views=2, **TINY)
    action = probe(
        make_eval_config("probe", target="action", epochs=1, out=str(tmp_path / "p"), **common),
        progress=False,
    )
    assert action["items"] == len(index.test) and set(action["per_class"]) == set(index.classes)
    tuned = finetune(
        make_eval_config("finetune", epochs=1, out=str(tmp_path / "f"), precise_bn=1, **common),
        progress=False,
    )
    assert tuned["items"] == len(index.test) and 0 <= tuned["accuracy"] <= 1
    assert len(read_metrics(tmp_path / "f")) == 1
    found = retrieve(
        make_eval_config("retrieve", out=str(tmp_path / "r"), **common), progress=False
    )
    assert list(found["top_k"]) == [str(k) for k in TOP_K]
    assert found["queries"] == len(index.test) and found["gallery"] == len(index.train)
    assert found["top_k"]["50"] == 1.0  # the whole gallery holds every class
    # what a paired comparison of two runs needs: per test video, whether it was right
    assert sorted(tuned["video"]) == sorted(found["video"]) == list(range(len(index.test)))
    assert sum(tuned["correct"]) / tuned["items"] == pytest.approx(tuned["accuracy"])
    assert sum(found["hits"]["5"]) / found["queries"] == pytest.approx(found["top_k"]["5"])


@pytest.mark.slow
def test_finetuning_gives_the_same_numbers_whatever_ran_before(ucf_tiny, tmp_path) -> None:
    """The seed decides every weight, the new head's too: a process (a notebook, make
    reproduce) that drew random numbers before gets the same run."""
    common = dict(data=str(ucf_tiny), arch="r3d10", epochs=1, test_views=1, **TINY)
    first = finetune(make_eval_config("finetune", out=str(tmp_path / "a"), **common), False)
    torch.rand(1000)  # other work in the same process
    second = finetune(make_eval_config("finetune", out=str(tmp_path / "b"), **common), False)
    assert (
        read_metrics(tmp_path / "a")[0]["train_loss"]
        == read_metrics(tmp_path / "b")[0]["train_loss"]
    )
    assert first["confusion"] == second["confusion"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["probe", "--init", "/no/such.pt"], "no such checkpoint file"),
        (["probe", "--target", "colour"], "unknown probe target 'colour'"),
        (["finetune", "--epochs", "0"], "epochs must be positive"),
        (["retrieve", "--crop", "50"], "divisible by 16"),
        (["probe", "--init", "motion-energy", "--target", "action"], "speed probe only"),
        (["finetune", "--init", "motion-energy"], "speed probe only"),
        (["probe", "--refit-bn", "-1"], "refit-bn must be 0 or more, got -1"),
        (["probe", "--precise-bn", "2"], "--precise-bn is for fine-tuning"),
    ],
)
def test_bad_evaluation_input_is_one_line(args, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/: a bad option is reported before the init is sought
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(
    pretrained, tmp_path, monkeypatch
):
    """Refused before any work: the default dataset is not even generated."""
    monkeypatch.chdir(tmp_path)
    for command in (["probe", "--init"], ["pretrain", "--init-from"]):
        result = CliRunner().invoke(app, [*command, str(pretrained), "--arch", "c3d"])
        assert result.exit_code == 1
        assert re.search(r"holds a r3d10 backbone, not c3d", result.output), result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_presets_of_evaluations() -> None:
    paper = make_eval_config("probe", data="ucf101:/somewhere")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.crop) == (150, 32, 0.0075, 112)
    tuned = make_eval_config("finetune", data="ucf101:/somewhere")
    assert (tuned.epochs, tuned.lr_step_epoch, tuned.batch_size, tuned.lr) == (160, 100, 8, 0.001)
    with pytest.raises(ConfigError, match="unknown settings for retrieve: epochs"):
        make_eval_config("retrieve", epochs=3)


def test_the_python_api_keeps_random_and_takes_a_run_folder(tmp_path, monkeypatch) -> None:
    """Only the command line looks for the latest pretraining: make reproduce and the
    notebooks evaluate what they name."""
    monkeypatch.chdir(tmp_path)
    assert latest_pretraining("r3d10") is None  # no runs/ at all
    run = write_run(tmp_path / "runs" / "smp-r3d10-synth", "smp", files=("best.pt", "last.pt"))
    assert latest_pretraining("r3d10") == Path("runs/smp-r3d10-synth/best.pt")
    assert latest_pretraining("r3d10", tmp_path / "runs") == run / "best.pt"
    assert make_eval_config("probe").init == "random"
    tuned = make_eval_config("finetune", init=run)
    assert tuned.init == str(run / "best.pt")
    assert eval_out(tuned) == Path("runs/finetune-r3d18-smp-r3d10-synth")
    with pytest.raises(ConfigError, match="a folder without best.pt or last.pt"):
        make_eval_config("retrieve", init=tmp_path / "runs")
