"""Image decoding and resizing exactly as Caffe does it: OpenCV ``imread``/``imdecode`` and ``resize`` INTER_LINEAR.

Caffe's ``ReadImageToCVMat`` (util/io.cpp) reads with ``cv::imread`` in colour (3-channel BGR) or greyscale and,
when a new size is set, warps to exactly that size with ``cv::resize``'s default bilinear interpolation. PIL's
bilinear resize antialiases when shrinking and gives other pixels, so OpenCV is used throughout.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".jpe")


class ImageDecodeError(Exception):
    """An image that cannot be read or decoded; the caller adds the file and line to the message."""


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: str, color: bool = True, size: tuple[int, int] | None = None) -> np.ndarray:
    """``path`` as an H x W x C uint8 array (BGR when ``color``, C = 1 otherwise), warped to ``size`` = (H, W).

    Caffe's ReadImageToCVMat: cv::imread (IMREAD_COLOR / IMREAD_GRAYSCALE), then cv::resize INTER_LINEAR.
    """
    if not os.path.isfile(path):
        raise ImageDecodeError(why_not_a_file(path))
    image = cv2.imread(path, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ImageDecodeError("OpenCV cannot decode it")
    return _finish(image, size)


def why_not_a_file(path: str) -> str:
    """Why ``path`` (not a regular file) cannot be read as an image."""
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return "is not a regular file"
    if os.path.lexists(path):
        return "is a broken symbolic link"
    return "no such file"


def is_truncated_jpeg(path: str) -> bool:
    """Whether ``path`` is a JPEG whose data end before its end-of-image marker (a cut-off download or copy).
    OpenCV then decodes what is there and fills the rest grey, as Caffe's cv::imread does, with only libjpeg's
    nameless "Premature end of JPEG file" on stderr. Scan data never hold the FF D9 marker, so a file without one
    after its first start-of-scan is cut off (an embedded thumbnail's own scan can only hide a cut, never invent one).
    """
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return False
            f.seek(-min(16, f.seek(0, os.SEEK_END)), os.SEEK_END)
            if b"\xff\xd9" in f.read():  # the usual end (a few padding bytes at most): no need to read it all
                return False
            f.seek(0)
            data = f.read()
    except OSError:
        return False
    scan = data.find(b"\xff\xda")
    return scan >= 0 and data.find(b"\xff\xd9", scan) < 0


def decode_image(data: bytes, mode: str = "native", size: tuple[int, int] | None = None) -> np.ndarray:
    """Encoded bytes (an encoded Datum) as H x W x C; ``mode`` is 'native' (Caffe's DecodeDatumToCVMatNative,
    IMREAD_UNCHANGED), 'color' or 'gray' (force_color / force_gray)."""
    flags = {"native": cv2.IMREAD_UNCHANGED, "color": cv2.IMREAD_COLOR, "gray": cv2.IMREAD_GRAYSCALE}[mode]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ImageDecodeError("OpenCV cannot decode it")
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"decoded to {image.dtype}, Caffe's transformer takes 8-bit images")
    return _finish(image, size)


def _finish(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is not None and (image.shape[0], image.shape[1]) != tuple(size):
        image = cv2.resize(image, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[:, :, None]
    return image
