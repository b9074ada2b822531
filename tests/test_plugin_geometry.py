"""Shape -> canvas px -> model px mapping (plugin_krita.geometry).

The SVG strings are what Krita 5.1.5's `Shape.toSvg()` really returned for
`addShapesFromSvg('<path d="M 10 20 C 30 40 50 60 100 120"/>')` and a nested group, at 72
and 300 dpi (docs/krita-notes B3 and our own probe): the mapping must give back the input.
"""

from __future__ import annotations

import math

import pytest

from plugin_krita.geometry import (
    Affine,
    PointsError,
    Region,
    canvas_to_model,
    collect_drag_points,
    model_to_canvas,
    parse_transform,
    path_ends,
    points_to_model,
    shape_drag_points,
)

PATH_300 = (
    '<path id="a1" transform="matrix(0.24 0 0 0.24 2.4 4.8)" fill="none" stroke="#ff0000" stroke-width="3" '
    'stroke-linecap="butt" stroke-linejoin="miter" stroke-miterlimit="2" d="M0 0C20 20 40 40 90 100" '
    'sodipodi:nodetypes="cc"/>'
)
PATH_72 = (
    '<path id="p" transform="translate(10, 20)" fill="none" stroke="#000000" d="M0 0L90 100" '
    'marker-end="url(#lineMarker0)" sodipodi:nodetypes="cc"/>'
)
GROUP_300 = """<g id="g1" transform="matrix(0.24 0 0 0.24 1.2 1.44)" fill="none">
  <path id="c1" transform="translate(1, 2)" stroke-width="0" d="M0 0L2 2" sodipodi:nodetypes="cc"/>
  <g id="group0" transform="matrix(2 0 0 2 0 0)" fill="none">
   <path id="c2" transform="translate(1, 2)" stroke="#000000" d="M0 0L29 38" sodipodi:nodetypes="cc"/>
  </g>
 </g>"""
RECT_300 = '<rect id="r" transform="matrix(0.24 0 0 0.24 0.24 0.24)" width="10" height="10"/>'


def test_path_at_300_dpi_maps_back_to_input_pixels():
    t = Affine(0.24, 0, 0, 0.24, 2.4, 4.8)  # what Shape.transformation() returned
    points = shape_drag_points(PATH_300, t, 300)
    assert len(points) == 1
    assert points[0].handle == pytest.approx((10, 20))
    assert points[0].target == pytest.approx((100, 120))
    assert points[0].name == "a1"


def test_path_at_72_dpi_uses_translation():
    points = shape_drag_points(PATH_72, Affine(e=10, f=20), 72)
    assert points[0].handle == pytest.approx((10, 20))
    assert points[0].target == pytest.approx((100, 120))


def test_transform_attribute_equals_transformation():
    # transform=None: the element's own attribute is used, giving the same result
    assert shape_drag_points(PATH_300, None, 300)[0].target == pytest.approx((100, 120))


def test_position_is_not_used_a_wrong_transform_gives_wrong_points():
    # Shape.position() returned (-31.8, -33.2) pt here; using it as a translation would be wrong
    wrong = shape_drag_points(PATH_300, Affine(0.24, 0, 0, 0.24, -31.8, -33.2), 300)[0]
    assert wrong.handle != pytest.approx((10, 20), abs=1)


def test_group_children_compose_their_transforms():
    points = shape_drag_points(GROUP_300, Affine(0.24, 0, 0, 0.24, 1.2, 1.44), 300, "g")
    assert [p.name for p in points] == ["c1", "c2"]
    assert points[0].handle == pytest.approx((6, 8))
    assert points[0].target == pytest.approx((8, 10))
    assert points[1].handle == pytest.approx((7, 10))
    assert points[1].target == pytest.approx((65, 86))


def test_several_shapes_and_hidden_ones():
    hidden = PATH_72.replace('id="p"', 'id="h" visibility="hidden"')
    points = collect_drag_points([(PATH_72, None, "p"), (hidden, None, "h"), (PATH_300, None, "a")], 72)
    assert [p.name for p in points] == ["p", "a1"]
    # the 300 dpi shape read at 72 dpi is 72/300 the size: the resolution really matters
    assert points[1].target == pytest.approx((24, 28.8))


def test_zero_paths_is_a_clear_error():
    with pytest.raises(PointsError, match="no drag points"):
        collect_drag_points([], 72)


