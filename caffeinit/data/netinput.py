"""Choosing what feeds a net: ``--images`` (with deploy preprocessing or the replaced layer's transform_param) or
the net's own data layer."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from caffeinit.data.sources import (ImageEntry, ImageSource, Source, add_layer_inputs, find_images,
                                    first_datum_shape, layer_source, lists_as_image)
from caffeinit.data.transform import Preprocess, parse_ints, parse_mean_values, parse_scale
from caffeinit.errors import CaffeinitError
from caffeinit.net import Net


@dataclass
class ImageOptions:
    """The CLI's data options (strings as typed, or None)."""
    images: str | None = None
    root_folder: str | None = None
    resize: str | None = None
    crop: str | None = None
    mean_value: str | None = None
    mean_file: str | None = None
    scale: str | None = None
    gray: bool = False
    skip_bad_images: bool = False
    _entries: list[ImageEntry] | None = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> None:
        """Refuse malformed values now, before any work: --resize, --crop, --scale (one finite float32 number),
        --mean-value (finite float32 numbers)."""
        if self.resize is not None:
            parse_ints(self.resize, "--resize", 2)
        if self.crop is not None:
            parse_ints(self.crop, "--crop", 1)
        if self.scale is not None:
            parse_scale(self.scale)
        if self.mean_value is not None:
            parse_mean_values(self.mean_value)

    def image_entries(self) -> list[ImageEntry]:
        """The images ``images`` names (``find_images``), found once."""
        if self._entries is None:
            self._entries = find_images(self.images, self.root_folder)
        return self._entries

    def add_inputs(self, files, net_param) -> None:
        """Add to ``files`` (a ``caffeinit.fileio.InputFiles``) every file these options and ``net_param``'s
        layers make a command read: --mean-file, the --images list and its images, and each layer's mean file,
        database, lists and the files those name (``add_layer_inputs``)."""
        files.add(self.mean_file, "--mean-file")
        if self.images is not None:
            if os.path.isfile(self.images):
                files.add(self.images, "--images")
            files.add_later(lambda: [(e.path, f"an image of --images {self.images}") for e in self.image_entries()])
        for lp in net_param.layer:
            add_layer_inputs(files, lp, self.root_folder if self.images is None else None)

    def check_outputs(self, outputs) -> None:
        """Refuse, before any work, an output ({option: path}, None for options not given) that a later run's
        ``--images`` (the same folder or glob) would read as one of its images."""
        if self.images is None:
            return
        for option, path in outputs.items():
            if path is not None and lists_as_image(self.images, path):
                raise CaffeinitError(f"{option} {os.fspath(path)}: refusing to write where --images {self.images} "
                                     "finds images (a later run would read it as one): write it elsewhere")

    def has_preprocess_flags(self) -> bool:
        return any(v is not None for v in (self.resize, self.crop, self.mean_value, self.mean_file, self.scale)) \
            or self.gray


