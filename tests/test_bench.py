from __future__ import annotations

import pytest
from typer.testing import CliRunner

from smp_lite.cli import app
from smp_lite.config import BenchConfig
from smp_lite.errors import ConfigError
from smp_lite.tools.bench import SECTION_END, SECTION_START, bench, format_report, write_section


def small_bench(data, **overrides) -> BenchConfig:
    """Tiny clips, one step of each kind; `data` a Path, as the Python API allows."""
    settings = dict(data=data, device="cpu", archs=("r3d10",), clip_len=8, resize=(32, 40))
    settings |= dict(crop=32)
    settings |= dict(batch_size=2, original_batch=2, steps=1, rates=(1, 8), workers=(0,))
    settings |= dict(clips_per_video=(1, 2))
    settings |= dict(loader_batches=1, step_batches=4)
    return BenchConfig(**(settings | overrides))


@pytest.mark.slow
def test_bench_measures_every_part_and_reports_it(synth_tiny) -> None:
    results = bench(small_bench(synth_tiny, variants=("fused",)), progress=False)
    assert results["peak_flops"] > 0 and results["preset"] == "quick"  # the CPU's default
    assert results["clip"] == "8x32x32 from 32x40"
    assert [(r["arch"], r["task"], r["variant"]) for r in results["compute"]] == [
        ("r3d10", "smp", ""),
        ("r3d10", "smp", "fused"),
        ("r3d10", "supervised", ""),
        ("r3d10", "supervised", "fused"),
    ]
    smp, smp_fused, supervised, _ = results["compute"]
    assert smp_fused["gflop_per_clip"] == smp["gflop_per_clip"]
    # the SMP model adds the decoder and three rate heads to the same backbone
    assert smp["gflop_per_clip"] > 1.5 * supervised["gflop_per_clip"] > 0
    for r in results["compute"]:
        assert r["bare_clips_per_s"] > 0 and r["loop_clips_per_s"] > 0
        assert (
            0
            < r["peak_share"]
            == pytest.approx(
                r["gflop_per_clip"] * 1e9 * r["bare_clips_per_s"] / results["peak_flops"]
            )
        )
    loaders = {
        (r["rate"], r["workers"], r["clips_per_video"]): r["clips_per_s"] for r in results["loader"]
    }
    settings = (0, 1), (0, 2), ("original", 1)
    assert set(loaders) == {(rate, *s) for rate in (1, 8, "mixed") for s in settings}
    assert all(v > 0 for v in loaders.values())
    assert results["step"]["batches"] == 4 and results["step"]["clips_per_s"] > 0
    assert results["step"]["steady_clips_per_s"] > 0  # from epochs of 4 and 1 batches
    original = results["original_compute"]
    assert original["batch_size"] == 2 and original["gflop_per_clip"] == smp["gflop_per_clip"]

    text = format_report(results, "smp-lite bench --device cpu")
    assert "`smp-lite bench --device cpu`" in text
    assert "| `r3d10` | smp | as trained |" in text and "| `r3d10` | supervised | fused |" in text
    assert "| rate | 0 workers | 0 workers, 2 clips a video | original style |" in text
    assert text.count("\n| 1 | ") == 1 and text.count("\n| 8 | ") == 1
    assert text.count("\n| mixed | ") == 1
    assert "End to end, `train()` on smp `r3d10` with 0 workers" in text
    assert "Compute in the original code's style (smp `r3d10`, fp32, batch 2, " in text


def test_the_report_replaces_its_section_and_keeps_the_rest(tmp_path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nkept above\n")
    write_section(md, "first run\n")
    assert (
        md.read_text() == f"# Benchmarks\n\nkept above\n{SECTION_START}\nfirst run\n{SECTION_END}\n"
    )
    md.write_text(md.read_text() + "\nkept below\n")
    write_section(md, "second run\n")
    text = md.read_text()
    assert "first run" not in text and "second run" in text
    assert text.startswith("# Benchmarks\n\nkept above\n") and text.endswith("\nkept below\n")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(rates=(3,)), "rates must be among"),
        (dict(variants=("turbo",)), "variants must be among"),
        (dict(workers=(-1,)), "worker counts"),
        (dict(clips_per_video=(0,)), "clips per video"),
        (dict(step_workers=-1), "step workers"),
        (dict(steps=0), "steps must be positive"),
        (dict(archs=("r3d18", "c4d")), "archs must be among"),
        (dict(tasks=("smp", "jigsaw")), "tasks must be among"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(synth_tiny, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        bench(small_bench(synth_tiny, **override), progress=False)


def test_the_command_refuses_a_bad_list_in_one_line(synth_tiny) -> None:
    result = CliRunner().invoke(app, ["bench", "--data", str(synth_tiny), "--rates", "1,x"])
    assert result.exit_code == 2
    assert "error: '1,x' is not a comma-separated list of int" in result.output
    assert "Traceback" not in result.output
