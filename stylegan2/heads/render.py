"""Ray-cast renderer of cartoon heads with exact landmarks (numpy + Pillow only).

The scene is a few ellipsoids (head, hair shell, nose, ears, neck, shoulders) seen by an
orthographic camera looking down -z (world: x right, y up, z towards the viewer). Each
pixel of a supersampled grid is intersected with every ellipsoid in closed form, the
nearest hit wins, and the winner is shaded with Lambert + ambient light. Eyes, brows,
mouth and hairline are painted in the head's surface coordinates q = p / axes, so they
turn, foreshorten and hide with the head. The image is then box-downsampled.

Landmarks are 3D points on those same surfaces, projected with the same camera; a
landmark is visible when its surface faces the camera and no surface is nearer along
its own ray (the exact ray, not a pixel of the depth buffer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .factors import HeadFactors

LANDMARK_NAMES: tuple[str, ...] = (
    "nose_tip",
    "chin",
    "mouth_left",
    "mouth_right",
    "upper_lip",
    "lower_lip",
    "eye_left",
    "eye_right",
    "brow_left",
    "brow_right",
    "pupil_left",
    "pupil_right",
    "ear_left",
    "ear_right",
)
"""Left/right are the head's own: its left eye is on the image right in a frontal view."""

CHIN_Q = (0.0, -0.92, math.sqrt(1.0 - 0.92**2))
LONG_HAIR_Z = 0.25  # long hair hangs behind this head-frame plane (q_z, in head-depth units)
MAX_RAYS_PER_SIDE = 8192  # ~1 GiB of per-ray buffers
_VISIBILITY_TOLERANCE = 1e-6  # world units along the ray

_HEAD, _HAIR, _NOSE, _EAR_L, _EAR_R, _NECK, _TORSO = range(1, 8)
_HEAD_PAINTED = slice(1, 12)  # landmarks that lie on the head ellipsoid (chin .. pupil_right)


@dataclass(frozen=True)
class HeadRender:
    """One rendered head: `image` [S,S,3] uint8, `landmarks` [K,2] float32 (x, y) in output
    pixels (pixel (i, j) has its centre at x=i, y=j), `visible` [K] bool."""

    image: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray


def check_render_args(size: int, supersample: int) -> None:
    """Raise ValueError for an unusable image size or supersampling factor."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if (
        isinstance(supersample, bool)
        or not isinstance(supersample, (int, np.integer))
        or not (1 <= supersample <= 8)
    ):
        raise ValueError(f"supersample must be an integer in 1..8, got {supersample!r}")
    if size * supersample > MAX_RAYS_PER_SIDE:
        raise ValueError(f"size x supersample must be at most {MAX_RAYS_PER_SIDE}, got {size}x{supersample}")


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """World-from-head rotation for angles in degrees: pitch (nod), then yaw, then roll."""
    return _rot_z(math.radians(roll)) @ _rot_y(math.radians(yaw)) @ _rot_x(-math.radians(pitch))


class _Ellipsoid:
    """An ellipsoid {centre + rot @ (axes * u) : |u| = 1} and its ray intersections along z.

    Per-pixel work takes and returns separate x, y, z arrays (float32 stays float32: every
    coefficient is a Python float).
    """

    def __init__(self, centre: np.ndarray, rot: np.ndarray, axes: np.ndarray) -> None:
        self.centre = np.asarray(centre, dtype=np.float64)
        self.rot = np.asarray(rot, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64)
        self.inv_axes2 = 1.0 / self.axes**2
        g = self.rot @ np.diag(self.inv_axes2) @ self.rot.T  # world-frame quadric matrix
        # Along the ray (dx, dy, z') with z' = z - centre_z: a z'^2 + 2 b z' + c = 0, where
        # b = gx dx + gy dy and the discriminant b^2 - a c is a quadratic form in (dx, dy).
        self.a = float(g[2, 2])
        self.gx, self.gy = float(g[0, 2]), float(g[1, 2])
        self.dxx = self.gx**2 - self.a * float(g[0, 0])
        self.dxy = self.gx * self.gy - self.a * float(g[0, 1])
        self.dyy = self.gy**2 - self.a * float(g[1, 1])

    def extent(self) -> np.ndarray:
        """Half-extents of its projection along world x and y."""
        return np.linalg.norm(self.rot[:2] * self.axes[None, :], axis=1)

    def discriminant(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return self.dxx * dx * dx + 2 * self.dxy * dx * dy + self.dyy * dy * dy + self.a

    def discriminant_grid(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Discriminant on the grid dy (rows) x dx (columns), with few full-size passes."""
        d = dy[:, None] * (2 * self.dxy * dx)[None, :]
        d += (self.dxx * dx * dx)[None, :]
        d += (self.dyy * dy * dy + self.a)[:, None]
        return d

    def roots(self, dx: np.ndarray, dy: np.ndarray, disc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World z of the near (front) and far (back) hits, for disc >= 0."""
        b = self.gx * dx + self.gy * dy
        s = np.sqrt(disc)
        cz = float(self.centre[2])
        return (s - b) * (1 / self.a) + cz, (-s - b) * (1 / self.a) + cz

    def to_local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """World points -> coordinates in the ellipsoid's frame, relative to its centre."""
        dx, dy, dz = (x - float(self.centre[0])), (y - float(self.centre[1])), (z - float(self.centre[2]))
        r = self.rot.tolist()
        return tuple(r[0][i] * dx + r[1][i] * dy + r[2][i] * dz for i in range(3))

    def lambert(self, local: tuple[np.ndarray, ...], light_world: np.ndarray) -> np.ndarray:
        """Cosine between the outward normal at local surface points and the light direction."""
        light = (self.rot.T @ light_world).tolist()
        n = [local[i] * float(self.inv_axes2[i]) for i in range(3)]
        dot = n[0] * light[0] + n[1] * light[1] + n[2] * light[2]
        return dot / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])

    def world_normal(self, point: np.ndarray) -> np.ndarray:
        """Outward unit normal (world) at a world surface point [3]."""
        n = self.rot @ (self.rot.T @ (point - self.centre) * self.inv_axes2)
        return n / np.linalg.norm(n)

    def surface_point(self, q: tuple[float, float, float] | np.ndarray) -> np.ndarray:
        """World point of the unit-sphere direction q (local frame)."""
        return self.centre + self.rot @ (self.axes * np.asarray(q, dtype=np.float64))