def net_source(net: Net, options: ImageOptions) -> Source:
    """The source of a net's data: ``options.images`` replaces the net's data layer; without it the layer's own
    source is used (an Input layer then is an error)."""
    data_layers = [node for node in net.layers if node.layer.is_data]
    if not data_layers:
        raise CaffeinitError(f"net '{net.name}' has no Input or data layer to feed")
    if options.images is None:
        if len(data_layers) > 1:
            names = ", ".join(n.name for n in data_layers)
            raise CaffeinitError(f"net '{net.name}' has several data layers ({names}): caffeinit feeds one")
        if options.has_preprocess_flags():
            raise CaffeinitError("--resize/--crop/--mean-value/--mean-file/--scale/--gray apply to --images only")
        # a layer's own phase (filter_net gave the net's to those without one) decides its crop and mirror
        return layer_source(data_layers[0].param, data_layers[0].param.phase, options.root_folder,
                            options.skip_bad_images)

    images = [(node, blob) for node in data_layers for blob in node.tops if len(net.feeds[blob]) == 4]
    if len(images) != 1:
        found = ", ".join(b for _, b in images) or "none"
        raise CaffeinitError(f"--images needs exactly one 4-D (N x C x H x W) input in net '{net.name}', found {found}")
    node, data_top = images[0]
    shape = net.feeds[data_top]
    label_top = "label" if "label" in net.feeds and data_top != "label" else None
    other = [b for b in net.feeds if b not in (data_top, label_top)]
    if other:
        raise CaffeinitError(f"--images feeds '{data_top}'{' and ' + label_top if label_top else ''}, but the net "
                             f"also needs input '{other[0]}'")
    if node.type == "Input":
        preprocess = Preprocess.from_flags(shape, options.resize, options.crop, options.mean_value,
                                           options.mean_file, options.scale, options.gray, phase=node.param.phase)
    else:
        preprocess = replaced_layer_preprocess(node.param, node.param.phase, options, top_shape=shape)
    item = preprocess.output_shape(1 if preprocess.force_gray else 3, *(preprocess.resize or shape[2:]))
    if preprocess.resize is not None and item != tuple(shape[1:]):
        hint = ""
        if item[0] != shape[1] and shape[1] in (1, 3):
            hint = " (--gray decodes greyscale)" if shape[1] == 1 else " (drop --gray: the net takes colour)"
        raise CaffeinitError(f"--images: preprocessing gives {'x'.join(map(str, item))} images but the net's "
                             f"input '{data_top}' is {'x'.join(map(str, shape[1:]))}{hint}")
    entries = options.image_entries()
    return ImageSource(entries, preprocess, data_top, label_top, skip_bad=options.skip_bad_images,
                       name=options.images)


TRANSFORM_FLAGS = (("crop", "--crop"), ("mean_value", "--mean-value"), ("mean_file", "--mean-file"),
                   ("scale", "--scale"))


def replaced_layer_preprocess(lp, phase: int, options: ImageOptions, top_shape=None) -> Preprocess:
    """The preprocessing of ``--images`` in place of data layer ``lp`` (Data, ImageData, ...): the layer's own
    transform_param (``Preprocess.for_layer``), so the transform flags do not apply. How images decode is the
    source's business where the layer leaves it open: a Data layer's Datums hold whatever colour and size they
    were made with, so ``--gray`` and ``--resize`` say what its images would be (MNIST's greyscale digits); an
    ImageData layer's is_color and new_height/new_width, a transform_param's force_color or a mean file's size
    settle them, and flags that contradict those are refused. ``--mean-file`` says where the mean file that the
    transform_param names is (its path is relative to the folder Caffe runs in)."""
    names_mean_file = lp.transform_param.HasField("mean_file")
    given = [flag for attr, flag in TRANSFORM_FLAGS if getattr(options, attr) is not None
             and not (attr == "mean_file" and names_mean_file)]
    if given:
        raise CaffeinitError(f"--images replaces layer '{lp.name}' ({lp.type}), whose transform_param sets the "
                             f"preprocessing: {'/'.join(given)} do{'es' if len(given) == 1 else ''} not apply "
                             "(--gray and --resize do, where the layer leaves them open, and --mean-file for the "
                             "mean file it names)")
    if names_mean_file and options.mean_file is None and not os.path.exists(lp.transform_param.mean_file):
        raise CaffeinitError(f"layer '{lp.name}' ({lp.type}): transform_param mean_file "
                             f"'{lp.transform_param.mean_file}' is not there (Caffe reads a relative path from the "
                             "folder it runs in): run from that folder, or say where it is with --mean-file")
    preprocess = Preprocess.for_layer(lp, phase, top_shape=top_shape, mean_file=options.mean_file)
    held = database_item(lp)
    where = f"layer '{lp.name}' ({lp.type})"
    if held is not None:  # the database is here: our images are made like its records
        channels, height, width = held
        database = f"its database '{lp.data_param.source}' holds {channels}x{height}x{width} images"
        if options.gray and channels != 1:
            raise CaffeinitError(f"--gray: {where} reads colour images ({database})")
        if preprocess.mean_image is not None and tuple(preprocess.mean_image.shape[1:]) != (height, width):
            size = "x".join(map(str, preprocess.mean_image.shape[1:]))
            raise CaffeinitError(f"{where}: its mean file is {size} but {database}")
        preprocess.force_gray = channels == 1
        preprocess.resize = (height, width)
    if options.gray and not preprocess.force_gray:
        if lp.type == "ImageData" or lp.transform_param.force_color:
            what = "image_data_param is_color" if lp.type == "ImageData" else "transform_param force_color"
            raise CaffeinitError(f"--gray: {where} reads its images in colour ({what})")
        preprocess.force_gray = True
    if options.resize is not None:
        size = tuple(parse_ints(options.resize, "--resize", 2))
        ip = lp.image_data_param
        fixed = ("image_data_param new_height/new_width" if lp.type == "ImageData" and ip.new_height > 0
                 and ip.new_width > 0 else f"its database '{lp.data_param.source}'" if held is not None
                 else "its mean file" if preprocess.mean_image is not None else None)
        if fixed is not None and size != tuple(preprocess.resize):
            raise CaffeinitError(f"--resize {size[0]},{size[1]}: {where} takes "
                                 f"{preprocess.resize[0]}x{preprocess.resize[1]} images ({fixed})")
        preprocess.resize = size
    return preprocess


