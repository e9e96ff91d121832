"""Caffe's DataTransformer (data_transformer.cpp): crop, mirror, mean and scale, plus the deploy preprocessing.

Rules (data_transformer.cpp, BVLC 9b891540): ``(pixel - mean) * scale``; the mean image of ``mean_file`` is indexed
at the *uncropped* position (crop taken from image and mean together); ``mean_value`` is one value or one per
channel; crop offsets are random in TRAIN and centred (integer division) in TEST; mirror is random in *both*
phases when set. Randomness comes from a numpy Generator the caller derives from its seed (Caffe's own RNG
stream cannot be reproduced, only its distribution).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2

DEPLOY_MEAN = (104.0, 117.0, 123.0)  # the reference implementation's BGR mean


def read_mean_file(path: str) -> np.ndarray:
    """A mean ``.binaryproto`` (BlobProto, 1 x C x H x W) as a C x H x W float32 array."""
    from caffeinit.weights import count_non_finite, read_mean_binaryproto
    mean = np.asarray(read_mean_binaryproto(path), np.float32)
    bad = count_non_finite(mean)
    if bad:
        raise CaffeinitError(f"{path}: the mean image has {bad} non-finite values (NaN or inf)")
    return mean


@dataclass
class Preprocess:
    """How raw pixels become a net input, as Caffe's DataTransformer does it (see module docstring).

    ``resize`` (H, W) warps decoded images with OpenCV INTER_LINEAR first (ImageData's new_height/new_width, or the
    deploy default); it does not apply to raw Datums.
    """
    phase: int = caffe_pb2.TEST
    resize: tuple[int, int] | None = None
    crop_size: int = 0
    mirror: bool = False
    mean_values: tuple[float, ...] = ()
    mean_image: np.ndarray | None = field(default=None, repr=False)
    mean_file: str | None = None
    scale: float = 1.0
    force_color: bool = False
    force_gray: bool = False

    def __post_init__(self):
        if self.mean_image is not None and self.mean_values:
            raise CaffeinitError("cannot use a mean file and mean values at the same time")
        if self.force_color and self.force_gray:
            raise CaffeinitError("cannot set both force_color and force_gray")
        if self.crop_size < 0:
            raise CaffeinitError(f"crop size must be positive, got {self.crop_size}")

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_transform_param(cls, tp: caffe_pb2.TransformationParameter, phase: int = caffe_pb2.TEST,
                             resize: tuple[int, int] | None = None, mean_file: str | None = None,
                             where: str = "") -> "Preprocess":
        """From a layer's ``transform_param``; ``mean_file`` overrides the path it names (e.g. resolved elsewhere).
        ``where`` (the layer) prefixes errors."""
        prefix = f"{where}: transform_param" if where else "transform_param"
        path = mean_file or (tp.mean_file if tp.HasField("mean_file") else None)
        if path and len(tp.mean_value):
            raise CaffeinitError(f"{prefix}: cannot specify mean_file and mean_value at the same time")
        mean_image = None
        if path:
            try:
                mean_image = read_mean_file(path)
            except CaffeinitError as e:
                if mean_file:  # the caller's path (--mean-file in place of the one the layer names)
                    raise CaffeinitError(f"--mean-file {e} (in place of the mean_file of "
                                         f"{where or 'the transform_param'})") from None
                # the path is the prototxt's: say whose, and how Caffe resolves it
                raise CaffeinitError(f"{prefix} mean_file: {e} (Caffe reads a relative path from the folder it "
                                     "runs in)") from None
        for name, values in (("scale", [tp.scale]), ("mean_value", tp.mean_value)):
            bad = next((v for v in values if not _finite_float32(v)), None)
            if bad is not None:
                raise CaffeinitError(f"{prefix} {name}: {bad:g} is not a finite number")
        return cls(phase=phase, resize=resize, crop_size=int(tp.crop_size), mirror=bool(tp.mirror),
                   mean_values=tuple(float(v) for v in tp.mean_value),
                   mean_image=mean_image, mean_file=path, scale=float(tp.scale),
                   force_color=bool(tp.force_color), force_gray=bool(tp.force_gray))

    @classmethod
    def from_flags(cls, input_shape, resize=None, crop=None, mean_value=None, mean_file=None, scale=None,
                   gray=False, phase: int = caffe_pb2.TEST) -> "Preprocess":
        """For a deploy net's Input of shape (N, C, H, W): the reference default (warp to H x W, BGR, mean
        104,117,123, scale 1), overridden by the CLI flags ``--resize H,W --crop N --mean-value B,G,R
        --mean-file F --scale S --gray`` (strings as typed, or already parsed values).

        With ``--crop`` and no ``--resize`` images keep their own size before the crop.
        """
        resize = parse_ints(resize, "--resize", 2) if resize is not None else None
        crop = parse_ints(crop, "--crop", 1)[0] if crop is not None else 0
        if resize is None and not crop:
            if len(input_shape) != 4:
                raise CaffeinitError(f"the net's input has shape {tuple(input_shape)}, not N x C x H x W: "
                                     "images cannot feed it")
            resize = (int(input_shape[2]), int(input_shape[3]))
        if mean_file is not None and mean_value is not None:
            raise CaffeinitError("--mean-file and --mean-value cannot be used together")
        if mean_file is not None:
            means, image = (), read_mean_file(os.fspath(mean_file))
        else:
            means = parse_mean_values(mean_value) if mean_value is not None else DEPLOY_MEAN
            image = None
            if gray and mean_value is None:
                means = (float(np.mean(DEPLOY_MEAN)),)
        scale = parse_scale(scale) if scale is not None else 1.0
        if image is not None and resize is not None and tuple(image.shape[1:]) != tuple(resize):
            raise CaffeinitError(f"--mean-file '{mean_file}' is {'x'.join(map(str, image.shape))} but images are "
                                 f"warped to {resize[0]}x{resize[1]}: Caffe needs them equal (use e.g. "
                                 f"--resize {image.shape[1]},{image.shape[2]} --crop N)")
        return cls(phase=phase, resize=resize, crop_size=crop, mirror=False, mean_values=tuple(means),
                   mean_image=image, mean_file=os.fspath(mean_file) if mean_file is not None else None,
                   scale=scale, force_gray=bool(gray))

    @classmethod
    def for_layer(cls, layer_param: caffe_pb2.LayerParameter, phase: int = caffe_pb2.TEST,
                  top_shape=None, mean_file: str | None = None) -> "Preprocess":
        """For ``--images`` replacing a net's own data layer: its ``transform_param``, images warped to the
        ImageData layer's new_height/new_width, else to the mean image's size (mean_file), else to the data top's
        H x W when there is no crop; with a crop and no mean file, images keep their own size. An ImageData layer's
        images are greyscale where its is_color is false. ``mean_file`` is where the mean file it names is."""
        tp = layer_param.transform_param
        resize = None
        ip = layer_param.image_data_param
        if layer_param.type == "ImageData" and ip.new_height > 0 and ip.new_width > 0:
            resize = (int(ip.new_height), int(ip.new_width))
        preprocess = cls.from_transform_param(tp, phase, mean_file=mean_file,
                                              where=f"layer '{layer_param.name}' ({layer_param.type})")
        if layer_param.type == "ImageData":  # it decodes as is_color says (force_color/force_gray are for Datums)
            preprocess.force_color, preprocess.force_gray = False, not ip.is_color
        if resize is None and preprocess.mean_image is not None:
            resize = tuple(int(d) for d in preprocess.mean_image.shape[1:])
        elif resize is None and not tp.crop_size and top_shape is not None and len(top_shape) == 4:
            resize = (int(top_shape[2]), int(top_shape[3]))
        preprocess.resize = resize
        return preprocess

    # -- use ------------------------------------------------------------------------------------------------
    @property
    def color(self) -> bool:
        return not self.force_gray

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """Caffe's InferBlobShape: the shape of one transformed item."""
        if self.crop_size:
            return channels, self.crop_size, self.crop_size
        return channels, height, width

    def describe(self) -> str:
        """One line for users."""
        parts = [f"warp to {self.resize[0]}x{self.resize[1]} (OpenCV bilinear)" if self.resize else "native size",
                 "greyscale" if self.force_gray else "BGR"]
        if self.crop_size:
            parts.append(f"{'random' if self.phase == caffe_pb2.TRAIN else 'centre'} crop {self.crop_size}")
        if self.mirror:
            parts.append("random mirror")
        if self.mean_image is not None:
            parts.append(f"subtract mean image {self.mean_file or ''} {'x'.join(map(str, self.mean_image.shape))}"
                         .replace("  ", " "))
        elif self.mean_values:
            parts.append("subtract mean (" + ",".join(f"{v:g}" for v in self.mean_values) + ")")
        parts.append(f"scale {self.scale:g}")
        return "preprocessing: " + ", ".join(parts)

    def apply(self, pixels: np.ndarray, rng: np.random.Generator, hwc: bool = True) -> np.ndarray:
        """Transform one item: H x W x C (decoded image, ``hwc``) or C x H x W (raw Datum) -> C x h x w float32.

        Raises ValueError with a short reason when the item does not fit (crop too big, mean of another size).
        """
        chw = pixels.transpose(2, 0, 1) if hwc else pixels
        channels, height, width = chw.shape
        do_mirror = self.mirror and bool(rng.integers(2))
        h_off = w_off = 0
        out_h, out_w = height, width
        if self.crop_size:
            if height < self.crop_size or width < self.crop_size:
                raise ValueError(f"{height}x{width} image is smaller than crop_size {self.crop_size}")
            out_h = out_w = self.crop_size
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(rng.integers(height - self.crop_size + 1))
                w_off = int(rng.integers(width - self.crop_size + 1))
            else:
                h_off = (height - self.crop_size) // 2
                w_off = (width - self.crop_size) // 2
        window = (slice(None), slice(h_off, h_off + out_h), slice(w_off, w_off + out_w))
        out = chw[window].astype(np.float32)
        if self.mean_image is not None:
            if self.mean_image.shape != (channels, height, width):
                raise ValueError(f"the mean image is {'x'.join(map(str, self.mean_image.shape))} but the item is "
                                 f"{channels}x{height}x{width} (uncropped); Caffe needs them equal")
            out -= self.mean_image[window]
        elif self.mean_values:
            if len(self.mean_values) not in (1, channels):
                raise ValueError(f"{len(self.mean_values)} mean values for {channels} channels "
                                 "(give 1 or one per channel)")
            out -= np.asarray(self.mean_values, np.float32).reshape(-1, 1, 1)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        if do_mirror:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)


