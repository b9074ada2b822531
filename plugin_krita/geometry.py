"""Drag points from vector shapes, and the mapping canvas px <-> model px.

Pure Python (no Krita, no Qt) so it can be unit-tested. The Krita facts it relies on
(docs/krita-notes, verified on 5.1.5): `Shape.toSvg()` gives the shape's own element with
its local `transform` and its `d` in local units; `Shape.transformation()` maps those units
to points (pt); canvas pixels = pt × resolution / 72. Groups carry their children (with
their own local transforms) inside their `toSvg()`. `Shape.position()` is NOT the
translation and is never used.

Coordinates: canvas px are continuous (pixel i covers [i, i+1)); model px follow the
engine's convention (pixel i has its centre at x = i).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class PointsError(ValueError):
    """The drag points drawn on the points layer cannot be used; the message says why."""


# --------------------------------------------------------------------------- affine transforms


@dataclass(frozen=True)
class Affine:
    """2D affine map x' = a x + c y + e, y' = b x + d y + f (SVG `matrix(a b c d e f)` order)."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0
    d: float = 1.0
    e: float = 0.0
    f: float = 0.0

    def __matmul__(self, other: Affine) -> Affine:
        """self ∘ other: apply `other` first, then `self`."""
        return Affine(
            self.a * other.a + self.c * other.b,
            self.b * other.a + self.d * other.b,
            self.a * other.c + self.c * other.d,
            self.b * other.c + self.d * other.d,
            self.a * other.e + self.c * other.f + self.e,
            self.b * other.e + self.d * other.f + self.f,
        )

    def map(self, x: float, y: float) -> tuple[float, float]:
        return (self.a * x + self.c * y + self.e, self.b * x + self.d * y + self.f)

    @staticmethod
    def scale(sx: float, sy: float | None = None) -> Affine:
        return Affine(sx, 0.0, 0.0, sx if sy is None else sy, 0.0, 0.0)

    @staticmethod
    def from_qtransform(t) -> Affine:
        """From a QTransform (m11 m12 / m21 m22 / dx dy, row-vector convention)."""
        return Affine(t.m11(), t.m12(), t.m21(), t.m22(), t.dx(), t.dy())


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TRANSFORM_ITEM = re.compile(r"(matrix|translate|scale|rotate|skewX|skewY)\s*\(([^)]*)\)")
_NUMBER_RE = re.compile(_NUMBER)


def parse_transform(text: str | None) -> Affine:
    """Parse an SVG `transform` attribute (a list of matrix/translate/scale/rotate/skew items)."""
    result = Affine()
    if not text or not text.strip():
        return result
    consumed = _TRANSFORM_ITEM.sub("", text).replace(",", " ").strip()
    if consumed:
        raise PointsError(f"unsupported SVG transform: {text!r}")
    for name, args_text in _TRANSFORM_ITEM.findall(text):
        args = [float(v) for v in _NUMBER_RE.findall(args_text)]
        result = result @ _transform_item(name, args, text)
    return result


def _transform_item(name: str, args: list[float], text: str) -> Affine:
    n = len(args)
    if name == "matrix" and n == 6:
        return Affine(*args)
    if name == "translate" and n in (1, 2):
        return Affine(e=args[0], f=args[1] if n == 2 else 0.0)
    if name == "scale" and n in (1, 2):
        return Affine.scale(args[0], args[1] if n == 2 else None)
    if name == "rotate" and n in (1, 3):
        r = math.radians(args[0])
        rot = Affine(math.cos(r), math.sin(r), -math.sin(r), math.cos(r))
        if n == 1:
            return rot
        cx, cy = args[1], args[2]
        return Affine(e=cx, f=cy) @ rot @ Affine(e=-cx, f=-cy)
    if name == "skewX" and n == 1:
        return Affine(c=math.tan(math.radians(args[0])))
    if name == "skewY" and n == 1:
        return Affine(b=math.tan(math.radians(args[0])))
    raise PointsError(f"bad SVG transform item {name}({', '.join(map(str, args))}) in {text!r}")


# --------------------------------------------------------------------------- path data

_PATH_TOKEN = re.compile(rf"([MmLlHhVvCcSsQqTtAaZz])|({_NUMBER})")
_ARGS_PER_COMMAND = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "A": 7, "Z": 0}


@dataclass(frozen=True)
class PathEnds:
    """First point, last point (in the path's local units) and whether the path is closed."""

    start: tuple[float, float]
    end: tuple[float, float]
    closed: bool