def test_rect_and_closed_paths_are_rejected_with_their_name():
    with pytest.raises(PointsError, match="'r' is a rect"):
        shape_drag_points(RECT_300, None, 300)
    with pytest.raises(PointsError, match="'z' is a closed path"):
        shape_drag_points('<path id="z" d="M0 0L10 0L10 10Z"/>', None, 72)


def test_path_ends_relative_commands_and_curves():
    assert path_ends("m 1 2 l 3 4 h 5 v -6 c 1 1 2 2 3 3").end == (12.0, 3.0)
    assert path_ends("M1,2 3,4 5,6").end == (5.0, 6.0)  # implicit line-to after move-to
    assert path_ends("M 0 0 Q 5 5 10 0 T 20 0 S 25 5 30 0 A 5 5 0 0 1 40 0").end == (40.0, 0.0)
    assert path_ends("M1e1 -2.5E-1L.5 .5").start == (10.0, -0.25)
    for bad in ("", "L 1 2", "M 1", "M 1 2 L 3 x"):
        with pytest.raises(PointsError):
            path_ends(bad)


def test_parse_transform_lists_and_rotation():
    t = parse_transform("translate(10) scale(2, 3)")
    assert t.map(1, 1) == (12.0, 3.0)
    r = parse_transform("rotate(90, 10, 10)")
    assert r.map(20, 10) == pytest.approx((10, 20))
    assert parse_transform("skewX(45)").map(0, 1) == pytest.approx((1, 1))
    with pytest.raises(PointsError):
        parse_transform("perspective(3)")
    with pytest.raises(PointsError):
        parse_transform("matrix(1 2 3)")


def test_region_fits_and_centres_in_canvas():
    assert Region.fitted(512, 400) == Region(56, 0, 400)
    assert Region.fitted(256, 256) == Region(0, 0, 256)
    assert Region.fitted(300, 500) == Region(0, 100, 300)
    with pytest.raises(ValueError):
        Region(0, 0, 0)


def test_canvas_to_model_scales_through_the_region():
    region = Region(56, 0, 400)
    # the centre of the region is the centre of the model image
    assert canvas_to_model((256, 200), region, 256) == pytest.approx((127.5, 127.5))
    # a canvas pixel centre of the region's first pixel maps inside model pixel 0
    x, y = canvas_to_model((56.5, 0.5), region, 256)
    assert -0.5 < x < 0.5 and -0.5 < y < 0.5
    for pt in ((0, 0), (255, 255), (13.25, 200.5)):
        assert canvas_to_model(model_to_canvas(pt, region, 256), region, 256) == pytest.approx(pt)


def test_identity_region_is_half_pixel_shift_only():
    region = Region(0, 0, 256)
    assert canvas_to_model((10.5, 20.5), region, 256) == pytest.approx((10, 20))


def test_points_to_model_checks_the_region():
    region = Region(56, 0, 400)
    points = shape_drag_points(PATH_72.replace("translate(10, 20)", "translate(100, 20)"), None, 72)
    handles, targets = points_to_model(points, region, 256)
    s = 256 / 400
    assert handles == [pytest.approx([(100 - 56) * s - 0.5, 20 * s - 0.5])]
    assert targets == [pytest.approx([(190 - 56) * s - 0.5, 120 * s - 0.5])]
    outside = shape_drag_points(PATH_72, None, 72)  # handle at x=10 < 56
    with pytest.raises(PointsError, match="handle of 'p' at \\(10, 20\\) px lies outside the image"):
        points_to_model(outside, region, 256)


def test_points_on_the_border_are_clamped_into_the_model_grid():
    region = Region(0, 0, 100)
    pts = shape_drag_points('<path id="e" d="M0 0L100 100"/>', None, 72)
    handles, targets = points_to_model(pts, region, 50)
    assert handles == [[0.0, 0.0]] and targets == [[49.0, 49.0]]
    assert all(math.isfinite(v) for v in handles[0] + targets[0])


def test_undeclared_prefixes_and_bad_xml():
    svg = '<path id="k" krita:foo="1" sodipodi:nodetypes="cc" d="M 1 1 L 2 2"/>'
    assert shape_drag_points(svg, None, 72)[0].target == (2.0, 2.0)
    with pytest.raises(PointsError, match="cannot read"):
        shape_drag_points("<path d='M 1 1", None, 72)
