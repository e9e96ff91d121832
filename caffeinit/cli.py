"""Command line: a thin argparse layer over the Python API. ``caffeinit <command> --help`` for details."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import warnings

from caffeinit.allocator import retain_freed_memory
from caffeinit.errors import CaffeinitError

DESCRIPTION = ("Data-dependent initialization of Caffe networks (Kraehenbuehl et al., ICLR 2016): set a net's weights "
               "from real images, run it in PyTorch with Caffe's numbers, and write the result as a .caffemodel "
               "and as ONNX.")

SEED_MAX = 2**63 - 1
INT32 = (-2**31, 2**31 - 1)


def _seed(text: str) -> int:
    """argparse type of --seed: an integer from 0 to 2**63-1 (every generator used takes it)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63-1 ({SEED_MAX}), got '{text}'")
    return value


def _int32(text: str) -> int:
    """argparse type of --level: an integer that fits Caffe's int32 NetState.level."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not INT32[0] <= value <= INT32[1]:
        raise argparse.ArgumentTypeError(f"expected an integer from {INT32[0]} to {INT32[1]} (Caffe's int32), got "
                                         f"'{text}'")
    return value


def _add_net_options(p: argparse.ArgumentParser, weights: bool = True, phase: str = "test") -> None:
    p.add_argument("net", help="network .prototxt (any Caffe format) or solver .prototxt")
    if weights:
        p.add_argument("--weights", metavar="W.caffemodel", help="weights to load")
    p.add_argument("--phase", choices=("train", "test"), default=phase, help=f"net phase (default {phase})")
    p.add_argument("--stage", action="append", default=[], help="net state stage (repeatable)")
    p.add_argument("--level", type=_int32, default=0, help="net state level")


def _add_image_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images (replace the net's own data layer)")
    g.add_argument("--images", metavar="LIST|DIR|GLOB",
                   help="Caffe ImageData list ('path [label]' lines), a directory (recursive) or a glob")
    g.add_argument("--root-folder", help="prefix for relative paths in the list (default: the list's folder)")
    g.add_argument("--resize", metavar="H,W", help="warp images to HxW (default: the Input layer's size)")
    g.add_argument("--crop", metavar="N", help="centre crop (random in TRAIN)")
    g.add_argument("--mean-value", metavar="B,G,R", help="per-channel mean to subtract (default 104,117,123)")
    g.add_argument("--mean-file", metavar="MEAN.binaryproto", help="mean image to subtract")
    g.add_argument("--scale", metavar="S", help="multiply after mean subtraction (default 1)")
    g.add_argument("--gray", action="store_true", help="decode as greyscale")
    g.add_argument("--skip-bad-images", action="store_true", help="skip (and count) unreadable images")
    g.add_argument("--seed", type=_seed, default=0, help="seed for every random choice (0 to 2**63-1, default 0)")


def _image_options(args):
    """The data options, their values checked (before any work)."""
    from caffeinit.data.netinput import ImageOptions
    options = ImageOptions(images=args.images, root_folder=args.root_folder, resize=args.resize, crop=args.crop,
                           mean_value=args.mean_value, mean_file=args.mean_file, scale=args.scale, gray=args.gray,
                           skip_bad_images=args.skip_bad_images)
    options.check()
    return options


def _check_outputs(outputs: dict, inputs, options) -> None:
    """Refuse, before any work, outputs that would replace a file the command reads, or that a later run with the
    same --images folder or glob would read as an image."""
    from caffeinit.fileio import check_outputs
    check_outputs(outputs, inputs)  # first: an output naming an existing input is told so
    options.check_outputs(outputs)


def _input_files(args, net_param=None, options=None):
    """Every file the command reads (``caffeinit.fileio.InputFiles``), which its outputs must not replace: the net
    (and the net file a solver names), --weights, and with ``net_param`` the files its layers read (mean files,
    databases, lists and the files they name) and those ``options`` name (--mean-file, --images and its images)."""
    from caffeinit.data.sources import add_layer_inputs
    from caffeinit.fileio import InputFiles
    from caffeinit.prototxt import solver_net_file

    files = InputFiles()
    files.add(args.net, "the net")
    files.add(solver_net_file(args.net), f"the net that solver {args.net} names")
    files.add(getattr(args, "weights", None), "--weights")
    if options is not None:
        options.add_inputs(files, net_param)
    elif net_param is not None:
        for lp in net_param.layer:
            add_layer_inputs(files, lp)
    return files


def _add_input_shape_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="BLOB=N,C,H,W",
                   help="shape of a data-layer top (e.g. when a train net's LMDB is not here); repeatable")


def _input_shapes(args, net_param, phase) -> dict | None:
    """The --input-shape values, each naming a top of one of the net's data layers (in ``phase``)."""
    from caffeinit.layers import layer_class
    from caffeinit.net import parse_phase
    from caffeinit.netstate import filter_net

    if not args.input_shape:
        return None
    net = filter_net(net_param, parse_phase(phase), level=args.level, stages=tuple(args.stage))
    tops = [t for lp in net.layer if layer_class(lp.type, lp.name).is_data for t in lp.top]
    shapes = {}
    for item in args.input_shape:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if sep and name else None
        except ValueError:
            shape = None
        if not shape or any(d <= 0 for d in shape):
            raise CaffeinitError(f"--input-shape '{item}': expected BLOB=N,C,H,W with positive integers")
        if name in shapes:
            raise CaffeinitError(f"--input-shape: '{name}' is given twice")
        if name not in tops:
            raise CaffeinitError(f"--input-shape '{item}': '{name}' is not a top of a data layer of net "
                                 f"'{net_param.name}' (the tops it can give: {', '.join(tops) or 'none'})")
        shapes[name] = shape
    return shapes