def path_ends(d: str) -> PathEnds:
    """Start and end points of SVG path data. Only segment end points matter (curves included)."""
    tokens = _PATH_TOKEN.findall(d or "")
    if not tokens:
        raise PointsError("empty path")
    if _PATH_TOKEN.sub("", d).replace(",", " ").strip():
        raise PointsError(f"unreadable path data {d!r}")
    x = y = 0.0
    sub_start = (0.0, 0.0)
    start: tuple[float, float] | None = None
    closed = False
    cmd = ""
    i = 0
    while i < len(tokens):
        letter, _ = tokens[i]
        if letter:
            cmd = letter
            i += 1
            if cmd in "Zz":
                x, y = sub_start
                closed = True
                continue
        elif not cmd:
            raise PointsError(f"path data must start with a command: {d!r}")
        upper = cmd.upper()
        count = _ARGS_PER_COMMAND[upper]
        args = []
        for _ in range(count):
            if i >= len(tokens) or tokens[i][0]:
                raise PointsError(f"path command {cmd} is missing numbers in {d!r}")
            args.append(float(tokens[i][1]))
            i += 1
        rel = cmd.islower()
        if upper == "H":
            x = args[0] + (x if rel else 0.0)
        elif upper == "V":
            y = args[0] + (y if rel else 0.0)
        else:
            nx, ny = args[-2], args[-1]
            x, y = (x + nx, y + ny) if rel else (nx, ny)
        if upper == "M":
            sub_start = (x, y)
            if start is None:
                start = (x, y)
            cmd = "l" if rel else "L"  # further pairs after M are line-to
        else:
            closed = False
        if start is None:
            raise PointsError(f"path data must start with a move-to: {d!r}")
    if start is None:
        raise PointsError(f"path without points: {d!r}")
    return PathEnds(start, (x, y), closed)


# --------------------------------------------------------------------------- shapes -> drag points


@dataclass(frozen=True)
class DragPoint:
    """One handle -> target pair in some pixel space, with the name of the shape it came from."""

    handle: tuple[float, float]
    target: tuple[float, float]
    name: str


_PREFIX = re.compile(r"[\s<]([A-Za-z_][\w.-]*):[A-Za-z_][\w.-]*\s*=")
_SVG_NS = "http://www.w3.org/2000/svg"


def _parse_element(svg: str) -> ET.Element:
    """Parse one shape's `toSvg()` text. Krita writes undeclared prefixes (sodipodi:, krita:)."""
    prefixes = sorted(set(_PREFIX.findall(svg)) - {"xmlns", "xml"})
    decls = " ".join(f'xmlns:{p}="urn:x-prefix:{p}"' for p in prefixes)
    body = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>", "", svg)
    try:
        root = ET.fromstring(f'<wrapper xmlns="{_SVG_NS}" {decls}>{body}</wrapper>')
    except ET.ParseError as e:
        raise PointsError(f"cannot read the shape's SVG ({e})") from e
    elements = [el for el in root if _local(el.tag) != "defs"]
    if len(elements) != 1:
        raise PointsError(f"expected one SVG element per shape, found {len(elements)}")
    return elements[0]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _element_paths(el: ET.Element, parent: Affine, top_level_transform: Affine | None, name: str):
    """Yield (name, transform to pt, PathEnds) for every path under `el`."""
    tag = _local(el.tag)
    if el.get("visibility") == "hidden" or el.get("display") == "none":
        return
    own = top_level_transform if top_level_transform is not None else parse_transform(el.get("transform"))
    transform = parent @ own
    label = el.get("id") or name
    if tag == "g":
        children = [c for c in el if _local(c.tag) not in ("defs", "title", "desc")]
        for index, child in enumerate(children):
            yield from _element_paths(child, transform, None, f"{label}/{index}")
    elif tag == "path":
        try:
            ends = path_ends(el.get("d", ""))
        except PointsError as e:
            raise PointsError(f"shape '{label}': {e}") from e
        yield label, transform, ends
    elif tag == "line":
        coords = [float(el.get(k, "0")) for k in ("x1", "y1", "x2", "y2")]
        yield label, transform, PathEnds((coords[0], coords[1]), (coords[2], coords[3]), False)
    elif tag in ("polyline",):
        nums = [float(v) for v in _NUMBER_RE.findall(el.get("points", ""))]
        if len(nums) < 4:
            raise PointsError(f"shape '{label}': a polyline needs at least two points")
        yield label, transform, PathEnds((nums[0], nums[1]), (nums[-2], nums[-1]), False)
    else:
        raise PointsError(
            f"shape '{label}' is a {tag}, not a line: draw lines or arrows from handle to target "
            "on the points layer (rectangles, ellipses and text cannot be drag points)"
        )


