"""Small real videos for the tests, written with PyAV: frames that can be told apart and the
UCF101 layout. A module of its own, not conftest.py: tutorials/ has a conftest.py too, and a
test importing `conftest` could get that one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smp_lite.tools.synth import write_video


def distinct_frames(n: int, h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 smooth random images, each frame clearly different from the others,
    so a decoded frame can be matched back to the index it was written at."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, h // 8, w // 8, 3)).astype(np.uint8)
    return low.repeat(8, axis=1).repeat(8, axis=2)


def write_ucf_layout(
    root: Path,
    classes: list[str],
    groups: dict[str, list[int]],
    frames: int = 140,
    ext: str = ".mp4",
) -> Path:
    """A UCF101-style dataset: videos/<Class>/v_<Class>_gGG_c01<ext> plus the split lists."""
    videos = root / "videos"
    train_lines, test_lines = [], []
    for label, cls in enumerate(classes, start=1):
        for split, gs in groups.items():
            for g in gs:
                rel = f"{cls}/v_{cls}_g{g:02d}_c01{ext}"
                (videos / cls).mkdir(parents=True, exist_ok=True)
                write_video(videos / rel, distinct_frames(frames, seed=label * 100 + g), fps=25)
                (train_lines if split == "train" else test_lines).append(
                    f"{rel} {label}" if split == "train" else rel
                )
    (root / "classInd.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(classes, start=1))
    )
    (root / "trainlist01.txt").write_text("\n".join(train_lines) + "\n")
    (root / "testlist01.txt").write_text("\n".join(test_lines) + "\n")
    return root