def cmd_inspect(args) -> int:
    from caffeinit.api import read_net_param
    from caffeinit.inspect_net import net_summary, net_table
    from caffeinit.net import build_net

    net_param = read_net_param(args.net)
    net = build_net(net_param, args.phase, args.stage, args.level, _input_shapes(args, net_param, args.phase))
    if args.weights:
        from caffeinit.executor import TorchNet
        from caffeinit.weights import load_weights
        module = TorchNet(net, load_weights(args.weights), source=args.weights)
        if module.missing and not args.json:
            print(f"note: {len(module.missing)} layers not in {args.weights}: {_name_list(module.missing)}",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(net_summary(net)))
    else:
        print(net_table(net))
    return 0


def cmd_upgrade(args) -> int:
    from caffeinit.fileio import atomic_write_bytes, check_outputs, staged_outputs
    from caffeinit.prototxt import format_net, read_net_or_solver
    from caffeinit.weights import read_caffemodel, write_caffemodel

    if bool(args.weights) != bool(args.weights_out):
        raise CaffeinitError("--weights needs --weights-out for the upgraded caffemodel" if args.weights else
                             "--weights-out needs --weights (the caffemodel to upgrade)")
    inputs = _input_files(args)
    check_outputs({"-o": args.output, "--weights-out": args.weights_out}, inputs)
    net = read_net_or_solver(args.net)  # a solver: the solver upgraded (as Caffe's upgrade_solver_proto_text)
    weights = read_caffemodel(args.weights) if args.weights else None  # read before anything is written
    with staged_outputs():  # both or neither
        atomic_write_bytes(args.output, format_net(net).encode(), inputs=inputs)
        if weights is not None:
            write_caffemodel(args.weights_out, weights, inputs=inputs)
    print(f"wrote {args.output}", file=sys.stderr)  # what a command did goes to stderr, as run's and convert's
    if weights is not None:
        print(f"wrote {args.weights_out}", file=sys.stderr)
    return 0