def database_item(lp) -> tuple[int, int, int] | None:
    """(C, H, W) of the first record of a Data layer's database, where it is here and readable (its path is
    relative to the folder Caffe runs in); else None."""
    if lp.type != "Data" or not lp.data_param.source or not os.path.exists(lp.data_param.source):
        return None
    try:
        return first_datum_shape(lp)
    except CaffeinitError:
        return None


def image_feed_shapes(net_param, phase, options: ImageOptions, batch_size: int, stages=(),
                      level: int = 0) -> dict[str, tuple[int, ...]]:
    """Shapes for the tops of a data layer that ``--images`` replaces (Data, ImageData, ...): Caffe would read them
    from the layer's own source, which may not exist here, so they come from the first image as preprocessed.
    Input layers declare their shapes and need nothing (empty dict). The data layer is the one the net built in
    ``phase``, ``stages`` and ``level`` has."""
    from caffeinit.netstate import filter_net
    from caffeinit.layers import layer_class

    if options.images is None:
        return {}
    filtered = filter_net(net_param, phase, level=level, stages=tuple(stages))
    data = [lp for lp in filtered.layer if layer_class(lp.type, lp.name).is_data]
    if len(data) != 1 or data[0].type == "Input":
        return {}
    lp = data[0]
    preprocess = replaced_layer_preprocess(lp, lp.phase, options)
    source = ImageSource(options.image_entries(), preprocess, lp.top[0],
                         name=options.images)
    first = source.load_pixels(source.entries[0])
    channels = 1 if first.ndim == 2 else first.shape[2]
    item = preprocess.output_shape(channels, first.shape[0], first.shape[1])
    if lp.type == "Data" and database_item(lp) is None:
        _warn_open_item(lp, preprocess, item)
    shapes = {lp.top[0]: (batch_size,) + tuple(item)}
    if len(lp.top) > 1:
        shapes[lp.top[1]] = (batch_size,)
    return shapes


def _warn_open_item(lp, preprocess: Preprocess, item: tuple[int, ...]) -> None:
    """Warn where a replaced Data layer's images take their size or colour from the first image: the records of its
    database (not here) carry their own, which the net's shapes in Caffe follow."""
    flags = []
    if preprocess.resize is None and not preprocess.crop_size:
        flags.append("--resize H,W")
    if not (preprocess.force_gray or preprocess.force_color) and preprocess.mean_image is None:
        flags.append("--gray")
    if flags:
        what = " and ".join({"--resize H,W": "size", "--gray": "colour"}[f] for f in flags)
        warnings.warn(f"layer '{lp.name}' (Data): its database '{lp.data_param.source}' is not here to say what "
                      f"its images are, so the {what} of the first image set{'s' if len(flags) == 1 else ''} the "
                      f"net's input: {'x'.join(map(str, item))}; if the database holds other images, say so with "
                      f"{' and '.join(flags)}")
