"""Pictures: intensity windowing, mid-slices, frame strips with the change map, PNG/GIF writing, labelled grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageSequence

from monai_pie.visualize import frame_strip, labelled_grid, mid_slices, save_gif, save_png, to_uint8


def test_to_uint8_windows_and_clips():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    out = to_uint8(x, 0.0, 1.0)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 127, 255, 255]


def test_to_uint8_window_is_shifted_and_scaled():
    out = to_uint8(np.array([10.0, 15.0, 20.0, 30.0]), 10.0, 20.0)
    assert out.tolist() == [0, 127, 255, 255]


def test_to_uint8_empty_window_does_not_divide_by_zero():
    with np.errstate(all="raise"):
        out = to_uint8(np.array([0.0, 1.0, 2.0]), 1.0, 1.0)
    assert out.tolist() == [0, 0, 255]


def test_mid_slices_shapes_of_an_xyz_volume():
    vol = np.zeros((4, 5, 6), np.float32)
    sag, cor, axi = mid_slices(vol)
    assert sag.shape == (6, 5)  # (Z, Y)
    assert cor.shape == (6, 4)  # (Z, X)
    assert axi.shape == (5, 4)  # (Y, X)


def test_mid_slices_go_through_the_centre_with_superior_and_anterior_up():
    x, y, z = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    sag, cor, axi = mid_slices((100 * x + 10 * y + z).astype(np.float32))
    assert np.all(sag // 100 == 2) and np.all(cor // 10 % 10 == 2) and np.all(axi % 10 == 3)  # shape // 2
    assert np.all(sag[0] % 10 == 5) and np.all(sag[-1] % 10 == 0)  # superior (high z) on top
    assert np.all(axi[0] // 10 % 10 == 4) and np.all(axi[-1] // 10 % 10 == 0)  # anterior (high y) on top


def test_mid_slices_explicit_centre():
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    sag, cor, axi = mid_slices(vol, center=(0, 1, 5))
    np.testing.assert_array_equal(sag, np.rot90(vol[0]))
    np.testing.assert_array_equal(cor, np.rot90(vol[:, 1, :]))
    np.testing.assert_array_equal(axi, np.rot90(vol[:, :, 5]))


def _volumes(n: int = 3, size: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, (size, size, size)).astype(np.float32)
    return [base + 0.1 * i for i in range(n)]


@pytest.mark.parametrize("diff", [True, False])
def test_frame_strip_shape_for_3d_volumes(diff):
    pic = frame_strip(_volumes(3), labels=["a", "b", "c"], height=32, diff=diff)
    assert pic.dtype == np.uint8
    # one row per frame, three mid-slices per row (cubes: square tiles), doubled by the change tile
    assert pic.shape == (3 * 32, 3 * 32 * (2 if diff else 1), 3)


def test_frame_strip_shape_for_2d_images():
    rng = np.random.default_rng(1)
    frames = [rng.uniform(size=(20, 10)).astype(np.float32) for _ in range(3)]
    pic = frame_strip(frames, height=40)
    assert pic.dtype == np.uint8
    assert pic.shape == (3 * 40, 2 * 20, 3)  # tile width keeps the aspect ratio: 10 * 40 / 20


def test_frame_strip_without_diff_is_gray():
    pic = frame_strip(_volumes(2), height=16, diff=False)
    assert np.array_equal(pic[..., 0], pic[..., 1]) and np.array_equal(pic[..., 1], pic[..., 2])


def test_frame_strip_change_tile_is_red_where_brighter_and_blue_where_darker():
    rng = np.random.default_rng(2)
    first = rng.uniform(0.2, 0.8, (32, 32)).astype(np.float32)
    changed = first.copy()
    changed[4:12, 4:12] += 0.5  # brighter patch, centre (8, 8)
    changed[20:28, 20:28] -= 0.5  # darker patch, centre (24, 24)
    h = 64  # 32 -> 64: scale 2
    pic = frame_strip([first, changed, changed], height=h, diff=True).astype(int)
    assert pic.shape == (3 * h, 2 * h, 3)

    def change_pixel(frame: int, r: int, c: int) -> np.ndarray:
        return pic[frame * h + 2 * r, h + 2 * c]  # the change tile sits right of the grey tile

    for frame in (1, 2):
        red, blue, still = change_pixel(frame, 8, 8), change_pixel(frame, 24, 24), change_pixel(frame, 16, 4)
        assert red[0] >= 250 and red[1] <= 5 and red[2] <= 5, red
        assert blue[2] >= 250 and blue[0] <= 5 and blue[1] <= 5, blue
        assert abs(still[0] - still[2]) <= 6, still  # unchanged: (almost) grey
    for r, c in [(8, 8), (24, 24), (16, 4)]:
        px = change_pixel(0, r, c)
        assert abs(px[0] - px[2]) <= 6, px  # frame 0 has no change from itself
    grey = pic[h + 16, 16]  # frame 1's grey tile at (8, 8) shows the image, not the tint
    assert grey[0] == grey[1] == grey[2]


def test_frame_strip_labels_are_drawn():
    frames = [np.zeros((16, 16), np.float32)] * 2
    plain = frame_strip(frames, height=32, diff=False)
    labelled = frame_strip(frames, labels=["first", "second"], height=32, diff=False)
    assert plain.shape == labelled.shape
    yellow = (labelled[..., 0] > 200) & (labelled[..., 1] > 200) & (labelled[..., 2] < 50)
    assert yellow[:32].any() and yellow[32:].any()
    assert not ((plain[..., 0] > 200) & (plain[..., 2] < 50)).any()


def test_save_png_writes_a_readable_file_and_no_temporary(tmp_path):
    picture = np.zeros((10, 12, 3), np.uint8)
    picture[2:5, 3:7] = (255, 0, 128)
    out = save_png(picture, tmp_path / "sub" / "strip.png")
    assert out == tmp_path / "sub" / "strip.png"
    with Image.open(out) as img:
        assert img.format == "PNG"
        np.testing.assert_array_equal(np.asarray(img), picture)
    assert [p.name for p in out.parent.iterdir()] == ["strip.png"]


def test_save_png_overwrites(tmp_path):
    path = tmp_path / "a.png"
    save_png(np.zeros((4, 4), np.uint8), path)
    save_png(np.full((6, 5), 200, np.uint8), path)
    with Image.open(path) as img:
        assert img.size == (5, 6)
        assert np.asarray(img).min() == 200
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_save_gif_has_one_frame_per_volume_and_no_temporary(tmp_path):
    vols = _volumes(4, size=8)
    out = save_gif(vols, tmp_path / "progression.gif", labels=["0", "1", "2", "3"], height=20)
    with Image.open(out) as img:
        assert img.format == "GIF"
        assert img.size == (3 * 20, 20)  # three mid-slices of a cube
        assert sum(1 for _ in ImageSequence.Iterator(img)) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["progression.gif"]


def test_save_gif_of_2d_images(tmp_path):
    ramp = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (8, 1))
    frames = [ramp, ramp[:, ::-1], ramp.T[:8, :8].repeat(2, axis=1)]  # distinct pictures (GIF merges repeats)
    out = save_gif(frames, tmp_path / "g.gif", height=8)
    with Image.open(out) as img:
        assert img.size == (16, 8)
        assert sum(1 for _ in ImageSequence.Iterator(img)) == 3


def test_labelled_grid_pads_short_rows_with_black():
    ones = np.ones((10, 10), np.float32)
    grid = labelled_grid([[ones, ones, ones], [ones]])
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * 96, 3 * 96, 3)
    assert np.all(grid[:96] == 255)  # full first row
    assert np.all(grid[96:, :96] == 255)
    assert np.all(grid[96:, 96:] == 0)  # padding


def test_labelled_grid_one_row_per_group_with_custom_tile_and_window():
    img = np.full((5, 7), 50.0, np.float32)
    grid = labelled_grid([[img], [img], [img, img]], height=20, lo=0.0, hi=100.0)
    assert grid.shape == (3 * 20, 2 * 20, 3)
    assert np.all(grid[:20, :20] == 127)
    assert np.all(grid[:40, 20:] == 0)


def test_labelled_grid_captions_only_the_first_tile_of_each_row():
    zeros = np.zeros((8, 8), np.float32)
    grid = labelled_grid([[zeros, zeros], [zeros, zeros]], labels=["CN", "AD"])
    yellow = (grid[..., 0] > 100) & (grid[..., 1] > 100) & (grid[..., 2] == 0)
    assert yellow[:96, :96].any() and yellow[96:, :96].any()
    assert not grid[:, 96:].any()