def _input_specs(items: list[str]) -> dict[str, str]:
    """{name: path} of the --input NAME=FILE options, each name once."""
    specs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CaffeinitError(f"--input '{item}': expected NAME=FILE.npy")
        if name in specs:
            raise CaffeinitError(f"--input {name} is given twice ('{specs[name]}' and '{path}')")
        specs[name] = path
    return specs


def _read_input(name: str, path: str):
    """The array of ``--input name=path``: an .npy, or an .npz holding exactly one array; real numbers that
    float32 (the net's type) holds, all finite."""
    import numpy as np
    from caffeinit.init.config import FLOAT32_MAX

    where = f"--input {name}: '{path}'"
    try:
        data = np.load(path)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if len(data.files) != 1:
                    raise CaffeinitError(f"{where} holds {len(data.files)} arrays "
                                         f"({', '.join(data.files) or 'none'}): give an .npy, or an .npz with one "
                                         "array")
                data = data[data.files[0]]
    except OSError as e:
        raise CaffeinitError(f"--input {name}: cannot read '{path}': {e.strerror or e}") from None
    except (ValueError, EOFError) as e:
        raise CaffeinitError(f"--input {name}: cannot read '{path}': {e} (expected an .npy, or an .npz with one "
                             "array)") from None
    if not isinstance(data, np.ndarray):
        raise CaffeinitError(f"{where} is not an .npy or .npz file")
    if np.iscomplexobj(data):
        raise CaffeinitError(f"{where} holds complex numbers ({data.dtype}): the net takes real ones")
    if data.dtype.kind not in "biuf":
        raise CaffeinitError(f"{where} holds {data.dtype} values, not numbers")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        bad = data.size - int(np.count_nonzero(finite))
        if bad:
            raise CaffeinitError(f"{where} has {bad} non-finite values (NaN or inf)")
        if data.dtype.itemsize > 4:
            over = int(np.count_nonzero(np.abs(data) > FLOAT32_MAX))
            if over:
                raise CaffeinitError(f"{where} has {over} values beyond float32's range (+-3.4e38), the net's "
                                     "type")
    return data


def _check_finite_blobs(net, blobs) -> None:
    """No NaN or infinity reaches forward's .npz: the first blob (in net order) holding one is named."""
    import numpy as np

    from caffeinit.weights import count_non_finite

    order: dict[str, int] = {}
    for node in net.layers:
        for blob in (*node.bottoms, *node.tops):
            order.setdefault(blob, len(order))
    for name in sorted(blobs, key=lambda b: order.get(b, len(order))):
        array = np.asarray(blobs[name])
        bad = count_non_finite(array) if array.dtype.kind == "f" else 0
        if bad:
            raise CaffeinitError(f"blob '{name}' has {bad} non-finite values (NaN or inf) after the forward pass "
                                 "(from the weights or inputs); nothing was written")


def cmd_forward(args) -> int:
    import numpy as np

    from caffeinit.api import load, read_net_param
    from caffeinit.data import batches
    from caffeinit.data.netinput import image_feed_shapes, net_source
    from caffeinit.device import describe_device
    from caffeinit.fileio import atomic_output
    from caffeinit.net import parse_phase

    if args.images and args.input:
        raise CaffeinitError("use either --images or --input")
    if args.num_images is not None and args.num_images < 1:
        raise CaffeinitError(f"--num-images must be at least 1, got {args.num_images}")
    if args.input and args.num_images is not None:
        raise CaffeinitError("--num-images applies to --images only: the --input arrays hold the images")
    specs = _input_specs(args.input)
    options = _image_options(args)
    net_param = read_net_param(args.net)
    files = _input_files(args, net_param, options)
    for name, path in specs.items():
        files.add(path, f"--input {name}")
    _check_outputs({"--out": args.out}, files, options)
    inputs = {name: _read_input(name, path) for name, path in specs.items()}
    input_shapes = None
    if args.images:
        input_shapes = image_feed_shapes(net_param, parse_phase(args.phase), options, args.num_images or 1,
                                         args.stage, args.level)
    model = load(net_param, args.weights, phase=args.phase, stages=args.stage, level=args.level,
                 device=args.device, seed=args.seed, input_shapes=input_shapes or None)
    say = _say(args)
    say(f"device: {describe_device(model.device)}")
    if args.images:
        source = net_source(model.net, options)
        say(f"data: {source.describe()}" + (f"; {source.preprocess.describe()}" if hasattr(source, "preprocess")
                                            else ""))
        count = args.num_images or next(iter(model.net.feeds.values()))[0]
        inputs = next(batches(source, count, count, seed=args.seed, progress=_progress(args)))
    blobs = model.forward(inputs, args.blobs)
    _check_finite_blobs(model.net, blobs)
    with atomic_output(args.out, inputs=files) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **blobs)
    say(f"wrote {len(blobs)} blob{'' if len(blobs) == 1 else 's'} to {args.out}")
    return 0


