import os

import numpy as np
import pytest
from PIL import Image

from caffeinit.data.images import ImageDecodeError, decode_image, is_truncated_jpeg, read_image


def write_rgb_png(path, rgb):
    Image.fromarray(np.asarray(rgb, np.uint8), "RGB").save(path)
    return str(path)


def test_colour_images_come_out_bgr_and_grey_has_one_channel(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red, as PIL writes it
    rgb[..., 2] = 10
    path = write_rgb_png(tmp_path / "red.png", rgb)
    bgr = read_image(path)
    assert bgr.shape == (2, 3, 3)
    np.testing.assert_array_equal(bgr[0, 0], [10, 0, 200])
    grey = read_image(path, color=False)
    assert grey.shape == (2, 3, 1)
    # OpenCV's grey conversion: 0.299 R + 0.587 G + 0.114 B, rounded
    assert abs(int(grey[0, 0, 0]) - round(0.299 * 200 + 0.114 * 10)) <= 1


def test_resize_is_opencv_bilinear_not_antialiased(tmp_path):
    row = [0, 10, 30, 60, 100, 150, 210, 250]
    rgb = np.repeat(np.array(row, np.uint8)[None, :, None], 3, axis=2).repeat(2, axis=0)
    path = write_rgb_png(tmp_path / "ramp.png", rgb)
    # shrinking 8 -> 2: destination pixel x samples source x = (x + 0.5) * 4 - 0.5, i.e. 1.5 and 5.5
    small = read_image(path, size=(2, 2))
    np.testing.assert_array_equal(small[:, :, 0], [[20, 180], [20, 180]])
    # growing 2 -> 4: source positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    path2 = write_rgb_png(tmp_path / "two.png", np.array([[[0] * 3, [100] * 3]], np.uint8))
    big = read_image(path2, size=(1, 4))
    np.testing.assert_array_equal(big[0, :, 1], [0, 25, 75, 100])


def test_native_decode_keeps_alpha_and_forced_modes(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 50, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert decode_image(data, "native").shape == (2, 2, 4)
    assert decode_image(data, "color").shape == (2, 2, 3)
    assert decode_image(data, "gray").shape == (2, 2, 1)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        read_image(str(tmp_path / "nope.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        read_image(str(tmp_path / "bad.jpg"))
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_image(b"junk")


def test_a_cut_off_jpeg_is_told_from_whole_ones(tmp_path):
    import cv2
    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), (5, 5), 0)
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), picture)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:len(data) * 2 // 3])
    trailer = tmp_path / "trailer.jpg"  # data after the end marker (a motion photo's video): whole all the same
    trailer.write_bytes(data + bytes(rng.integers(0, 255, 5000, dtype=np.uint8)))
    png = tmp_path / "p.png"
    cv2.imwrite(str(png), picture)
    assert is_truncated_jpeg(str(cut))
    assert not any(is_truncated_jpeg(str(p)) for p in (whole, trailer, png, tmp_path / "missing.jpg"))
    # OpenCV decodes the part that is there, as Caffe's cv::imread: it is used, not refused
    assert read_image(str(cut)).shape == (64, 80, 3)


def test_a_path_that_is_no_regular_file_says_what_it_is(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    for name, message in (("folder.jpg", "is a directory"), ("pipe.jpg", "is not a regular file"),
                          ("dangling.jpg", "is a broken symbolic link"), ("missing.jpg", "no such file")):
        with pytest.raises(ImageDecodeError) as e:
            read_image(str(tmp_path / name))  # a fifo is not opened: that would wait for a writer
        assert str(e.value) == message, name
