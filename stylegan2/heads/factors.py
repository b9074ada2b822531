"""The factors of variation of a procedural head, and how they are sampled.

A head is fully described by one `HeadFactors`: pose, face shape, features, colours,
lighting and framing. Its fields have a fixed order, so `to_vector()` gives a float
array that a model can regress (and `from_vector` turns back into the same head).
Sampling takes a numpy Generator, so one seed always gives one head.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

YAW_RANGE = 40.0
PITCH_RANGE = 20.0
ROLL_RANGE = 14.0
_POSITIVE = (
    "head_width", "head_height", "head_depth", "eye_size", "mouth_width", "nose_length", "nose_size",
    "ear_size", "scale",
)  # fmt: skip
_INSIDE_FACE = ("eye_spacing", "eye_height", "mouth_height", "nose_height")  # q coordinates on the face


@dataclass(frozen=True)
class HeadFactors:
    """Everything the renderer needs. Angles in degrees, colours RGB in [0, 1].

    Face features are placed in the head's surface coordinates q = p / axes (the point
    on the unit sphere that the head ellipsoid was stretched from): q_x to the head's
    own left, q_y up, q_z out of the face.
    """

    # pose (degrees): +yaw turns the nose to the image right, +pitch tips it up,
    # +roll rotates the head counter-clockwise on screen
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    # head ellipsoid semi-axes (world units; height ~ 1)
    head_width: float = 0.86
    head_height: float = 1.0
    head_depth: float = 0.92
    # eyes: centre at q = (±eye_spacing, eye_height); eye_size = half width in q units
    eye_spacing: float = 0.36
    eye_height: float = 0.05
    eye_size: float = 0.15
    eye_openness: float = 0.8
    gaze_x: float = 0.0  # -1..1, + looks to the head's own left
    gaze_y: float = 0.0  # -1..1, + looks up
    # brows: centre brow_height above the eye centre; + tilt raises the outer ends
    brow_height: float = 0.2
    brow_tilt: float = 0.0
    brow_thickness: float = 0.035
    # mouth: half width, centre height, opening, smile (+ raises the corners)
    mouth_width: float = 0.25
    mouth_height: float = -0.5
    mouth_open: float = 0.04
    smile: float = 0.04
    # nose: protrusion, half width, height of its centre (q_y)
    nose_length: float = 0.22
    nose_size: float = 0.12
    nose_height: float = -0.15
    ear_size: float = 0.22
    # hair: a cap above a tilted plane through the head centre, from q_y = hairline at the
    # front to q_y = hair_back at the back (hairline >= 1: bald); painted on the scalp and on
    # a shell hair_volume thicker; hair_length > 0 adds long hair hanging down around the face
    hairline: float = 0.5
    hair_back: float = -0.3
    hair_volume: float = 0.08
    hair_length: float = 0.0
    fringe_wave: float = 0.03
    fringe_phase: float = 0.0
    skin_r: float = 0.96
    skin_g: float = 0.78
    skin_b: float = 0.64
    hair_r: float = 0.25
    hair_g: float = 0.15
    hair_b: float = 0.08
    iris_r: float = 0.35
    iris_g: float = 0.22
    iris_b: float = 0.1
    blush: float = 0.1
    shirt_r: float = 0.2
    shirt_g: float = 0.35
    shirt_b: float = 0.6
    bg_top_r: float = 0.7
    bg_top_g: float = 0.8
    bg_top_b: float = 0.9
    bg_bottom_r: float = 0.55
    bg_bottom_g: float = 0.65
    bg_bottom_b: float = 0.8
    # directional light: azimuth (+ from the image right), elevation (+ from above), ambient share
    light_azimuth: float = 20.0
    light_elevation: float = 30.0
    ambient: float = 0.45
    # framing: pixels per world unit as a fraction of the image size, head centre in image fractions
    scale: float = 0.3
    center_x: float = 0.5
    center_y: float = 0.45

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"factor {field.name} must be a finite number, got {value!r}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"factor {name} must be > 0, got {getattr(self, name)}")
        for name in _INSIDE_FACE:
            if not -0.95 <= getattr(self, name) <= 0.95:
                raise ValueError(f"factor {name} must be in [-0.95, 0.95], got {getattr(self, name)}")

    def to_vector(self) -> np.ndarray:
        """The factors as a float64 array in `FACTOR_NAMES` order."""
        return np.array(dataclasses.astuple(self), dtype=np.float64)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> HeadFactors:
        """Inverse of `to_vector`."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        if v.shape[0] != len(FACTOR_NAMES):
            raise ValueError(f"factor vector must have {len(FACTOR_NAMES)} entries, got {v.shape[0]}")
        if not np.all(np.isfinite(v)):
            raise ValueError("factor vector has non-finite entries")
        return cls(*(float(x) for x in v))

    def colour(self, prefix: str) -> np.ndarray:
        """The RGB triple stored as `<prefix>_r/_g/_b`, as a float32 array."""
        return np.array([getattr(self, f"{prefix}_{c}") for c in "rgb"], dtype=np.float32)


FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HeadFactors))

# Anchor colours; a sampled colour is a jittered blend of two neighbours (or of one, for hair).
_SKIN_TONES = np.array(
    [
        [1.00, 0.87, 0.77],
        [0.96, 0.78, 0.64],
        [0.87, 0.65, 0.48],
        [0.69, 0.47, 0.33],
        [0.45, 0.30, 0.21],
        [0.33, 0.22, 0.16],
    ]
)
_HAIR_COLOURS = np.array(
    [
        [0.08, 0.07, 0.07],  # black
        [0.22, 0.13, 0.07],  # dark brown
        [0.45, 0.29, 0.15],  # brown
        [0.86, 0.70, 0.40],  # blonde
        [0.62, 0.24, 0.10],  # red
        [0.72, 0.72, 0.72],  # grey
    ]
)
_IRIS_COLOURS = np.array(
    [
        [0.33, 0.20, 0.09],  # brown
        [0.15, 0.09, 0.05],  # dark brown
        [0.25, 0.45, 0.75],  # blue
        [0.30, 0.50, 0.28],  # green
        [0.45, 0.50, 0.55],  # grey
    ]
)


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> tuple[float, float, float]:
    c = np.clip(colour + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return float(c[0]), float(c[1]), float(c[2])


def _skin(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.random() < 0.06:  # cartoon skin: yellow, green, blue, lilac...
        return _hsv(rng.random(), rng.uniform(0.25, 0.55), rng.uniform(0.65, 0.95))
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    base = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[i + 1] * (t - i)
    return _jitter(rng, base, 0.03)


def _hair(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.random() < 0.1:  # dyed
        return _hsv(rng.random(), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.85))
    return _jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 0.05)


def sample_factors(rng: np.random.Generator) -> HeadFactors:
    """Draw one head; the same generator state always gives the same head."""
    u = rng.uniform
    bald = rng.random() < 0.08
    long_hair = rng.random() < 0.35
    skin = _skin(rng)
    hair = _hair(rng)
    iris = _jitter(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 0.05)
    shirt = _hsv(rng.random(), u(0.2, 0.8), u(0.25, 0.9))
    bg_hue = rng.random()
    bg_top = _hsv(bg_hue, u(0.1, 0.5), u(0.55, 0.98))
    bg_bottom = _hsv(bg_hue + u(-0.15, 0.15), u(0.1, 0.6), u(0.35, 0.9))
    return HeadFactors(
        yaw=u(-YAW_RANGE, YAW_RANGE),
        pitch=u(-PITCH_RANGE, PITCH_RANGE),
        roll=u(-ROLL_RANGE, ROLL_RANGE),
        head_width=u(0.76, 0.95),
        head_height=u(0.94, 1.06),
        head_depth=u(0.84, 1.0),
        eye_spacing=u(0.3, 0.42),
        eye_height=u(0.0, 0.12),
        eye_size=u(0.1, 0.17),
        eye_openness=float(np.clip(u(0.0, 1.5), 0.05, 1.0)),
        gaze_x=u(-1, 1),
        gaze_y=u(-1, 1),
        brow_height=u(0.14, 0.26),
        brow_tilt=u(-1, 1),
        brow_thickness=u(0.025, 0.055),
        mouth_width=u(0.16, 0.32),
        mouth_height=u(-0.56, -0.44),
        mouth_open=float(max(0.0, u(-0.06, 0.16))),
        smile=u(-0.05, 0.09),
        nose_length=u(0.12, 0.3),
        nose_size=u(0.08, 0.15),
        nose_height=u(-0.22, -0.1),
        ear_size=u(0.17, 0.26),
        hairline=2.0 if bald else u(0.25, 0.6),
        hair_back=u(-0.75, 0.1),
        hair_volume=u(0.03, 0.16),
        hair_length=u(0.5, 1.2) if long_hair else 0.0,
        fringe_wave=u(0.0, 0.08),
        fringe_phase=u(0, 2 * np.pi),
        skin_r=skin[0],
        skin_g=skin[1],
        skin_b=skin[2],
        hair_r=hair[0],
        hair_g=hair[1],
        hair_b=hair[2],
        iris_r=iris[0],
        iris_g=iris[1],
        iris_b=iris[2],
        blush=u(0.0, 0.35),
        shirt_r=shirt[0],
        shirt_g=shirt[1],
        shirt_b=shirt[2],
        bg_top_r=bg_top[0],
        bg_top_g=bg_top[1],
        bg_top_b=bg_top[2],
        bg_bottom_r=bg_bottom[0],
        bg_bottom_g=bg_bottom[1],
        bg_bottom_b=bg_bottom[2],
        light_azimuth=u(-70, 70),
        light_elevation=u(-10, 60),
        ambient=u(0.35, 0.6),
        scale=u(0.27, 0.32),
        center_x=u(0.46, 0.54),
        center_y=u(0.42, 0.48),
    )