def _model_and_images(args, say, net_param, options):
    """The model and its image source for `run` and `stats` (shared options), with what was chosen said once."""
    from caffeinit.api import load
    from caffeinit.data.netinput import image_feed_shapes, net_source
    from caffeinit.device import describe_device, select_device
    from caffeinit.net import parse_phase

    phase = parse_phase(args.phase)
    shapes = image_feed_shapes(net_param, phase, options, args.batch_size, args.stage, args.level)
    device = select_device(args.device, args.precision)
    model = load(net_param, args.weights, phase=phase, stages=args.stage, level=args.level, device=device,
                 seed=args.seed, input_shapes=shapes or None, precision=args.precision)
    source = net_source(model.net, options)
    say(f"device: {describe_device(device)}; precision: {args.precision}")
    say(f"data: {source.describe()}" + (f"; {source.preprocess.describe()}" if hasattr(source, "preprocess") else ""))
    missing = model.module.missing
    if missing and not args.weights:
        say(f"weights: none given: {len(missing)} layers with parameters start from their fillers")
    elif missing:
        say(f"weights: {len(missing)} layers not in {args.weights} (filler values): {_name_list(missing)}")
    elif args.weights:
        total = sum(1 for node in model.net.layers if node.layer.blob_shapes)
        say(f"weights: every layer with parameters ({total}) from {args.weights}")
    return model, source


def _name_list(names: list[str], limit: int = 12) -> str:
    """Comma-separated names, the middle elided past ``limit`` (the first and last ones say where they are)."""
    if len(names) <= limit:
        return ", ".join(names)
    head, tail = names[:limit - 2], names[-2:]
    return f"{', '.join(head)}, ... ({len(names) - limit} more), {', '.join(tail)}"


def _known_length(source) -> int | None:
    """How many distinct items an image source holds (None where counting would mean reading a database)."""
    from caffeinit.data.sources import ImageSource
    return len(source) if isinstance(source, ImageSource) else None