class HeadScene:
    """The ellipsoids, camera and paint parameters of one `HeadFactors`."""

    def __init__(self, f: HeadFactors) -> None:
        self.f = f
        r = head_rotation(f.yaw, f.pitch, f.roll)
        eye3 = np.eye(3)
        axes = np.array([f.head_width, f.head_height, f.head_depth])
        self.head = _Ellipsoid(np.zeros(3), r, axes)
        nose_root = axes * np.array([0.0, f.nose_height, math.sqrt(1 - f.nose_height**2)])
        nose_axes = np.array([f.nose_size, f.nose_size * 1.2, f.nose_length])
        self.nose = _Ellipsoid(r @ nose_root, r, nose_axes)
        ear_axes = np.array([0.35, 1.0, 0.6]) * f.ear_size
        ear_y = -0.1 * f.head_height
        self.ears = [
            _Ellipsoid(r @ np.array([side * 0.96 * f.head_width, ear_y, -0.05 * f.head_depth]), r, ear_axes)
            for side in (1.0, -1.0)
        ]
        self.neck = _Ellipsoid(np.array([0.0, -1.0, -0.45]) * axes, eye3, np.array([0.38, 0.8, 0.38]) * axes)
        self.torso = _Ellipsoid(
            np.array([0.0, -2.2 * f.head_height, -0.6]), eye3, np.array([1.9, 0.95, 0.7]) * axes
        )
        self.has_hair = f.hairline < 0.99
        long_drop = 0.5 * f.hair_length * f.head_height
        shell_axes = axes * (1 + f.hair_volume) + np.array([0.0, long_drop, 0.0])
        self.hair = _Ellipsoid(r @ np.array([0.0, -long_drop, -0.02]), r, shell_axes)
        # hair cap: directions d (from the head centre, in q space) with n . d > k, the plane
        # tilted so the hairline is at q_y = hairline in front and q_y = hair_back behind
        phi_front = math.asin(min(max(f.hairline, -1.0), 1.0))
        phi_back = math.asin(min(max(f.hair_back, -1.0), 1.0))
        tilt = 0.5 * (phi_front - phi_back)
        self.cap_ny, self.cap_nz = math.cos(tilt), -math.sin(tilt)
        self.cap_k = math.sin(0.5 * (phi_front + phi_back))
        el, az = math.radians(f.light_elevation), math.radians(f.light_azimuth)
        self.light_world = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        self.prims: dict[int, _Ellipsoid] = {
            _HEAD: self.head,
            _NOSE: self.nose,
            _EAR_L: self.ears[0],
            _EAR_R: self.ears[1],
            _NECK: self.neck,
            _TORSO: self.torso,
        }
        if self.has_hair:
            self.prims[_HAIR] = self.hair

    # -- camera ---------------------------------------------------------------------------
    def pixels_per_unit(self, size: int) -> float:
        return self.f.scale * size

    def project(self, points: np.ndarray, size: int) -> np.ndarray:
        """World points [N,3] -> (x, y) output pixel coordinates [N,2]."""
        s = self.pixels_per_unit(size)
        x = self.f.center_x * size - 0.5 + s * points[:, 0]
        y = self.f.center_y * size - 0.5 - s * points[:, 1]
        return np.stack([x, y], axis=1)

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.pixels_per_unit(size)
        return (x - (self.f.center_x * size - 0.5)) / s, -(y - (self.f.center_y * size - 0.5)) / s

    # -- hair region ----------------------------------------------------------------------
    def head_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """World points -> head space q = local / head axes (1 on the head's surface)."""
        lx, ly, lz = self.head.to_local(x, y, z)
        a = self.head.axes.tolist()
        return lx * (1 / a[0]), ly * (1 / a[1]), lz * (1 / a[2])

    def in_hair(self, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
        """Whether head-space points (any radius) are covered by hair."""
        if not self.has_hair:
            return np.zeros(qx.shape, dtype=bool)
        f = self.f
        norm = np.sqrt(qx * qx + qy * qy + qz * qz)
        cap = qy * self.cap_ny + qz * self.cap_nz + f.fringe_wave * np.cos(9.0 * qx + f.fringe_phase)
        hair = cap > self.cap_k * norm
        if f.hair_length > 0:
            hair |= qz < LONG_HAIR_Z
        return hair

    # -- hits -----------------------------------------------------------------------------
    def hair_hits(
        self, x: np.ndarray, y: np.ndarray, z_front: np.ndarray, z_back: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The hair shell is clipped to the hair region: use the front hit if it is hair, else
        the back (inside) hit if that is hair. Returns (hit mask, z, inside flag)."""
        front = self.in_hair(*self.head_q(x, y, z_front))
        inside = np.zeros_like(front)
        rest = np.flatnonzero(~front)
        inside[rest] = self.in_hair(*self.head_q(x[rest], y[rest], z_back[rest]))
        return front | inside, np.where(front, z_front, z_back), inside

    def nearest_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """World z of the nearest surface along the rays through world (x, y) (-inf if none)."""
        best = np.full(x.shape, -np.inf)
        for pid, prim in self.prims.items():
            dx, dy = x - prim.centre[0], y - prim.centre[1]
            disc = prim.discriminant(dx, dy)
            hit = disc >= 0
            zf, zb = prim.roots(dx, dy, np.maximum(disc, 0.0))
            if pid == _HAIR:
                ok, z, _ = self.hair_hits(x, y, zf, zb)
                hit &= ok
            else:
                z = zf
            best = np.where(hit & (z > best), z, best)
        return best

    # -- landmarks ------------------------------------------------------------------------
    def landmark_points(self) -> tuple[np.ndarray, np.ndarray]:
        """World positions [K,3] and outward unit normals [K,3] of `LANDMARK_NAMES`."""
        f = self.f
        lip = _lip_thickness(f)
        upper = f.mouth_height + 0.5 * f.mouth_open + _MOUTH_LINE + 0.5 * lip
        lower = f.mouth_height - 0.5 * f.mouth_open - _MOUTH_LINE - 0.5 * _LOWER_LIP * lip
        brow_y = f.eye_height + f.brow_height
        painted = [  # (q_x, q_y) on the head surface, in LANDMARK_NAMES order after the chin
            (f.mouth_width, f.mouth_height + f.smile),
            (-f.mouth_width, f.mouth_height + f.smile),
            (0.0, upper),
            (0.0, lower),
            (f.eye_spacing, f.eye_height),
            (-f.eye_spacing, f.eye_height),
            (f.eye_spacing, brow_y),
            (-f.eye_spacing, brow_y),
            _pupil_centre(f, 1.0),
            _pupil_centre(f, -1.0),
        ]
        q = [CHIN_Q] + [(x, y, math.sqrt(max(1.0 - x * x - y * y, 0.0))) for x, y in painted]
        points = [self.nose.surface_point((0.0, 0.0, 1.0))]
        normals = [self.nose.world_normal(points[0])]
        for v in q:
            points.append(self.head.surface_point(v))
            normals.append(self.head.world_normal(points[-1]))
        for side, ear in zip((1.0, -1.0), self.ears):
            points.append(ear.surface_point(np.array([side, 0.0, 1.0]) / math.sqrt(2.0)))  # front-outer
            normals.append(ear.world_normal(points[-1]))
        return np.array(points), np.array(normals)

    def landmarks(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) output pixel positions [K,2] and visibility [K] of `LANDMARK_NAMES`."""
        world, normals = self.landmark_points()
        xy = self.project(world, size)
        nearest = self.nearest_z(world[:, 0], world[:, 1])
        unoccluded = nearest <= world[:, 2] + _VISIBILITY_TOLERANCE
        facing = normals[:, 2] > 0
        inside = np.all((xy >= -0.5) & (xy <= size - 0.5), axis=1)
        bare = np.ones(len(LANDMARK_NAMES), dtype=bool)  # painted features under painted-on hair are hidden
        bare[_HEAD_PAINTED] = ~self.in_hair(*self.head_q(*world[_HEAD_PAINTED].T))
        return xy.astype(np.float32), unoccluded & facing & inside & bare


# -- painting ---------------------------------------------------------------------------------
_WHITE = np.array([0.97, 0.97, 0.95], dtype=np.float32)
_INK = np.array([0.08, 0.06, 0.06], dtype=np.float32)
_MOUTH_INSIDE = np.array([0.35, 0.07, 0.08], dtype=np.float32)
_TEETH = np.array([0.95, 0.95, 0.9], dtype=np.float32)
_BLUSH = np.array([0.95, 0.45, 0.45], dtype=np.float32)
_LIP_TINT = np.array([0.85, 0.52, 0.52], dtype=np.float32)
_MOUTH_LINE = 0.007  # half height of a closed mouth's dark line (q units)
_LOWER_LIP = 1.2  # lower lip thickness relative to the upper
_EYE_RIM = 0.022


def _lip_thickness(f: HeadFactors) -> float:
    return 0.03 + 0.08 * f.mouth_width


def _pupil_centre(f: HeadFactors, side: float) -> tuple[float, float]:
    """Centre of the iris in q space (side +1: the head's left eye)."""
    return (
        side * f.eye_spacing + 0.45 * f.gaze_x * f.eye_size,
        f.eye_height + 0.35 * f.gaze_y * f.eye_size * f.eye_openness,
    )


def _paint_face(qx: np.ndarray, qy: np.ndarray, qz: np.ndarray, f: HeadFactors) -> np.ndarray:
    """Albedo [N,3] of head surface points with unit-sphere coordinates (qx, qy, qz)."""
    skin = f.colour("skin")
    out = np.empty((qx.shape[0], 3), dtype=np.float32)
    out[:] = skin
    front = qz > 0.05
    if f.blush > 0:  # cheeks
        cheek = (np.abs(qx) - (f.eye_spacing + 0.06)) ** 2 + (qy - (f.eye_height - 0.3)) ** 2
        idx = np.flatnonzero(front & (cheek < 0.012))
        w = (f.blush * (1 - cheek[idx] / 0.012))[:, None]
        out[idx] += w * (_BLUSH - out[idx])
    _paint_mouth(out, qx, qy, front, f, skin)
    brow_colour = f.colour("hair") * 0.55 + _INK * 0.45 if f.hairline < 0.99 else skin * 0.45
    for side in (1.0, -1.0):
        _paint_eye(out, qx, qy, front, f, side, brow_colour)
    return out


def _paint_mouth(
    out: np.ndarray, qx: np.ndarray, qy: np.ndarray, front: np.ndarray, f: HeadFactors, skin: np.ndarray
) -> None:
    """A lens-shaped opening around a smile curve, with lips above and below and teeth."""
    lip_max = _lip_thickness(f)
    reach = 0.5 * f.mouth_open + _MOUTH_LINE + _LOWER_LIP * lip_max + abs(f.smile)
    idx = np.flatnonzero(front & (np.abs(qx) < f.mouth_width) & (np.abs(qy - f.mouth_height) < reach))
    xm = qx[idx] / f.mouth_width
    bulge = 1 - xm * xm
    dy = qy[idx] - (f.mouth_height + f.smile * xm * xm)
    half_open = 0.5 * f.mouth_open * bulge + _MOUTH_LINE
    lip = lip_max * np.sqrt(bulge)
    col = out[idx]
    col[(dy < half_open + lip) & (dy > -half_open - _LOWER_LIP * lip)] = skin * _LIP_TINT
    inside = np.abs(dy) < half_open
    col[inside] = _MOUTH_INSIDE
    if f.mouth_open > 0.04:
        col[inside & (dy > half_open - 0.35 * f.mouth_open * bulge)] = _TEETH
    out[idx] = col


def _paint_eye(
    out: np.ndarray,
    qx: np.ndarray,
    qy: np.ndarray,
    front: np.ndarray,
    f: HeadFactors,
    side: float,
    brow_colour: np.ndarray,
) -> None:
    """Eye (rim, white, iris, pupil, highlight) and the brow above it; side +1 is the head's left."""
    rx = f.eye_size
    ry = f.eye_size * 0.8 * f.eye_openness + 1e-3
    ex = qx - side * f.eye_spacing
    ey = qy - f.eye_height
    top = f.brow_height + f.brow_thickness + 0.1
    idx = np.flatnonzero(front & (np.abs(ex) < 1.2 * rx + 0.04) & (ey > -ry - _EYE_RIM) & (ey < top))
    ex, ey = ex[idx], ey[idx]
    col = out[idx]
    col[(ex / (rx + _EYE_RIM)) ** 2 + (ey / (ry + _EYE_RIM)) ** 2 < 1] = _INK
    white = (ex / rx) ** 2 + (ey / ry) ** 2 < 1
    col[white] = _WHITE
    px, py = _pupil_centre(f, side)
    iris_r = 0.55 * f.eye_size
    d2 = (qx[idx] - px) ** 2 + (qy[idx] - py) ** 2
    col[white & (d2 < iris_r**2)] = f.colour("iris")
    col[white & (d2 < (0.5 * iris_r) ** 2)] = _INK
    hx, hy = qx[idx] - (px + 0.3 * iris_r), qy[idx] - (py + 0.35 * iris_r)
    col[white & (hx * hx + hy * hy < (0.22 * iris_r) ** 2)] = _WHITE
    # brow: a band along an arch, centred brow_height above the eye; + tilt raises the outer end
    half_w = 1.15 * f.eye_size
    bx = ex * side / half_w  # -1..1, + outwards
    by = ey - f.brow_height + 0.03 * bx * bx - 0.06 * f.brow_tilt * bx
    col[(np.abs(bx) < 1) & (np.abs(by) < f.brow_thickness * (1 - 0.5 * bx * bx))] = brow_colour
    out[idx] = col


# -- rendering --------------------------------------------------------------------------------
def render_head(factors: HeadFactors, size: int = 256, supersample: int = 2) -> HeadRender:
    """Render one head at `size` x `size` pixels (anti-aliased by `supersample`^2 rays per pixel)."""
    check_render_args(size, supersample)
    size, supersample = int(size), int(supersample)
    scene = HeadScene(factors)
    f = factors
    n = size * supersample
    sub = (np.arange(n, dtype=np.float64) + 0.5) / supersample - 0.5  # output-pixel coordinate
    xs, ys = scene.pixel_to_world(sub, sub, size)
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)

    zbuf = np.full(n * n, -np.inf, dtype=np.float32)
    owner = np.zeros(n * n, dtype=np.int8)
    hits: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for pid, prim in scene.prims.items():
        window = _window(prim, xs, ys)
        if window is None:
            continue
        r0, r1, c0, c1 = window
        dx = xs[c0:c1] - np.float32(prim.centre[0])
        dy = ys[r0:r1] - np.float32(prim.centre[1])
        disc = prim.discriminant_grid(dx, dy).ravel()
        loc = np.flatnonzero(disc > 0)
        rr, cc = np.divmod(loc, c1 - c0)
        z, z_back = prim.roots(dx[cc], dy[rr], disc[loc])
        rr += r0
        cc += c0
        idx = rr * n + cc
        inside = None
        if pid == _HAIR:
            ok, z, inside = scene.hair_hits(xs[cc], ys[rr], z, z_back)
            idx, z, inside = idx[ok], z[ok], inside[ok]
        nearer = z > zbuf[idx]
        zbuf[idx[nearer]] = z[nearer]
        owner[idx[nearer]] = pid
        hits[pid] = (idx, inside)

    colour = np.zeros((n * n, 3), dtype=np.float32)
    skin = f.colour("skin")
    flat_colours = {
        _NOSE: skin * np.array([1.0, 0.9, 0.88], dtype=np.float32),
        _EAR_L: skin * 0.94,
        _EAR_R: skin * 0.94,
        _NECK: skin * 0.82,
        _TORSO: f.colour("shirt"),
        _HAIR: f.colour("hair"),
    }
    for pid, (all_idx, all_inside) in hits.items():
        mine = owner[all_idx] == pid
        idx = all_idx[mine]
        if idx.size == 0:
            continue
        prim = scene.prims[pid]
        rows, cols = np.divmod(idx, n)
        local = prim.to_local(xs[cols], ys[rows], zbuf[idx])
        lam = prim.lambert(local, scene.light_world)
        inside = all_inside[mine] if all_inside is not None else None
        if inside is not None:  # the inner side of the hair shell faces the other way, in shadow
            lam = np.where(inside, -lam, lam)
        shade = f.ambient + (1 - f.ambient) * np.maximum(lam, 0)
        if inside is not None:
            shade = np.where(inside, 0.55 * shade, shade)
        if pid == _HEAD:
            a = prim.axes.tolist()
            q = (local[0] * (1 / a[0]), local[1] * (1 / a[1]), local[2] * (1 / a[2]))
            albedo = _paint_face(*q, f)
            albedo[scene.in_hair(*q)] = flat_colours[_HAIR] * 0.9
        else:
            albedo = flat_colours[pid]
        colour[idx] = albedo * shade[:, None]

    rgb = _box_downsample(colour.reshape(n, n, 3), supersample)
    cover = _box_downsample((owner > 0).astype(np.float32).reshape(n, n, 1), supersample)
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
    background = f.colour("bg_top") * (1 - t) + f.colour("bg_bottom") * t  # vertical gradient
    rgb += (1 - cover) * background
    image = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    landmarks, visible = scene.landmarks(size)
    return HeadRender(image=image, landmarks=landmarks, visible=visible)


def _window(prim: _Ellipsoid, xs: np.ndarray, ys: np.ndarray) -> tuple[int, int, int, int] | None:
    """Row and column range of the subpixel grid that the ellipsoid's projection can cover."""
    n = xs.shape[0]
    step = float(xs[1] - xs[0]) if n > 1 else 1.0
    ext = prim.extent()
    cx, cy = prim.centre[0], prim.centre[1]
    c0 = max(math.floor((cx - ext[0] - xs[0]) / step), 0)
    c1 = min(math.ceil((cx + ext[0] - xs[0]) / step) + 1, n)
    r0 = max(math.floor((ys[0] - (cy + ext[1])) / step), 0)
    r1 = min(math.ceil((ys[0] - (cy - ext[1])) / step) + 1, n)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _box_downsample(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of an [n, n, C] array (sums of strided views, faster than mean())."""
    if k == 1:
        return a.copy()
    n, _, c = a.shape
    m = n // k
    cols = a.reshape(n, m, k, c)
    s = cols[:, :, 0].copy()
    for j in range(1, k):
        s += cols[:, :, j]
    rows = s.reshape(m, k, m, c)
    out = rows[:, 0].copy()
    for j in range(1, k):
        out += rows[:, j]
    out *= 1.0 / (k * k)
    return out
