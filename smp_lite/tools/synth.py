"""Generated action videos in the UCF101 layout, for trying smp-lite without downloads.

Each video shows a stick figure, two balls, a flying distractor and sometimes a foreground pole,
over a textured background that a camera may pan across. The class is defined, as in real action
datasets, by WHAT moves and HOW: the figure waves, claps, does jumping jacks, squats, walks or
boxes; juggles, dribbles, throws or kicks a ball; or stands by while a ball rolls past or two
balls collide. The figure drifts sideways as it acts, as people move about. As in UCF101, the
clips of a group share a look (background, colours, camera), each class's groups have looks of
their own, and the test groups show looks never seen in training. Every video has its own
natural speed, drawn log-uniformly over a factor 2.7 (a tempo that varies from person to person)
and with the same distribution for every class; the camera pans and the distractor ball move at
speeds of their own, spread wider, so a clip's motion energy tells its playback rate less well
than the actor's own motion does (`rate_ceilings`, docs/data.md).

    from smp_lite.tools.synth import synthesize
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

from .. import __version__
from ..config import DEFAULT_DATA, RATES
from ..errors import DataError

CLASSES: tuple[str, ...] = (
    "Wave", "Clap", "JumpingJack", "Squat", "Walk", "Box",
    "Juggle", "Dribble", "Throw", "Kick", "Roll", "Collide",
)  # fmt: skip


@dataclass(frozen=True)
class SynthConfig:
    classes: tuple[str, ...] = CLASSES
    train_groups: int = 18  # UCF101 split 1: 25 groups, g01..g07 are test
    test_groups: int = 7
    clips_per_group: int = 2
    frames: int = 144  # >= 16 * 8 + 1, so a 16-frame clip at stride 8 fits
    height: int = 120  # every length in a scene scales with the height
    width: int = 160
    fps: int = 25
    # natural speed, log-uniform, the same for every class: 1.4 octaves against the rates' 1
    # octave apart, so the actor's speed tells the rate 79% of the time at best (rate_ceilings)
    speed_range: tuple[float, float] = (0.6, 1.6)
    period: float = 24.0  # frames per cycle of an action at natural speed 1 and height 120
    static_camera: float = 0.4  # share of groups filmed by a still camera; the rest pan
    # a panning group's camera speed, px/frame at 120, log-uniform: spread as widely as the
    # actions' speeds, else a panned background's motion energy gives the playback rate away
    pan_px: tuple[float, float] = (0.15, 1.5)
    pan_jitter: tuple[float, float] = (0.7, 1.3)  # a video's pan: its group's times this, uniform
    # the distractor ball's own speed, px/frame at 120, log-uniform, independent of the actor's
    distractor_px: tuple[float, float] = (0.3, 2.0)
    occluder: float = 0.5  # share of videos with a foreground pole
    crf: int = 18
    gop: int = 32  # keyframe interval: cheap random access
    grain: float = 0.2  # amplitude of the backgrounds' fine detail, which shows the camera motion
    # the backgrounds' contrast around mid-grey: 0 is a plain grey (no texture, no visible pan)
    background_contrast: float = 1.0
    # figure heights a cycle every actor drifts sideways as it acts (Walk: its own stride). At 0
    # (in place) the residual backbones learn no rate in a CPU run's steps (docs/reproduce.md)
    drift: float = 0.1
    limb: float = 0.045  # the figure's limb half-thickness, in figure heights


PRESETS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    # tests: half-size frames render 4x faster; every length scales with the height
    "tiny": SynthConfig(
        train_groups=3, test_groups=1, clips_per_group=1, frames=129, height=60, width=80
    ),
    # docs/reproduce.md's "The residual backbones and the rate": the data until 2026-12-08,
    # actors in place, and that with plain grey or muted backgrounds
    "in-place": SynthConfig(drift=0.0),
    "plain": SynthConfig(drift=0.0, background_contrast=0.0),
    "muted": SynthConfig(drift=0.0, background_contrast=0.35),
}

# The figure's proportions, in figure heights (head top to feet); the figure is FIGURE of the
# frame's height. Shoulders and hips sit a little off the body's axis.
FIGURE = 0.65
HEAD, NECK, TORSO, UPPER_ARM, FOREARM, THIGH, SHIN = 0.09, 0.03, 0.32, 0.18, 0.17, 0.22, 0.22
SHOULDER, HIP = 0.07, 0.05  # shoulder and hip half-widths
BALL = 0.1  # ball radius


# -----------------------------------------------------------------------------
# rendering


def render_video(
    class_name: str, look: dict, rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, dict]:
    """Render one video of `class_name` in a group's `look` (draw_look): (T, H, W, 3) uint8
    frames and a dict describing it."""
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r}, expected one of {CLASSES}")
    T, H, W = cfg.frames, cfg.height, cfg.width
    unit = H / 120  # px at this height per px at the reference height 120
    speed = log_uniform(rng, cfg.speed_range)
    pan = look["pan"] * float(rng.uniform(*cfg.pan_jitter)) * unit
    direction = float(rng.uniform(0, 2 * np.pi))
    frames = pan_camera(look["background"], pan, direction, T, H, W)  # (T, H, W, 3)
    scene = act(class_name, rng, cfg, speed)
    fly = flight(rng, cfg)
    draw_ball(frames, fly, look["distractor"], look["distractor"] * 0.6)
    for ball, colour in zip(scene["balls"], look["balls"], strict=True):
        draw_ball(frames, ball, colour, torch.ones(3))
    draw_figure(frames, scene["joints"], FIGURE * H * cfg.limb, look["figure"], look["head"])
    pole = bool(rng.random() < cfg.occluder)
    if pole:  # fixed in the world: moves across the screen with the camera
        x = rng.uniform(0.1, 0.9) * W - math.cos(direction) * pan * (np.arange(T) - (T - 1) / 2)
        draw_pole(frames, x, rng.uniform(2.5, 4.5) * unit, look["pole"])
    frames = frames.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    info = dict(speed=speed, pan=pan, occluder=pole, background=look["kind"])
    return frames.numpy(), info  # (T, H, W, 3)


def draw_look(rng: np.random.Generator, cfg: SynthConfig) -> dict:
    """A group's appearance, shared by all its classes: background, colours, camera speed."""
    pan = 0.0 if rng.random() < cfg.static_camera else log_uniform(rng, cfg.pan_px)
    fastest = pan * cfg.pan_jitter[1] * cfg.height / 120
    reach = math.ceil(fastest * (cfg.frames - 1)) + 2  # px the camera travels
    background, kind = make_background(
        rng, cfg.height + reach, cfg.width + reach, cfg.grain
    )  # fmt: skip
    if cfg.background_contrast != 1:
        background = (0.5 + (background - 0.5) * cfg.background_contrast).clamp(0, 1)
    figure = contrasting_colour(rng)
    return {
        "background": background,
        "kind": kind,
        "pan": pan,
        "figure": figure,
        "head": 0.5 * figure + 0.5 * contrasting_colour(rng),
        "balls": [contrasting_colour(rng), contrasting_colour(rng)],
        "distractor": contrasting_colour(rng),
        "pole": contrasting_colour(rng),
    }