def cmd_run(args) -> int:
    from caffeinit.api import read_net_param
    from caffeinit.data import batches
    from caffeinit.fileio import staged_outputs
    from caffeinit.init import InitConfig, initialize

    default_images = args.num_images is None
    if default_images:
        args.num_images = InitConfig.num_images
    config = InitConfig(method=args.method, between=args.between, between_iters=args.between_iters,
                        tolerance=args.tolerance, bias=args.bias, num_images=args.num_images,
                        batch_size=args.batch_size, reinit=args.reinit, seed=args.seed,
                        between_batches=args.between_batches, between_draws=args.between_draws,
                        measure_before=args.before, pass_images=args.pass_images)
    config.check()
    options = _image_options(args)
    net_param = read_net_param(args.net)
    inputs = _input_files(args, net_param, options)
    # fail before the work, not after
    _check_outputs({"-o": args.output, "--report": args.report, "--plot": args.plot, "--onnx": args.onnx}, inputs,
                   options)
    if args.plot:
        from caffeinit.init.report import plot_format
        plot_format(args.plot)
    say = _say(args)

    model, source = _model_and_images(args, say, net_param, options)
    deploy = _onnx_net(model, args.stage, args.level) if args.onnx else None  # refused now, not after the work
    if default_images and config.within:
        from caffeinit.init.pipeline import images_that_fit
        fitting = images_that_fit(model.net, model.device, args.batch_size, args.num_images)
        if fitting < args.num_images:
            say(f"note: {fitting} images instead of the default {args.num_images}: the within-layer step keeps every "
                "image's values, and more would not fit in the memory available (--num-images sets the count)")
            args.num_images = config.num_images = fitting
    distinct = _known_length(source)
    if distinct is not None and distinct < args.num_images:
        say(f"note: {distinct} images for --num-images {args.num_images}: cycled as Caffe's data layers do (batches "
            "repeat images)")

    if config.within:  # refused before the images are loaded, not after
        from caffeinit.init.pipeline import check_memory
        check_memory(model.net, model.device, args.num_images, args.batch_size, warn=False)
    data = batches(source, args.batch_size, args.num_images, seed=args.seed, progress=_progress(args))
    report = initialize(model, data, config, progress=_progress(args))
    exported = None
    with staged_outputs():  # all of them or, where one fails, none (existing files stay as they were)
        model.save_caffemodel(args.output, inputs=inputs)
        if args.report:
            _write_json(args, args.report, report.to_dict(), inputs)
        if args.plot:
            report.plot(args.plot, inputs=inputs)
        if args.onnx:
            # A TF32 torch run is itself ~1e-3 off IEEE fp32: compare with a matching tolerance.
            exported = _export_onnx(model, args.onnx, inputs, say,
                                    device="auto" if model.device.type == "cuda" else "cpu",
                                    tolerance=1e-4 if args.precision == "ieee" else 1e-2, deploy=deploy)
    if not args.quiet:  # after the outputs are in place: a reader of stdout that leaves (| head) loses nothing
        print(report.table())
    for path in (args.output, args.report, args.plot):
        if path:
            say(f"wrote {path}")
    if exported is not None:
        say(exported.summary())
    return 0


def cmd_stats(args) -> int:
    from caffeinit.api import read_net_param
    from caffeinit.data import batches
    from caffeinit.init.measure import measure, measure_table, measures_to_dict

    options = _image_options(args)
    net_param = read_net_param(args.net)
    inputs = _input_files(args, net_param, options)
    _check_outputs({"--json": args.json}, inputs, options)
    model, source = _model_and_images(args, _say(args), net_param, options)
    data = batches(source, args.batch_size, args.num_images, seed=args.seed, progress=_progress(args))
    measures = measure(model, data, draws=args.draws, seed=args.seed, pass_images=args.pass_images,
                       progress=_progress(args))
    print(measure_table(measures))
    if args.json:
        _write_json(args, args.json, measures_to_dict(measures), inputs)
    return 0


def _progress(args) -> bool:
    """Whether to show progress bars: not with --quiet, and not where stderr is a log file rather than a terminal
    (a bar redraws itself with carriage returns)."""
    return not args.quiet and sys.stderr.isatty()


def _say(args):
    """A print to stderr for what a command chose (device, data, weights), silent with --quiet."""
    return (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))


def _write_json(args, path, data: dict, inputs) -> None:
    """``data`` as JSON at ``path`` (atomically), led by the command line that made it."""
    from caffeinit.fileio import atomic_write_bytes
    data = {"command": ["caffeinit", *args.argv], **data}
    try:
        text = json.dumps(data, indent=1, allow_nan=False)  # the last guard: no NaN or Infinity in a written file
    except ValueError:
        raise CaffeinitError(f"{path}: a figure is NaN or infinite, which JSON cannot hold; nothing was "
                             "written") from None
    atomic_write_bytes(path, (text + "\n").encode(), inputs=inputs)


