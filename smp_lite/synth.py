"""Generated motion-video dataset in the UCF101 layout, for trying smp-lite without downloads.

Each video shows 1-3 textured sprites over a textured background seen by a slowly panning camera;
the class is defined by HOW the sprites move (translate, rotate, zoom, orbit, bounce, ...), never
by what they look like or how the camera moves. Every video has its own natural speed, drawn
log-uniformly over a factor ~3.5, which scales both the sprites' and the camera's motion, so
apparent speed alone is ambiguous between neighbouring playback rates, as in real video. Motion
is continuous for the whole video (wrap-around, periodic motion, re-spawn) and stays well below
aliasing even when the video is sampled at stride 8 at the fastest speed.

    from smp_lite.synth import synthesize
    root = synthesize("data/synth")  # root/videos, root/classInd.txt, root/trainlist01.txt, ...
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from smp_lite import __version__

DEFAULT_DATA = "data/synth"  # where `smp-lite data synth` writes and training reads by default
CLASSES: tuple[str, ...] = (
    "MoveLeft", "MoveRight", "MoveUp", "MoveDown", "RotateCW", "RotateCCW",
    "ZoomIn", "ZoomOut", "Orbit", "Bounce", "Oscillate", "Pulse",
)  # fmt: skip


@dataclass(frozen=True)
class SynthConfig:
    classes: tuple[str, ...] = CLASSES
    train_groups: int = 18  # UCF101 split 1: 25 groups, g01..g07 are test
    test_groups: int = 7
    clips_per_group: int = 2
    frames: int = 144  # >= 16 * 8 + 1, so a 16-frame clip at stride 8 fits
    height: int = 120
    width: int = 160
    fps: int = 25
    speed_range: tuple[float, float] = (0.5, 1.75)  # natural speed, log-uniform
    max_objects: int = 3
    crf: int = 18
    gop: int = 32  # keyframe interval: cheap random access
    pan_px: float = 0.8  # camera pan in px per frame at natural speed 1 (x a per-video 0.5-1)
    grain: float = 0.2  # amplitude of the backgrounds' fine detail, which shows the camera motion


PRESETS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "tiny": SynthConfig(train_groups=3, test_groups=1, clips_per_group=1, frames=129),
}

# Motion per frame at natural speed 1 (a video's speed multiplies all of these). Chosen so that at
# stride 8 and the top speed a sprite moves < ~30 px, turns < ~45 degrees and scales < ~1.4x per
# sampled frame (tests/test_synth.py checks), and periodic motions get >= 5 samples per period.
TRANSLATE_PX = 1.4  # px per frame
ROTATE_DEG = 2.6  # degrees per frame
ZOOM_LOG = 0.012  # log-scale per frame
PERIOD_FRAMES = 90  # period of Bounce / Oscillate / Pulse
WRAP_AXES = {"MoveLeft": (1, 0), "MoveRight": (1, 0), "MoveUp": (0, 1), "MoveDown": (0, 1)}


# -----------------------------------------------------------------------------
# rendering


def render_video(
    class_name: str, rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, dict]:
    """Render one video of `class_name`: (T, H, W, 3) uint8 frames and a dict describing it."""
    T, H, W = cfg.frames, cfg.height, cfg.width
    speed = float(math.exp(rng.uniform(*np.log(cfg.speed_range))))
    pan = cfg.pan_px * speed * float(rng.uniform(0.5, 1.0))
    reach = math.ceil(pan * (T - 1)) + 2  # px of background the camera travels over
    background, background_kind = make_background(rng, H + reach, W + reach, cfg.grain)
    frames = pan_camera(background, pan, float(rng.uniform(0, 2 * np.pi)), T, H, W)  # (T, H, W, 3)
    num_objects = int(rng.integers(1, cfg.max_objects + 1))
    shapes = []
    for _ in range(num_objects):
        sprite, shape = make_sprite(rng)  # (4, S, S), premultiplied rgb + alpha
        radius = float(rng.uniform(12, 22))  # half-size of the sprite canvas in px
        jitter = float(rng.uniform(0.85, 1.15))  # objects in one video differ a little in speed
        cx, cy, angle, scale = object_motion(class_name, rng, speed * jitter, radius, cfg)
        # translations wrap around like on a torus: what leaves one edge enters at the opposite
        # one, so the motion never stops or jumps; the copies straddling the edges are pasted too
        wrap_x, wrap_y = WRAP_AXES.get(class_name, (0, 0))
        for k in (-1, 0, 1) if class_name in WRAP_AXES else (0,):
            x, y = cx + k * wrap_x * W, cy + k * wrap_y * H
            paste_sprite(frames, sprite, x, y, angle, radius * scale)
        shapes.append(shape)
    frames = frames.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    info = dict(speed=speed, num_objects=num_objects, shapes=shapes, background=background_kind)
    return frames.numpy(), info  # (T, H, W, 3)


def paste_sprite(
    frames: torch.Tensor,
    sprite: torch.Tensor,
    cx: np.ndarray,
    cy: np.ndarray,
    angle: np.ndarray,
    size: np.ndarray,
) -> None:
    """Composite `sprite` ("over") onto frames (T, H, W, 3) in place, at its pose in each frame.

    Sampling only a window around the sprite, not the whole frame, makes rendering ~5x faster."""
    H, W = frames.shape[1:3]
    half = math.ceil(math.sqrt(2) * size.max()) + 1  # the window holds the sprite at any angle
    x0, y0 = np.floor(cx).astype(int) - half, np.floor(cy).astype(int) - half  # (T,) corners
    v = np.flatnonzero((x0 < W) & (x0 + 2 * half > 0) & (y0 < H) & (y0 + 2 * half > 0))  # (V,)
    grid = sprite_grid(cx[v] - x0[v], cy[v] - y0[v], angle[v], size[v], 2 * half)  # (V, 2h, 2h, 2)
    rgba = F.grid_sample(sprite.expand(len(v), -1, -1, -1), grid, align_corners=False)
    rgba = rgba.permute(0, 2, 3, 1)  # (V, 4, 2h, 2h) -> (V, 2h, 2h, 4)
    for window, t in zip(rgba, v, strict=True):  # clip each window to the frame
        ya, yb = max(y0[t], 0), min(y0[t] + 2 * half, H)
        xa, xb = max(x0[t], 0), min(x0[t] + 2 * half, W)
        window = window[ya - y0[t] : yb - y0[t], xa - x0[t] : xb - x0[t]]
        frames[t, ya:yb, xa:xb].mul_(1 - window[..., 3:]).add_(window[..., :3])


def sprite_grid(
    cx: np.ndarray, cy: np.ndarray, angle: np.ndarray, size: np.ndarray, n: int
) -> torch.Tensor:
    """grid_sample grid (T, n, n, 2): each pixel's position in sprite coordinates [-1, 1], in an
    n x n window where the sprite is centred at (cx, cy), turned by `angle`, `size` px half-size.

    The inverse transform (translate, rotate, scale) is affine, so it is built from a (T, 1, n)
    and a (T, n, 1) part: far cheaper than F.affine_grid's per-pixel matmul."""
    cos, sin = np.cos(angle) / size, np.sin(angle) / size  # (T,)
    coef = torch.as_tensor(  # u = a x + b y + c, v = d x + e y + f
        np.stack([cos, sin, -cos * cx - sin * cy, -sin, cos, sin * cx - cos * cy]),
        dtype=torch.float32,
    )[:, :, None]  # (6, T, 1)
    xs = torch.arange(n) + 0.5  # pixel centres
    grid = torch.empty(len(cx), n, n, 2)
    torch.add((coef[0] * xs + coef[2])[:, None, :], (coef[1] * xs)[:, :, None], out=grid[..., 0])
    torch.add((coef[3] * xs + coef[5])[:, None, :], (coef[4] * xs)[:, :, None], out=grid[..., 1])
    return grid