def shape_drag_points(
    svg: str, transform: Affine | None, resolution: float, name: str = "shape"
) -> list[DragPoint]:
    """Drag points (in canvas px) from one top-level shape.

    `svg` is `Shape.toSvg()`; `transform` is `Shape.transformation()` (pt) for the top-level
    element, or None to use the element's own `transform` attribute; `resolution` is the
    document's dpi. Every path inside a group becomes its own pair: first point = handle,
    last point = target.
    """
    if resolution <= 0:
        raise PointsError(f"document resolution must be positive, got {resolution}")
    to_px = Affine.scale(resolution / 72.0)
    points = []
    for label, t, ends in _element_paths(_parse_element(svg), to_px, transform, name):
        if ends.closed:
            raise PointsError(
                f"shape '{label}' is a closed path: draw an open line or arrow from the handle "
                "(first point) to the target (last point)"
            )
        points.append(DragPoint(t.map(*ends.start), t.map(*ends.end), label))
    return points


def collect_drag_points(
    shapes: Iterable[tuple[str, Affine | None, str]], resolution: float
) -> list[DragPoint]:
    """All drag points from (svg, transform, name) of the top-level shapes; an error if none."""
    points: list[DragPoint] = []
    for svg, transform, name in shapes:
        points.extend(shape_drag_points(svg, transform, resolution, name))
    if not points:
        raise PointsError(
            "no drag points: draw at least one line or arrow on the 'Drag points' layer "
            "(its first point is the handle, its last point the target)"
        )
    return points


# --------------------------------------------------------------------------- canvas <-> model


@dataclass(frozen=True)
class Region:
    """The square of the canvas (canvas px, integer) that shows the model's image."""

    x: int
    y: int
    size: int

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"region size must be positive, got {self.size}")

    @staticmethod
    def fitted(width: int, height: int) -> Region:
        """The default region: centred and as large as fits in the canvas."""
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas size must be positive, got {width}x{height}")
        size = min(width, height)
        return Region((width - size) // 2, (height - size) // 2, size)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.size]

    @staticmethod
    def from_list(values: Sequence[int]) -> Region:
        if len(values) != 3:
            raise ValueError(f"a region is [x, y, size], got {values!r}")
        return Region(int(values[0]), int(values[1]), int(values[2]))

    def contains_canvas(self, px: tuple[float, float]) -> bool:
        return self.x <= px[0] <= self.x + self.size and self.y <= px[1] <= self.y + self.size


def canvas_to_model(px: tuple[float, float], region: Region, resolution: int) -> tuple[float, float]:
    """Continuous canvas px -> model px (pixel-centre convention) through the square region."""
    s = resolution / region.size
    return ((px[0] - region.x) * s - 0.5, (px[1] - region.y) * s - 0.5)


def model_to_canvas(pt: tuple[float, float], region: Region, resolution: int) -> tuple[float, float]:
    """Inverse of canvas_to_model."""
    s = region.size / resolution
    return ((pt[0] + 0.5) * s + region.x, (pt[1] + 0.5) * s + region.y)


def points_to_model(
    points: Sequence[DragPoint], region: Region, resolution: int
) -> tuple[list[list[float]], list[list[float]]]:
    """(handles, targets) in model px; a clear error for any point outside the image region."""
    handles, targets = [], []
    for p in points:
        for which, px in (("handle", p.handle), ("target", p.target)):
            if not region.contains_canvas(px):
                raise PointsError(
                    f"the {which} of '{p.name}' at ({px[0]:.0f}, {px[1]:.0f}) px lies outside the image "
                    f"(x {region.x}..{region.x + region.size}, y {region.y}..{region.y + region.size}); "
                    "move it onto the generated image"
                )
        handles.append(_clamped(canvas_to_model(p.handle, region, resolution), resolution))
        targets.append(_clamped(canvas_to_model(p.target, region, resolution), resolution))
    return handles, targets


def _clamped(pt: tuple[float, float], resolution: int) -> list[float]:
    """Keep points drawn on the region's outer half-pixel border inside the model's pixel grid."""
    hi = resolution - 1.0
    return [min(max(pt[0], 0.0), hi), min(max(pt[1], 0.0), hi)]