def _onnx_net(model, stages, level):
    """What ONNX export will write for ``model``, checked before any work: None for the model's own net, or where
    that was built for TRAIN or ends in losses, its inference part (``caffeinit.deploy_net``) as a NetParameter."""
    from caffeinit.deploy_net import deploy_param, losses_in_test_phase
    from caffeinit.net import build_net
    from caffeinit.onnx_export import check_exportable
    from caffeinit.proto import caffe_pb2

    if model.phase == caffe_pb2.TEST and not losses_in_test_phase(model.net_param, stages, level):
        check_exportable(model.net)
        return None
    param = deploy_param(model.net_param, model.net.feeds, stages, level)
    check_exportable(build_net(param, "test"))
    return param


def _say_inference_net(say, net) -> None:
    say(f"ONNX of the inference net: the TEST-phase layers without loss/accuracy layers (inputs: "
        f"{', '.join(net.feeds)}; outputs: {', '.join(net.outputs)})")


def _export_onnx(model, path, inputs, say, opset=None, static_batch=False, check=True, device="cpu",
                 tolerance=1e-4, deploy=None):
    """Export ``model``, or with ``deploy`` (from ``_onnx_net``) that net with ``model``'s weights; the
    ``ExportResult`` (its ``summary()`` is for the caller to say once the file is in place)."""
    from caffeinit.onnx_export import DEFAULT_OPSET, export_onnx
    if deploy is not None:
        from caffeinit.api import load
        model = load(deploy, model.module.blobs_numpy(copy=False), phase="test", device=model.device)
        _say_inference_net(say, model.net)
    return export_onnx(model, path, opset=DEFAULT_OPSET if opset is None else opset, static_batch=static_batch,
                       check=check, device=device, inputs=inputs, tolerance=tolerance)


def cmd_convert(args) -> int:
    from caffeinit.api import load, read_net_param
    from caffeinit.data import peek_top_shapes
    from caffeinit.deploy_net import deploy_param, losses_in_test_phase
    from caffeinit.fileio import check_outputs

    say = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
    if args.opset is not None:
        from caffeinit.onnx_export.graph import check_opset
        check_opset(args.opset)
    net = read_net_param(args.net)
    inputs = _input_files(args, net)
    check_outputs({"--onnx": args.onnx}, inputs)
    shapes = _input_shapes(args, net, "test")
    inference_part = losses_in_test_phase(net, args.stage, args.level)
    if inference_part:  # a train/val net: only the shapes of the tops its inference part reads are needed
        def peek(lp):
            try:
                return peek_top_shapes(lp)
            except CaffeinitError as e:
                raise CaffeinitError(f"{e} (--input-shape {lp.top[0]}=N,C,H,W gives the shape of layer "
                                     f"'{lp.name}''s top)") from None
        net = deploy_param(net, shapes or {}, args.stage, args.level, peek=peek)
        shapes = None
    model = load(net, args.weights, phase="test", stages=args.stage, level=args.level, device="cpu",
                 input_shapes=shapes)
    if inference_part:
        _say_inference_net(say, model.net)
    if args.weights is None:
        say("note: no --weights: the ONNX file holds the prototxt's filler values")
    elif model.module.missing:
        say(f"note: {len(model.module.missing)} layers without weights (filler values): "
            f"{_name_list(model.module.missing)}")
    result = _export_onnx(model, args.onnx, inputs, say, opset=args.opset, static_batch=args.static_batch,
                          check=not args.no_check, device=args.ort_device,
                          deploy=_onnx_net(model, args.stage, args.level))
    say(result.summary())
    return 0


def _add_pass_images_option(p) -> None:
    p.add_argument("--pass-images", type=int, metavar="N",
                   help="at most N images per gradient pass (default: the whole batch, or as few equal parts of it "
                   "as the memory available holds); pins how passes are split, so that --seed gives the same bits "
                   "on machines with other memory")


