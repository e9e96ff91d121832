"""Choosing what feeds a net: ``--images`` (with deploy preprocessing or the replaced layer's transform_param) or
the net's own data layer."""
from __future__ import annotations

from dataclasses import dataclass

from caffeinit.data.sources import ImageSource, Source, find_images, layer_source
from caffeinit.data.transform import Preprocess
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
        return layer_source(data_layers[0].param, net.phase, options.root_folder, options.skip_bad_images)

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
    if node.type == "Input" or options.has_preprocess_flags():
        preprocess = Preprocess.from_flags(shape, options.resize, options.crop, options.mean_value,
                                           options.mean_file, options.scale, options.gray, phase=net.phase)
    else:
        preprocess = Preprocess.for_layer(node.param, net.phase, top_shape=shape)
    item = preprocess.output_shape(1 if preprocess.force_gray else 3, *(preprocess.resize or shape[2:]))
    if preprocess.resize is not None and item != tuple(shape[1:]):
        hint = ""
        if item[0] != shape[1] and shape[1] in (1, 3):
            hint = " (--gray decodes greyscale)" if shape[1] == 1 else " (drop --gray: the net takes colour)"
        raise CaffeinitError(f"--images: preprocessing gives {'x'.join(map(str, item))} images but the net's "
                             f"input '{data_top}' is {'x'.join(map(str, shape[1:]))}{hint}")
    entries = find_images(options.images, options.root_folder)
    return ImageSource(entries, preprocess, data_top, label_top, skip_bad=options.skip_bad_images,
                       name=options.images)


def image_feed_shapes(net_param, phase, options: ImageOptions, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes for the tops of a data layer that ``--images`` replaces (Data, ImageData, ...): Caffe would read them
    from the layer's own source, which may not exist here, so they come from the first image as preprocessed.
    Input layers declare their shapes and need nothing (empty dict)."""
    from caffeinit.netstate import filter_net
    from caffeinit.layers import layer_class

    if options.images is None:
        return {}
    data = [lp for lp in filter_net(net_param, phase).layer if layer_class(lp.type, lp.name).is_data]
    if len(data) != 1 or data[0].type == "Input":
        return {}
    lp = data[0]
    if options.has_preprocess_flags():
        raise CaffeinitError(f"--images replaces layer '{lp.name}' ({lp.type}), whose transform_param sets the "
                             "preprocessing: --resize/--crop/--mean-value/--mean-file/--scale/--gray do not apply")
    preprocess = Preprocess.for_layer(lp, phase)
    source = ImageSource(find_images(options.images, options.root_folder), preprocess, lp.top[0],
                         name=options.images)
    first = source.load_pixels(source.entries[0])
    channels = 1 if first.ndim == 2 else first.shape[2]
    item = preprocess.output_shape(channels, first.shape[0], first.shape[1])
    shapes = {lp.top[0]: (batch_size,) + tuple(item)}
    if len(lp.top) > 1:
        shapes[lp.top[1]] = (batch_size,)
    return shapes