def contrasting_colour(rng: np.random.Generator) -> torch.Tensor:
    """Dark or bright, so that it stands out from the muted backgrounds."""
    base = random_colour(rng)[:, 0, 0]  # (3,)
    return 0.2 * base if rng.random() < 0.5 else 0.7 + 0.3 * base


# -----------------------------------------------------------------------------
# the actions: a pose per frame, and where the balls are


def act(class_name: str, rng: np.random.Generator, cfg: SynthConfig, speed: float) -> dict:
    """The scene of one video: the figure's joints {name: (T, 2) x, y in px} and the two balls'
    (centre (T, 2), radius, spin (T,)). Periodic actions take `cfg.period / speed` frames a
    cycle; everything moves in proportion to the figure's size."""
    T, H, W = cfg.frames, cfg.height, cfg.width
    size = FIGURE * H * float(rng.uniform(0.9, 1.1))  # figure height in px
    t = np.arange(T, dtype=np.float64)
    phase = 2 * np.pi * speed * t / (cfg.period * H / 120) + rng.uniform(0, 2 * np.pi)  # (T,)
    side = float(rng.choice([-1.0, 1.0]))  # the arm or leg that acts, the way things go
    floor = H - rng.uniform(0.06, 0.12) * H
    x0 = W / 2 + rng.uniform(-0.1, 0.1) * W
    pose = POSES.get(class_name, idle_pose)(phase, side)
    if class_name == "Walk":  # feet slide a little: a stride a cycle of 1.6 thighs
        pose["dx"] = side * 1.6 * THIGH * size * phase / (2 * np.pi)
    elif cfg.drift:  # about the middle frame: at most about half a frame's width away
        pose["dx"] = side * cfg.drift * size * (phase - phase[T // 2]) / (2 * np.pi)
    joints = skeleton(pose, x0, floor, size)
    r = BALL * size
    rest = [  # a ball that takes no part lies on the floor beside the figure
        resting_ball(x0 + s * rng.uniform(0.35, 0.7) * size, floor, r, T) for s in (-1, 1)
    ]
    balls = BALLS[class_name](joints, phase, side, floor, r, size) if class_name in BALLS else []
    return {"joints": joints, "balls": balls + rest[len(balls) :]}


def idle_pose(phase: np.ndarray, side: float) -> dict:
    """Standing, arms a little out: angles in radians from straight down, + to screen right."""
    still = np.zeros_like(phase)
    return {
        "arm_l": still - 0.15, "fore_l": still - 0.1, "arm_r": still + 0.15, "fore_r": still + 0.1,
        "thigh_l": still - 0.08, "shin_l": still - 0.05,
        "thigh_r": still + 0.08, "shin_r": still + 0.05,
        "dx": still, "dy": still,
    }  # fmt: skip


def limb_pose(pose: dict, limbs: tuple[str, str], side: float, upper, lower) -> None:
    """Set a limb pair's angles, given outward from the body on `side` (-1 left, +1 right)."""
    pose[limbs[0]], pose[limbs[1]] = side * upper, side * lower


def arms(side: float) -> tuple[str, str]:
    return ("arm_l", "fore_l") if side < 0 else ("arm_r", "fore_r")


def legs(side: float) -> tuple[str, str]:
    return ("thigh_l", "shin_l") if side < 0 else ("thigh_r", "shin_r")


def wave(phase, side):
    pose = idle_pose(phase, side)
    limb_pose(pose, arms(side), side, np.full_like(phase, 2.5), 2.9 + 0.7 * np.sin(phase))
    return pose


def clap(phase, side):
    pose, open_ = idle_pose(phase, side), (1 + np.sin(phase)) / 2
    for s in (-1, 1):  # open: arms out; closed: forearms inward, hands meeting in front
        limb_pose(pose, arms(s), s, 0.5 + 0.9 * open_, -1.3 + 2.9 * open_)
    return pose


def jumping_jack(phase, side):
    pose, open_ = idle_pose(phase, side), (1 + np.sin(phase)) / 2
    for s in (-1, 1):
        limb_pose(pose, arms(s), s, 0.15 + 2.6 * open_, 0.1 + 2.8 * open_)
        limb_pose(pose, legs(s), s, 0.05 + 0.35 * open_, 0.05 + 0.35 * open_)
    pose["dy"] = -0.06 * np.abs(np.cos(phase))  # a hop between the two positions
    return pose


def squat(phase, side):
    pose, down = idle_pose(phase, side), (1 - np.cos(phase)) / 2
    for s in (-1, 1):  # knees out, feet planted (skeleton() keeps them on the floor)
        limb_pose(pose, legs(s), s, 0.1 + 1.0 * down, -(0.1 + 1.0 * down))
        limb_pose(pose, arms(s), s, 0.2 + 1.3 * down, 0.2 + 1.4 * down)
    return pose


def walk(phase, side):
    """Seen from the side, going `side`-wards: legs swing in turn, arms against them."""
    pose, swing = idle_pose(phase, side), 0.45 * np.sin(phase)
    pose["thigh_l"], pose["thigh_r"] = side * swing, -side * swing
    pose["shin_l"] = pose["thigh_l"] - side * 0.3 * (1 + np.cos(phase)) / 2
    pose["shin_r"] = pose["thigh_r"] - side * 0.3 * (1 - np.cos(phase)) / 2
    pose["arm_l"], pose["arm_r"] = -side * 0.7 * swing, side * 0.7 * swing
    pose["fore_l"], pose["fore_r"] = pose["arm_l"] + side * 0.3, pose["arm_r"] + side * 0.3
    return pose


def box(phase, side):
    pose = idle_pose(phase, side)
    for s, punch in ((-1, np.sin(phase)), (1, -np.sin(phase))):  # punches in turn
        out = np.maximum(punch, 0) ** 2
        limb_pose(pose, arms(s), s, 0.35 + 1.25 * out, -2.4 + 4.0 * out)
    return pose


def juggle(phase, side):
    pose = idle_pose(phase, side)
    for s in (-1, 1):  # hands wide at chest height, bobbing with the throws
        limb_pose(pose, arms(s), s, np.full_like(phase, 0.5), 1.5 + 0.3 * np.sin(2 * phase + s))
    return pose


def dribble(phase, side):
    pose = idle_pose(phase, side)
    limb_pose(
        pose, arms(side), side, np.full_like(phase, 0.5), 0.4 + 0.8 * np.abs(np.cos(phase / 2))
    )
    return pose


def throw(phase, side):
    """Wind up over the head for the first third of a cycle, then the arm comes back down."""
    pose, cycle = idle_pose(phase, side), (phase / (2 * np.pi)) % 1
    arm = np.where(
        cycle < RELEASE, 0.2 + 2.7 * cycle / RELEASE, 2.9 - 2.7 * (cycle - RELEASE) / 0.65
    )
    limb_pose(pose, arms(side), side, arm, arm)
    return pose


def kick(phase, side):
    pose, cycle = idle_pose(phase, side), (phase / (2 * np.pi)) % 1
    lift = np.sin(np.pi * np.clip(cycle / 0.4, 0, 1))  # the leg swings out and back
    limb_pose(pose, legs(side), side, 0.1 + 1.2 * lift, 0.1 + 0.7 * lift)
    return pose


RELEASE = 0.35  # the part of a throw's cycle before the ball leaves the hand
POSES = {
    "Wave": wave, "Clap": clap, "JumpingJack": jumping_jack, "Squat": squat, "Walk": walk,
    "Box": box, "Juggle": juggle, "Dribble": dribble, "Throw": throw, "Kick": kick,
}  # fmt: skip


def skeleton(pose: dict, x0: float, floor: float, size: float) -> dict:
    """Joint positions (T, 2) from the pose's angles; the hip sits so the lower foot is on the
    floor (pose["dy"], in figure heights, lifts it), and moves by pose["dx"] px."""

    def step(angle):  # (T,) -> (T, 2): unit vector at `angle` from straight down
        return np.stack([np.sin(angle), np.cos(angle)], -1)

    reach = np.maximum(
        THIGH * np.cos(pose["thigh_l"]) + SHIN * np.cos(pose["shin_l"]),
        THIGH * np.cos(pose["thigh_r"]) + SHIN * np.cos(pose["shin_r"]),
    )  # (T,) how far below the hip the lower foot is, in figure heights
    hip = np.stack([x0 + pose["dx"], floor - size * (reach - pose["dy"])], -1)  # (T, 2)
    neck = hip - [0, TORSO * size]
    joints = {"hip": hip, "neck": neck, "head": neck - [0, (NECK + HEAD) * size]}
    for s, tag in ((-1, "l"), (1, "r")):
        shoulder, hip_joint = neck + [s * SHOULDER * size, 0], hip + [s * HIP * size, 0]
        elbow = shoulder + UPPER_ARM * size * step(pose[f"arm_{tag}"])
        knee = hip_joint + THIGH * size * step(pose[f"thigh_{tag}"])
        joints |= {
            f"shoulder_{tag}": shoulder, f"elbow_{tag}": elbow,
            f"hand_{tag}": elbow + FOREARM * size * step(pose[f"fore_{tag}"]),
            f"hip_{tag}": hip_joint, f"knee_{tag}": knee,
            f"foot_{tag}": knee + SHIN * size * step(pose[f"shin_{tag}"]),
        }  # fmt: skip
    joints["size"] = np.full(len(hip), size)
    return joints


# The balls of the ball classes: each (centre (T, 2), radius, spin (T,)) from the joints


def resting_ball(x: float, floor: float, r: float, T: int) -> tuple:
    return np.tile([x, floor - r], (T, 1)), r, np.zeros(T)


def rolled(x: np.ndarray, y: np.ndarray, r: float) -> tuple:
    """A ball at (x, y) turning as it would rolling along x."""
    return np.stack([x, y], -1), r, (x - x[0]) / r


def juggle_balls(joints, phase, side, floor, r, size):
    """A shower: each ball flies from one hand to the other in an arc, half a cycle apart."""
    balls = []
    for k in (0, 0.5):
        cycle = (phase / (2 * np.pi) + k) % 1
        u = (2 * cycle) % 1  # progress of the current flight
        a, b = joints["hand_l"], joints["hand_r"]
        start, end = np.where((cycle < 0.5)[:, None], a, b), np.where((cycle < 0.5)[:, None], b, a)
        centre = (
            start + (end - start) * u[:, None] - [0, 1] * (0.6 * size * 4 * u * (1 - u))[:, None]
        )
        balls.append((centre - [0, r], r, 4 * np.pi * cycle))
    return balls


def dribble_ball(joints, phase, side, floor, r, size):
    up = np.abs(np.cos(phase / 2))  # 1 at the hand, 0 bouncing off the floor
    hand = joints["hand_r" if side > 0 else "hand_l"]
    y = floor - r - up * (floor - r - (hand[:, 1] + r))
    return [rolled(np.full(len(y), hand[0, 0] + side * 0.1 * size), y, r)]


def thrown_ball(joints, phase, side, floor, r, size):
    """In the hand until the release, then a parabola away to `side`."""
    cycle = (phase / (2 * np.pi)) % 1
    hand = joints["hand_r" if side > 0 else "hand_l"]
    release = hand[np.argmin(np.abs(cycle - RELEASE))]  # the hand's place at a release
    flight = np.clip(cycle - RELEASE, 0, None) * 24  # frames of flight at natural speed 1
    x = np.where(cycle < RELEASE, hand[:, 0], release[0] + side * 0.04 * size * flight)
    y = np.where(cycle < RELEASE, hand[:, 1], release[1] - 0.05 * size * flight)
    y = y + 0.0045 * size * flight**2
    return [rolled(x, np.minimum(y, floor - r), r)]


def kicked_ball(joints, phase, side, floor, r, size):
    """At the foot until the kick's peak, then rolling away to `side`, slowing down."""
    cycle = (phase / (2 * np.pi)) % 1
    roll = np.clip(cycle - 0.2, 0, None) * 24  # frames since the kick at natural speed 1
    x0 = joints["hip"][0, 0] + side * 0.35 * size
    x = x0 + side * size * (0.06 * roll - 0.0012 * roll**2)
    return [rolled(x, np.full(len(x), floor - r), r)]


def rolling_ball(joints, phase, side, floor, r, size):
    x = joints["hip"][0, 0] + side * 0.4 * size * (phase - phase[0]) / np.pi
    return [rolled(x, np.full(len(x), floor - r), r)]


def colliding_balls(joints, phase, side, floor, r, size):
    """Two balls roll together, meet, bounce apart and come back: one meeting a cycle."""
    apart = r + 0.5 * size * np.abs(np.sin(phase / 2))
    x0 = joints["hip"][0, 0] + side * 0.15 * size
    return [
        rolled(x0 - apart, np.full(len(apart), floor - r), r),
        rolled(x0 + apart, np.full(len(apart), floor - r), r),
    ]


BALLS = {
    "Juggle": juggle_balls, "Dribble": dribble_ball, "Throw": thrown_ball, "Kick": kicked_ball,
    "Roll": rolling_ball, "Collide": colliding_balls,
}  # fmt: skip


def flight(rng: np.random.Generator, cfg: SynthConfig) -> tuple:
    """The distractor: a small ball crossing the upper frame at its own steady speed."""
    T, H, W = cfg.frames, cfg.height, cfg.width
    v = log_uniform(rng, cfg.distractor_px) * H / 120 * rng.choice([-1, 1])
    x = rng.uniform(0, W) + v * np.arange(T)
    y = rng.uniform(0.1, 0.3) * H + rng.uniform(-0.1, 0.1) * np.arange(T) * H / 120
    return np.stack([x, y], -1), 0.03 * H, np.zeros(T)


# -----------------------------------------------------------------------------
# drawing: anti-aliased shapes from distance fields, on a frame that wraps around left-right


BONES = (
    ("neck", "hip"), ("shoulder_l", "shoulder_r"), ("hip_l", "hip_r"),
    ("shoulder_l", "elbow_l"), ("elbow_l", "hand_l"), ("shoulder_r", "elbow_r"),
    ("elbow_r", "hand_r"), ("hip_l", "knee_l"), ("knee_l", "foot_l"),
    ("hip_r", "knee_r"), ("knee_r", "foot_r"),
)  # fmt: skip


def draw_figure(
    frames: torch.Tensor, joints: dict, thickness: float, colour: torch.Tensor, head: torch.Tensor
) -> None:
    """The stick figure onto frames (T, H, W, 3) in place: limbs as capsules, a round head."""
    cover = torch.zeros(frames.shape[:3])
    for a, b in BONES:
        cover = torch.maximum(cover, capsule(frames.shape, joints[a], joints[b], thickness))
    composite(frames, cover, colour)
    size = float(joints["size"][0])
    composite(frames, capsule(frames.shape, joints["head"], joints["head"], HEAD * size), head)


def draw_ball(
    frames: torch.Tensor, ball: tuple, colour: torch.Tensor, stripe: torch.Tensor
) -> None:
    """A ball with a stripe across it that turns with its spin (so rolling shows)."""
    centre, r, spin = ball
    cover = capsule(frames.shape, centre, centre, r)  # (T, H, W)
    dx, dy = offsets(frames.shape, centre)
    spin = torch.as_tensor(spin, dtype=torch.float32)[:, None, None]
    across = (dx * torch.cos(spin) + dy * torch.sin(spin)).abs()  # distance from the stripe's axis
    band = (0.5 - (across - 0.3 * r)).clamp(0, 1)[..., None]
    composite(frames, cover, 1)  # clear, then paint the ball's own two colours
    frames.add_(cover[..., None] * (band * stripe + (1 - band) * colour))


def draw_pole(frames: torch.Tensor, x: np.ndarray, half_width: float, colour: torch.Tensor) -> None:
    """A vertical pole in front of everything, at screen x (T,)."""
    W = frames.shape[2]
    xs = torch.arange(W) + 0.5
    dx = (xs - torch.as_tensor(x, dtype=torch.float32)[:, None] + W / 2) % W - W / 2  # (T, W)
    cover = (half_width + 0.5 - dx.abs()).clamp(0, 1)[:, None, :].expand(frames.shape[:3])
    composite(frames, cover, colour)


def composite(frames: torch.Tensor, cover: torch.Tensor, colour) -> None:
    """frames = frames * (1 - cover) + colour * cover, in place; cover (T, H, W) in [0, 1]."""
    frames.mul_(1 - cover[..., None])
    if isinstance(colour, torch.Tensor):
        frames.add_(cover[..., None] * colour)


def offsets(shape: torch.Size, point: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's offset from `point` (T, 2): dx (T, 1, W), wrapped into [-W/2, W/2), and
    dy (T, H, 1)."""
    _, H, W, _ = shape
    p = torch.as_tensor(point, dtype=torch.float32)
    dx = (torch.arange(W) + 0.5 - p[:, 0, None] + W / 2) % W - W / 2
    dy = torch.arange(H) + 0.5 - p[:, 1, None]
    return dx[:, None, :], dy[:, :, None]


def capsule(shape: torch.Size, a: np.ndarray, b: np.ndarray, radius: float) -> torch.Tensor:
    """Coverage (T, H, W) of the segment a-b (T, 2) thickened by `radius`, with a 1 px soft
    edge. x wraps around, so a figure walking off one side comes back on the other."""
    dx, dy = offsets(shape, a)
    e = torch.as_tensor(b - a, dtype=torch.float32)  # (T, 2)
    ex, ey = e[:, 0, None, None], e[:, 1, None, None]
    along = ((dx * ex + dy * ey) / (ex**2 + ey**2).clamp_min(1e-6)).clamp(0, 1)
    distance = torch.hypot(dx - along * ex, dy - along * ey)
    return (radius + 0.5 - distance).clamp(0, 1)


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
    """A textured background (3, H, W) in [0, 1], muted so the figure and balls stand out: a
    coarse pattern plus fine grey detail of amplitude `grain` (4-8 px), which shows camera motion
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


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(*np.log(bounds))))


def random_colour(rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(rng.uniform(0, 1, 3), dtype=torch.float32)[:, None, None]  # (3, 1, 1)


def write_video(path: Path, frames: np.ndarray, fps: int, crf: int = 18, gop: int = 32) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 (yuv420p) .mp4 with PyAV."""
    import av  # PyAV only writes (and, for pictures, reads) the generated videos: a machine that
    # trains on a dataset made elsewhere needs decord alone

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # one encoder thread: parallelism comes from the process pool. Without macroblock-tree
        # rate control the same frames encode to the same bytes in every process (with it, a
        # third of the videos differed from one process to the next)
        stream.options = {
            "crf": str(crf), "g": str(gop), "preset": "veryfast", "threads": "1",
            "x264-params": "mbtree=0",
        }  # fmt: skip
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
        elif not generated_with(meta, cfg):
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


def generated_with(meta: dict, cfg: SynthConfig) -> bool:
    """Whether a dataset's meta.json says `cfg` generated it. A dataset made before a setting
    existed lacks it and was not: a new setting's default can change the videos (`drift` did)."""
    return meta["config"] == json.loads(json.dumps(asdict(cfg)))


def ensure_default_dataset(data: str) -> bool:
    """The default dataset, generated on first use by the commands (Python: `synthesize`);
    whether it was missing and is now made."""
    if data != DEFAULT_DATA or Path(DEFAULT_DATA).exists():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the ranks would all write it at once
        raise DataError(
            f"no dataset in {DEFAULT_DATA}: under torchrun, run `smp-lite data synth` first"
        )
    print(f"no dataset given: generating the default one in {DEFAULT_DATA}")
    synthesize(DEFAULT_DATA)
    return True


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
    look = draw_look(look_rng(seed, name, group), cfg)
    frames, info = render_video(name, look, video_rng(seed, name, group, clip), cfg)
    path = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.mp4"
    write_video(root / "videos" / path, frames, cfg.fps, cfg.crf, cfg.gop)
    split = "test" if group <= cfg.test_groups else "train"
    label = cfg.classes.index(name) + 1
    record = {"path": path, "class": name, "label": label, "group": group, "clip": clip}
    return record | {"split": split, "frames": len(frames)} | info


def look_rng(seed: int, class_name: str, group: int) -> np.random.Generator:
    """The RNG of a group's look in one class: as in UCF101, a group (one actor, scene and
    camera) is its own in each class, so training sees 12x as many looks as groups, and a
    network cannot learn a rate by remembering each look's motion energy."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), group, 0])  # clips: 1..


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
# how well the playback rate can be told at all


def rate_ceilings(cfg: SynthConfig, samples: int = 200_000, seed: int = 0) -> dict[str, float]:
    """The best accuracy any classifier of the 4 playback rates can reach on `cfg`'s videos
    when it measures exactly the speed of: the actor alone; the actor and the distractor ball;
    both and the camera pan (in the groups that pan). Simulated: a clip at rate r shows each
    speed times r, so a speed tells r only as far as its natural range allows; the ideal
    observer picks the rate most likely under every measured speed (ties shared). The rest of
    the clip (the balls, the pole) follows the actor or the camera and adds nothing."""
    rng = np.random.default_rng(seed)
    log_rates = np.log(np.array(RATES, dtype=np.float64))
    rate = rng.integers(len(log_rates), size=samples)

    def log_speeds(bounds: tuple[float, float], jitter: tuple[float, float] | None = None):
        speeds = rng.uniform(*np.log(bounds), size=samples)
        return speeds + np.log(rng.uniform(*jitter, size=samples)) if jitter else speeds

    cues = [
        ("actor", log_speeds(cfg.speed_range), np.ones(samples, bool)),
        ("actor + distractor", log_speeds(cfg.distractor_px), np.ones(samples, bool)),
        ("actor + distractor + pan", log_speeds(cfg.pan_px, cfg.pan_jitter),
         rng.random(samples) >= cfg.static_camera),
    ]  # fmt: skip
    posterior, result = np.ones((samples, len(log_rates))), {}
    for name, natural, seen in cues:
        density = histogram_density(natural)  # of log speed, from the draws themselves
        observed = natural + log_rates[rate]
        likelihood = np.stack([density(observed - lr) for lr in log_rates], 1)
        posterior *= np.where(seen[:, None], likelihood, 1.0)
        best = posterior >= posterior.max(1, keepdims=True) * (1 - 1e-9)
        result[name] = float(np.mean(best[np.arange(samples), rate] / best.sum(1)))
    return result


def histogram_density(x: np.ndarray, bins: int = 400):
    """The density of the samples `x` as a step function (0 outside their range)."""
    counts, edges = np.histogram(x, bins=bins, density=True)

    def density(v: np.ndarray) -> np.ndarray:
        i = np.searchsorted(edges, v, side="right") - 1
        inside = (i >= 0) & (i < bins)
        return np.where(inside, counts[np.clip(i, 0, bins - 1)], 0.0)

    return density


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