def build_parser() -> argparse.ArgumentParser:
    from caffeinit import __version__
    from caffeinit.init.config import InitConfig

    parser = argparse.ArgumentParser(prog="caffeinit", description=DESCRIPTION,
                                     epilog="'caffeinit COMMAND --help' describes each command.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"caffeinit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a net's layers, blob shapes and parameters")
    _add_net_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_input_shape_option(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("upgrade", help="rewrite a net or a solver (and weights) in the current Caffe format")
    p.add_argument("net", help="network or solver .prototxt in any historic format")
    p.add_argument("--weights", metavar="W.caffemodel", help="weights to upgrade too")
    p.add_argument("-o", "--output", required=True, metavar="OUT.prototxt")
    p.add_argument("--weights-out", metavar="OUT.caffemodel")
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("forward", help="run a forward pass and save blobs to an .npz")
    _add_net_options(p)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input array: an .npy, or an .npz holding one array (repeatable, one per input)")
    p.add_argument("--blobs", default="outputs", help="outputs | all | NAME,NAME,... (default outputs)")
    p.add_argument("-o", "--out", required=True, metavar="OUT.npz")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--num-images", type=int, help="with --images: how many (default: the net's batch size)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    _add_image_options(p)
    p.set_defaults(func=cmd_forward)

    p = sub.add_parser("convert", help="export a net with weights to ONNX, checked against ONNX Runtime",
                       description="TEST-phase ONNX with Caffe's blob names, a dynamic batch dimension, and pooling "
                       "lowered so every runtime gives Caffe's numbers. Verified with onnx.checker and ONNX Runtime "
                       "against the torch graph unless --no-check.")
    p.add_argument("net", help="network .prototxt (any Caffe format) or solver .prototxt")
    p.add_argument("--weights", metavar="W.caffemodel", help="weights (default: the prototxt's fillers)")
    p.add_argument("-o", "--onnx", required=True, metavar="OUT.onnx")
    p.add_argument("--opset", type=int, help="ONNX opset, from 18 to the installed onnx's newest (default 21)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension to the prototxt's")
    p.add_argument("--no-check", action="store_true", help="skip the checker and ONNX Runtime verification")
    p.add_argument("--ort-device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="ONNX Runtime execution provider for the check (default cpu)")
    p.add_argument("--stage", action="append", default=[], help="net state stage (repeatable)")
    p.add_argument("--level", type=_int32, default=0, help="net state level")
    _add_input_shape_option(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("stats", help="per-layer output statistics and change rates (the paper's diagnostic)",
                       description="For every Convolution/InnerProduct-like layer: its output's per-channel mean and "
                       "std (before in-place nonlinearities) and its change rate RMS(dL/dW)/RMS(W) under random "
                       "gradients at the last non-loss layer; equal rates mean all layers learn at the same speed.")
    _add_net_options(p)
    p.add_argument("--num-images", type=int, default=64, help="images used (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--draws", type=int, default=1, help="random gradient draws per batch (default 1)")
    _add_pass_images_option(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--precision", default="ieee", choices=("ieee", "tf32"), help="fp32 mode on GPUs (default ieee)")
    p.add_argument("--json", metavar="STATS.json", help="also write the figures as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_image_options(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("run", help="data-dependent initialization (Kraehenbuehl et al. 2016) -> caffemodel",
                       description="Initialize every learnable layer from real images: within-layer (each unit's "
                       "output has mean --bias and std 1) then between-layer (every layer learns at the same rate).")
    _add_net_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.caffemodel")
    p.add_argument("--method", default="gaussian", choices=("gaussian", "orthogonal", "pca", "zca", "kmeans", "rand"),
                   help="within-layer draw (default gaussian, as the reference; the paper's best is kmeans)")
    p.add_argument("--between", action=argparse.BooleanOptionalAction, default=True,
                   help="equalize the layers' change rates (default on)")
    p.add_argument("--between-iters", type=int, default=10, metavar="N",
                   help="at most N between-layer updates (default 10)")
    p.add_argument("--tolerance", type=float, default=0.05, help="between-layer stopping tolerance (default 0.05)")
    p.add_argument("--between-batches", type=int, default=InitConfig.between_batches, metavar="B",
                   help=f"batches the change rates are averaged over (default {InitConfig.between_batches})")
    p.add_argument("--between-draws", type=int, default=InitConfig.between_draws, metavar="D",
                   help=f"random gradient draws per batch (default {InitConfig.between_draws})")
    p.add_argument("--before", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the table's 'before' columns under the starting weights: one forward+backward over "
                   "4 images, for the report only (default on; --no-before saves that pass on very large nets)")
    p.add_argument("--bias", type=float, default=0.1, metavar="BETA", help="target mean of every unit (default 0.1)")
    p.add_argument("--num-images", type=int, help="images used (default 160, or as many as the memory available "
                   "holds)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    _add_pass_images_option(p)
    p.add_argument("--reinit", default="missing", metavar="all|missing|LAYER",
                   help="with --weights: draw all layers, only those missing from the weights (default), or LAYER "
                   "and every later one")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--precision", default="ieee", choices=("ieee", "tf32"), help="fp32 mode on GPUs (default ieee)")
    p.add_argument("--report", metavar="REPORT.json", help="per-layer statistics and change rates as JSON")
    p.add_argument("--plot", metavar="REPORT.png", help="plot of the per-layer statistics and change rates (PNG, or "
                   "as the suffix says: .pdf, .svg, ...)")
    p.add_argument("--onnx", metavar="OUT.onnx", help="also write the initialized net as ONNX")
    p.add_argument("--quiet", action="store_true", help="no progress bars or table")
    _add_image_options(p)
    p.set_defaults(func=cmd_run)
    for command in sub.choices.values():  # also after the command; SUPPRESS keeps a --debug given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, above any progress bar (Python's default adds the warning's source line)."""
    from tqdm.auto import tqdm
    tqdm.write(f"caffeinit: warning: {_one_line(str(message))}", file=sys.stderr)


def _one_line(text: str) -> str:
    """``text`` with control characters escaped as Python writes them ('\\n'), so a message stays one line even
    where it quotes a name that holds them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv=None) -> int:
    retain_freed_memory()  # 5-13% faster on large nets (see caffeinit/allocator.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings(), _termination_raises():
        if not args.debug:
            warnings.showwarning = _show_warning
        return _run_command(args)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised like KeyboardInterrupt, so the command's clean-up runs (temporary files
    are removed, existing outputs stay as they were) before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _termination_raises():
    """SIGTERM and SIGHUP raise ``Terminated`` during the block (Python's default ends the process at once, leaving
    temporary files behind). A signal set to be ignored (nohup) stays ignored; off the main thread nothing changes."""
    old = {}
    try:
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                old[signum] = signal.signal(signum, _raise_terminated)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def _run_command(args) -> int:
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone is found here, not by Python as it exits
        return code
    except CaffeinitError as e:
        if args.debug:
            raise
        print(f"caffeinit: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("caffeinit: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as e:
        print(f"caffeinit: terminated ({signal.Signals(e.signum).name})", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:
        # The reader of stdout left (`caffeinit inspect NET | head`): end quietly as a tool killed by SIGPIPE does,
        # with nothing more written there (Python would complain when it flushes stdout at exit).
        with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor has nothing to flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except MemoryError as e:
        if args.debug:
            raise
        print(f"caffeinit: error: out of memory{': ' + _one_line(str(e)) if str(e) else ''} (fewer images, a smaller "
              "--batch-size or smaller inputs need less)", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 — no traceback for users unless --debug
        if args.debug:
            raise
        print(f"caffeinit: error: internal error ({type(e).__name__}: {_one_line(str(e))}); rerun with --debug for "
              "the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