def object_motion(
    class_name: str, rng: np.random.Generator, speed: float, radius: float, cfg: SynthConfig
) -> tuple[np.ndarray, ...]:
    """Per-frame centre x, centre y (px), angle (rad, clockwise on screen) and scale, each (T,)."""
    T, H, W = cfg.frames, cfg.height, cfg.width
    t = np.arange(T, dtype=np.float64)
    cx = np.full(T, rng.uniform(radius, W - radius))
    cy = np.full(T, rng.uniform(radius, H - radius))
    angle = np.full(T, rng.uniform(0, 2 * np.pi))
    scale = np.ones(T)
    phase = rng.uniform(0, 2 * np.pi)
    period = PERIOD_FRAMES / speed
    if class_name in ("MoveLeft", "MoveRight"):  # wraps around, see render_video
        cx = (cx + (-1 if class_name == "MoveLeft" else 1) * TRANSLATE_PX * speed * t) % W
    elif class_name in ("MoveUp", "MoveDown"):
        cy = (cy + (-1 if class_name == "MoveUp" else 1) * TRANSLATE_PX * speed * t) % H
    elif class_name in ("RotateCW", "RotateCCW"):
        sign = 1 if class_name == "RotateCW" else -1  # image y points down: +angle is clockwise
        angle = angle + sign * np.deg2rad(ROTATE_DEG) * speed * t
    elif class_name in ("ZoomIn", "ZoomOut"):
        # grow (shrink) between 0.5x and 2x, then re-spawn small (large) at a new place
        lo, hi = np.log(0.5), np.log(2.0)
        progress = rng.uniform(0, hi - lo) + ZOOM_LOG * speed * t
        cycle = (progress // (hi - lo)).astype(int)
        log_scale = lo + progress % (hi - lo)
        scale = np.exp(log_scale if class_name == "ZoomIn" else lo + hi - log_scale)
        cx = rng.uniform(radius, W - radius, cycle.max() + 1)[cycle]
        cy = rng.uniform(radius, H - radius, cycle.max() + 1)[cycle]
    elif class_name == "Orbit":
        orbit_radius = rng.uniform(26, 36)
        direction = rng.choice([-1, 1])
        theta = phase + direction * TRANSLATE_PX * speed / orbit_radius * t
        cx = rng.uniform(W / 2 - 20, W / 2 + 20) + orbit_radius * np.cos(theta)
        cy = H / 2 + orbit_radius * np.sin(theta)
    elif class_name == "Bounce":
        # ballistic hop: parabolic height above a floor, one hop per period
        height = rng.uniform(25, 45)
        hop = (t / period + phase / (2 * np.pi)) % 1.0
        cy = rng.uniform(H - radius - 10, H - radius) - height * 4 * hop * (1 - hop)
    elif class_name == "Oscillate":
        amplitude = rng.uniform(16, 28)
        cx = W / 2 + rng.uniform(-20, 20) + amplitude * np.sin(2 * np.pi * t / period + phase)
    elif class_name == "Pulse":
        scale = np.exp(rng.uniform(0.2, 0.3) * np.sin(2 * np.pi * t / period + phase))
    else:
        raise ValueError(f"unknown class {class_name!r}, expected one of {CLASSES}")
    return cx, cy, angle, scale


def pan_camera(
    background: torch.Tensor, px_per_frame: float, direction: float, T: int, H: int, W: int
) -> torch.Tensor:
    """(T, H, W, 3) views of `background` (3, H', W') through a camera moving `px_per_frame`
    along `direction` (radians), bilinear so that sub-pixel motion stays smooth."""
    Hb, Wb = background.shape[1:]
    dx, dy = math.cos(direction) * px_per_frame, math.sin(direction) * px_per_frame
    t = torch.arange(T, dtype=torch.float32)
    x0 = (Wb - W) / 2 + dx * (t - (T - 1) / 2)  # (T,) left edge of the view, centred path
    y0 = (Hb - H) / 2 + dy * (t - (T - 1) / 2)
    xs = (x0[:, None] + torch.arange(W) + 0.5) / Wb * 2 - 1  # (T, W) in grid_sample's [-1, 1]
    ys = (y0[:, None] + torch.arange(H) + 0.5) / Hb * 2 - 1  # (T, H)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    views = F.grid_sample(background.expand(T, -1, -1, -1), grid, align_corners=False)
    return views.permute(0, 2, 3, 1).contiguous()  # (T, 3, H, W) -> (T, H, W, 3)


def make_background(
    rng: np.random.Generator, H: int, W: int, grain: float
) -> tuple[torch.Tensor, str]:
    """A textured background (3, H, W) in [0, 1], muted so the sprites stand out: a coarse
    pattern plus fine grey detail of amplitude `grain` (4-8 px), which shows camera motion
    everywhere in the frame as real footage does."""
    kind = str(rng.choice(["blobs", "stripes", "checker", "gradient"]))
    ys, xs = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, W / H, W), indexing="ij")
    c1, c2 = random_colour(rng), random_colour(rng)
    if kind == "blobs":  # smooth value noise at a random scale
        cells = int(rng.integers(3, 9))
        noise = torch.as_tensor(rng.uniform(0, 1, (1, 3, cells, cells)), dtype=torch.float32)
        image = F.interpolate(noise, size=(H, W), mode="bicubic", align_corners=True)[0]
    else:
        mix = texture_mix(kind, xs, ys, rng.uniform(0, np.pi), rng.uniform(1.5, 5))
        image = c1 * mix + c2 * (1 - mix)
    cells = int(rng.integers(16, 32))  # per frame height
    noise = torch.as_tensor(rng.uniform(-1, 1, (1, 1, cells, cells * W // H)), dtype=torch.float32)
    detail = F.interpolate(noise, size=(H, W), mode="bicubic", align_corners=True)[0]
    return (0.25 + 0.5 * image + grain * detail).clamp(0, 1), kind


def texture_mix(
    kind: str, xs: torch.Tensor, ys: torch.Tensor, theta: float, freq: float
) -> torch.Tensor:
    """Weight in [0, 1] to mix two colours: a pattern turned by theta, stripes 1 / freq wide.

    Edges are a few px soft: sharp colour edges would be blurred by yuv420p's half-size chroma."""
    u = math.cos(theta) * xs + math.sin(theta) * ys
    v = -math.sin(theta) * xs + math.cos(theta) * ys
    if kind == "solid":
        return torch.ones_like(u)
    if kind == "stripes":
        return (0.5 + 2 * torch.sin(math.pi * freq * u)).clamp(0, 1)
    if kind == "checker":
        return (0.5 + 2 * torch.sin(math.pi * freq * u) * torch.sin(math.pi * freq * v)).clamp(0, 1)
    return (u - u.min()) / (u.max() - u.min())  # gradient


def random_colour(rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(rng.uniform(0, 1, 3), dtype=torch.float32)[:, None, None]  # (3, 1, 1)


def make_sprite(rng: np.random.Generator, size: int = 32) -> tuple[torch.Tensor, str]:
    """A textured shape (4, size, size): premultiplied rgb and alpha, on canvas [-1, 1]^2.

    Every sprite carries an off-centre dot so that no shape is rotationally symmetric."""
    shape = str(rng.choice(["circle", "square", "triangle", "star", "ellipse", "cross"]))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r, phi = (xs**2 + ys**2).sqrt(), torch.atan2(ys, xs)
    # signed "distance" (< 0 inside), scaled below into a ~1.5 px soft edge for anti-aliasing
    if shape == "circle":
        dist = r - 0.9
    elif shape == "square":
        dist = torch.maximum(xs.abs(), ys.abs()) - 0.7
    elif shape == "triangle":
        normals = torch.deg2rad(torch.tensor([90.0, 210.0, 330.0]))  # apex up
        dist = (xs[..., None] * normals.cos() + ys[..., None] * normals.sin()).amax(-1) - 0.45
    elif shape == "star":
        dist = r - (0.6 + 0.3 * torch.cos(5 * phi))
    elif shape == "ellipse":
        dist = torch.sqrt((xs / 0.95) ** 2 + (ys / 0.55) ** 2) - 1
    else:
        bar = torch.maximum(xs.abs() - 0.85, ys.abs() - 0.3)
        dist = torch.minimum(bar, torch.maximum(xs.abs() - 0.3, ys.abs() - 0.85))
    alpha = (0.5 - dist * size / 3).clamp(0, 1)
    c1, c2 = random_colour(rng), random_colour(rng)
    texture = str(rng.choice(["solid", "stripes", "checker"]))
    mix = texture_mix(texture, xs, ys, rng.uniform(0, np.pi), rng.uniform(1.5, 3))
    dot = (0.5 - (((xs - 0.3) ** 2 + (ys - 0.1) ** 2).sqrt() - 0.2) * size / 3).clamp(0, 1)
    rgb = dot * (1 - c1) + (1 - dot) * (c1 * mix + c2 * (1 - mix))
    return torch.cat([rgb * alpha, alpha[None]]), f"{texture} {shape}"


def write_video(path: Path, frames: np.ndarray, fps: int, crf: int = 18, gop: int = 32) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) .mp4 with PyAV."""
    import av  # PyAV only writes (and, for pictures, reads) the generated videos: a machine that
    # trains on a dataset made elsewhere needs decord alone

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # one encoder thread: parallelism comes from the process pool
        stream.options = {"crf": str(crf), "g": str(gop), "preset": "veryfast", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush


def read_video(path: str | Path) -> np.ndarray:
    """Decode a whole video with PyAV: (T, H, W, 3) uint8 RGB."""
    import av  # as in write_video

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# -----------------------------------------------------------------------------
# dataset


def synthesize(
    out: str | Path,
    preset: str = "default",
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate the dataset of `preset` under `out` in the UCF101 layout; returns `out`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}, expected one of {sorted(PRESETS)}")
    cfg, out = PRESETS[preset], Path(out)
    if (out / "meta.json").exists() and not overwrite:
        meta = json.loads((out / "meta.json").read_text())
        if (meta["preset"], meta["seed"]) != (preset, seed):
            warnings.warn(
                f"{out} holds preset {meta['preset']!r} seed {meta['seed']}, not {preset!r} "
                f"seed {seed}; returning it as is (pass overwrite=True to regenerate)",
                stacklevel=2,
            )
        elif meta["config"] != json.loads(json.dumps(asdict(cfg))):
            warnings.warn(
                f"{out} was generated by smp-lite {meta['version']} with other settings than "
                f"preset {preset!r} has now; returning it as is (--overwrite regenerates it)",
                stacklevel=2,
            )
        return out
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists but is not a complete dataset; pass overwrite=True")
    # generate into a sibling folder and rename at the end: an interrupted run leaves no `out`
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        records = generate_videos(tmp, cfg, seed, workers, progress)
        write_lists(tmp, cfg, records)
        meta = {"preset": preset, "seed": seed, "version": __version__, "config": asdict(cfg)}
        (tmp / "meta.json").write_text(json.dumps(meta | {"videos": records}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def generate_videos(
    root: Path, cfg: SynthConfig, seed: int, workers: int | None, progress: bool
) -> list[dict]:
    """Render and encode every video of `cfg` under root/videos, in parallel; one record each."""
    # UCF101 style: the first `test_groups` groups are the test split
    jobs = [
        (name, group, clip)
        for name in cfg.classes
        for group in range(1, cfg.test_groups + cfg.train_groups + 1)
        for clip in range(1, cfg.clips_per_group + 1)
    ]
    for name in cfg.classes:
        (root / "videos" / name).mkdir(parents=True)
    work = partial(make_video, root=root, cfg=cfg, seed=seed)
    workers = workers or min(os.cpu_count() or 1, 4)
    bar = partial(tqdm, total=len(jobs), desc="synth videos", disable=not progress)
    if workers == 1:
        return list(bar(map(work, jobs)))
    with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(bar(pool.map(work, jobs, chunksize=4)))


def make_video(job: tuple[str, int, int], root: Path, cfg: SynthConfig, seed: int) -> dict:
    name, group, clip = job
    frames, info = render_video(name, video_rng(seed, name, group, clip), cfg)  # (T, H, W, 3)
    path = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.mp4"
    write_video(root / "videos" / path, frames, cfg.fps, cfg.crf, cfg.gop)
    split = "test" if group <= cfg.test_groups else "train"
    label = cfg.classes.index(name) + 1
    record = {"path": path, "class": name, "label": label, "group": group, "clip": clip}
    return record | {"split": split, "frames": len(frames)} | info


def video_rng(seed: int, class_name: str, group: int, clip: int) -> np.random.Generator:
    """The RNG of one video: depends only on its identity, not on worker count or order."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), group, clip])


def write_lists(root: Path, cfg: SynthConfig, records: list[dict]) -> None:
    """classInd.txt, trainlist01.txt and testlist01.txt, formatted like UCF101's lists."""
    lines = [f"{i} {name}" for i, name in enumerate(cfg.classes, start=1)]
    (root / "classInd.txt").write_text("\n".join(lines) + "\n")
    train = [f"{r['path']} {r['label']}" for r in records if r["split"] == "train"]
    (root / "trainlist01.txt").write_text("\n".join(train) + "\n")
    test = [r["path"] for r in records if r["split"] == "test"]
    (root / "testlist01.txt").write_text("\n".join(test) + "\n")


# -----------------------------------------------------------------------------
# visualisation


def plot_class_grid(
    root: str | Path, out_png: str | Path, frames_per_class: int = 6, dpi: int = 100
) -> Path:
    """One row per class (its first test video), frames at evenly spaced times, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: works headless, no global state

    root, out_png = Path(root), Path(out_png)
    meta = json.loads((root / "meta.json").read_text())
    classes = meta["config"]["classes"]
    first = {}
    for r in meta["videos"]:
        first.setdefault(r["class"], r)
    fig = Figure(figsize=(1.6 * frames_per_class + 1.2, 1.25 * len(classes)), dpi=dpi)
    axes = fig.subplots(len(classes), frames_per_class, squeeze=False)
    for row, name in enumerate(classes):
        frames = read_video(root / "videos" / first[name]["path"])  # (T, H, W, 3)
        times = np.linspace(0, len(frames) - 1, frames_per_class).round().astype(int)
        for col, t in enumerate(times):
            ax = axes[row, col]
            ax.imshow(frames[t])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {t}", fontsize=8)
        axes[row, 0].set_ylabel(f"{name}\nspeed {first[name]['speed']:.2f}", fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