def parse_ints(value, flag: str, count: int) -> tuple[int, ...]:
    items = _split(value)
    try:
        ints = tuple(int(v) for v in items)
    except ValueError:
        ints = ()
    if len(ints) != count or min(ints) <= 0:
        want = "H,W" if count == 2 else "a positive integer"
        raise CaffeinitError(f"{flag} expects {want}, got '{value}'")
    return ints


def parse_scale(value, flag: str = "--scale") -> float:
    """The one finite float32 number of ``--scale``."""
    floats = _parse_floats(value, flag)
    if len(floats) != 1:
        raise CaffeinitError(f"{flag} expects one number, got '{value}'")
    return floats[0]


def parse_mean_values(value, flag: str = "--mean-value") -> tuple[float, ...]:
    """The finite float32 numbers of ``--mean-value`` (one, or one per channel)."""
    return _parse_floats(value, flag)


def _finite_float32(value: float) -> bool:
    """Whether ``value`` is a number Caffe's float fields hold as a finite float32 (1e39 becomes inf there)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(value)))


def _parse_floats(value, flag: str) -> tuple[float, ...]:
    try:
        floats = tuple(float(v) for v in _split(value))
    except ValueError:
        floats = ()
    if not floats:
        raise CaffeinitError(f"{flag} expects numbers separated by commas, got '{value}'")
    bad = next((v for v in floats if not _finite_float32(v)), None)
    if bad is not None:
        raise CaffeinitError(f"{flag} {value}: {bad:g} is not a finite float32 number (Caffe holds it as a float)")
    return floats


def _split(value) -> list:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split()]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)
