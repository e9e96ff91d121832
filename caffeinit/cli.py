"""Command line: a thin argparse layer over the Python API. ``caffeinit <command> --help`` for details."""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from caffeinit.allocator import retain_freed_memory
from caffeinit.errors import CaffeinitError


def _add_net_options(p: argparse.ArgumentParser, weights: bool = True, phase: str = "test") -> None:
    p.add_argument("net", help="network .prototxt (any Caffe format) or solver .prototxt")
    if weights:
        p.add_argument("--weights", metavar="W.caffemodel", help="weights to load")
    p.add_argument("--phase", choices=("train", "test"), default=phase, help=f"net phase (default {phase})")
    p.add_argument("--stage", action="append", default=[], help="net state stage (repeatable)")
    p.add_argument("--level", type=int, default=0, help="net state level")


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
    g.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")


def _image_options(args):
    from caffeinit.data.netinput import ImageOptions
    return ImageOptions(images=args.images, root_folder=args.root_folder, resize=args.resize, crop=args.crop,
                        mean_value=args.mean_value, mean_file=args.mean_file, scale=args.scale, gray=args.gray,
                        skip_bad_images=args.skip_bad_images)


def _add_input_shape_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="BLOB=N,C,H,W",
                   help="shape of a data-layer top (e.g. when a train net's LMDB is not here); repeatable")


def _input_shapes(args) -> dict | None:
    shapes = {}
    for item in args.input_shape:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if sep and name else None
        except ValueError:
            shape = None
        if not shape or any(d <= 0 for d in shape):
            raise CaffeinitError(f"--input-shape '{item}': expected BLOB=N,C,H,W with positive integers")
        shapes[name] = shape
    return shapes or None


def cmd_inspect(args) -> int:
    from caffeinit.api import read_net_param
    from caffeinit.inspect_net import net_summary, net_table
    from caffeinit.net import build_net

    net = build_net(read_net_param(args.net), args.phase, args.stage, args.level, _input_shapes(args))
    if args.weights:
        from caffeinit.executor import TorchNet
        from caffeinit.weights import load_weights
        module = TorchNet(net, load_weights(args.weights))
        if module.missing and not args.json:
            print(f"note: {len(module.missing)} layers not in {args.weights}: {_name_list(module.missing)}",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(net_summary(net)))
    else:
        print(net_table(net))
    return 0


def cmd_upgrade(args) -> int:
    from caffeinit.fileio import atomic_write_bytes, check_output_path
    from caffeinit.prototxt import format_net, read_net
    from caffeinit.weights import read_caffemodel, write_caffemodel

    if bool(args.weights) != bool(args.weights_out):
        raise CaffeinitError("--weights needs --weights-out for the upgraded caffemodel" if args.weights else
                             "--weights-out needs --weights (the caffemodel to upgrade)")
    inputs = [args.net] + ([args.weights] if args.weights else [])
    for path in (args.output, args.weights_out):
        if path:
            check_output_path(path, inputs)
    net = read_net(args.net)
    weights = read_caffemodel(args.weights) if args.weights else None  # read before anything is written
    atomic_write_bytes(args.output, format_net(net).encode(), inputs=inputs)
    print(f"wrote {args.output}")
    if weights is not None:
        write_caffemodel(args.weights_out, weights, inputs=inputs)
        print(f"wrote {args.weights_out}")
    return 0


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
    inputs = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CaffeinitError(f"--input '{item}': expected NAME=FILE.npy")
        try:
            inputs[name] = np.load(path)
        except (OSError, ValueError) as e:
            raise CaffeinitError(f"--input {name}: cannot read '{path}': {e}") from None
    options = _image_options(args)
    net_param = read_net_param(args.net)
    input_shapes = None
    if args.images:
        input_shapes = image_feed_shapes(net_param, parse_phase(args.phase), options, args.num_images or 1)
    model = load(net_param, args.weights, phase=args.phase, stages=args.stage, level=args.level,
                 device=args.device, seed=args.seed, input_shapes=input_shapes or None)
    print(f"device: {describe_device(model.device)}", file=sys.stderr)
    if args.images:
        source = net_source(model.net, options)
        print(f"data: {source.describe()}" + (f"; {source.preprocess.describe()}" if hasattr(source, "preprocess")
                                              else ""), file=sys.stderr)
        count = args.num_images or next(iter(model.net.feeds.values()))[0]
        inputs = next(batches(source, count, count, seed=args.seed, progress=not args.quiet))
    blobs = model.forward(inputs, args.blobs)
    with atomic_output(args.out, inputs=[args.net] + ([args.weights] if args.weights else [])) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **blobs)
    print(f"wrote {len(blobs)} blobs to {args.out}")
    return 0


def _model_and_images(args, say):
    """The model and its image source for `run` and `stats` (shared options), with what was chosen said once."""
    from caffeinit.api import load, read_net_param
    from caffeinit.data.netinput import image_feed_shapes, net_source
    from caffeinit.device import describe_device, select_device
    from caffeinit.net import parse_phase

    options = _image_options(args)
    net_param = read_net_param(args.net)
    phase = parse_phase(args.phase)
    shapes = image_feed_shapes(net_param, phase, options, args.batch_size)
    device = select_device(args.device, args.precision)
    model = load(net_param, args.weights, phase=phase, stages=args.stage, level=args.level, device=device,
                 seed=args.seed, input_shapes=shapes or None, precision=args.precision)
    source = net_source(model.net, options)
    say(f"device: {describe_device(device)}; precision: {args.precision}")
    say(f"data: {source.describe()}" + (f"; {source.preprocess.describe()}" if hasattr(source, "preprocess") else ""))
    missing = model.module.missing
    if missing and not args.weights:
        say(f"weights: none given: all {len(missing)} layers with parameters start from their fillers")
    elif missing:
        say(f"weights: {len(missing)} layers not in {args.weights} (filler values): {_name_list(missing)}")
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
    from caffeinit.data import batches
    from caffeinit.fileio import check_output_path
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
    inputs = [p for p in (args.net, args.weights, args.images) if p]
    for path in (args.output, args.report, args.plot, args.onnx):
        if path:
            check_output_path(path, inputs)  # fail before the work, not after
    if args.plot:
        from caffeinit.init.report import plot_format
        plot_format(args.plot)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))

    model, source = _model_and_images(args, say)
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

    data = batches(source, args.batch_size, args.num_images, seed=args.seed, progress=not args.quiet)
    report = initialize(model, data, config, progress=not args.quiet)
    model.save_caffemodel(args.output, inputs=inputs)
    if not args.quiet:
        print(report.table())
    say(f"wrote {args.output}")
    if args.report:
        _write_json(args, args.report, report.to_dict(), inputs)
        say(f"wrote {args.report}")
    if args.plot:
        report.plot(args.plot, inputs=inputs)
        say(f"wrote {args.plot}")
    if args.onnx:
        # A TF32 torch run is itself ~1e-3 off IEEE fp32: compare with a matching tolerance.
        _export_onnx(model, args.onnx, inputs, say, device="auto" if model.device.type == "cuda" else "cpu",
                     tolerance=1e-4 if args.precision == "ieee" else 1e-2, deploy=deploy)
    return 0


def cmd_stats(args) -> int:
    from caffeinit.data import batches
    from caffeinit.fileio import check_output_path
    from caffeinit.init.measure import measure, measure_table, measures_to_dict

    inputs = [p for p in (args.net, args.weights, args.images) if p]
    if args.json:
        check_output_path(args.json, inputs)
    model, source = _model_and_images(args, lambda *a: print(*a, file=sys.stderr))
    data = batches(source, args.batch_size, args.num_images, seed=args.seed, progress=not args.quiet)
    measures = measure(model, data, draws=args.draws, seed=args.seed, pass_images=args.pass_images,
                       progress=not args.quiet)
    print(measure_table(measures))
    if args.json:
        _write_json(args, args.json, measures_to_dict(measures), inputs)
    return 0


def _write_json(args, path, data: dict, inputs) -> None:
    """``data`` as JSON at ``path`` (atomically), led by the command line that made it."""
    from caffeinit.fileio import atomic_write_bytes
    data = {"command": ["caffeinit", *args.argv], **data}
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode(), inputs=inputs)


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
                 tolerance=1e-4, deploy=None) -> None:
    """Export ``model``, or with ``deploy`` (from ``_onnx_net``) that net with ``model``'s weights."""
    from caffeinit.onnx_export import DEFAULT_OPSET, export_onnx
    if deploy is not None:
        from caffeinit.api import load
        model = load(deploy, model.module.blobs_numpy(copy=False), phase="test", device=model.device)
        _say_inference_net(say, model.net)
    result = export_onnx(model, path, opset=opset or DEFAULT_OPSET, static_batch=static_batch, check=check,
                         device=device, inputs=inputs, tolerance=tolerance)
    say(result.summary())


def cmd_convert(args) -> int:
    from caffeinit.api import load, read_net_param
    from caffeinit.data import peek_top_shapes
    from caffeinit.deploy_net import deploy_param, losses_in_test_phase

    say = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
    net = read_net_param(args.net)
    shapes = _input_shapes(args)
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
    inputs = [p for p in (args.net, args.weights) if p]
    _export_onnx(model, args.onnx, inputs, say, opset=args.opset, static_batch=args.static_batch,
                 check=not args.no_check, device=args.ort_device, deploy=_onnx_net(model, args.stage, args.level))
    return 0


def _add_pass_images_option(p) -> None:
    p.add_argument("--pass-images", type=int, metavar="N",
                   help="at most N images per gradient pass (default: the whole batch, or as few equal parts of it "
                   "as the memory available holds); pins how passes are split, so that --seed gives the same bits "
                   "on machines with other memory")


def build_parser() -> argparse.ArgumentParser:
    from caffeinit import __version__
    from caffeinit.init.config import InitConfig

    parser = argparse.ArgumentParser(prog="caffeinit", description=__doc__.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"caffeinit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a net's layers, blob shapes and parameters")
    _add_net_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_input_shape_option(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("upgrade", help="rewrite a net (and weights) in the current Caffe format")
    p.add_argument("net", help="network .prototxt in any historic format")
    p.add_argument("--weights", metavar="W.caffemodel", help="weights to upgrade too")
    p.add_argument("-o", "--output", required=True, metavar="OUT.prototxt")
    p.add_argument("--weights-out", metavar="OUT.caffemodel")
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("forward", help="run a forward pass and save blobs to an .npz")
    _add_net_options(p)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="an input array")
    p.add_argument("--blobs", default="outputs", help="outputs | all | NAME,NAME,... (default outputs)")
    p.add_argument("--out", required=True, metavar="OUT.npz")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--num-images", type=int, help="with --images: how many (default: the net's batch size)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_image_options(p)
    p.set_defaults(func=cmd_forward)

    p = sub.add_parser("convert", help="export a net with weights to ONNX, checked against ONNX Runtime",
                       description="TEST-phase ONNX with Caffe's blob names, a dynamic batch dimension, and pooling "
                       "lowered so every runtime gives Caffe's numbers. Verified with onnx.checker and ONNX Runtime "
                       "against the torch graph unless --no-check.")
    p.add_argument("net", help="network .prototxt (any Caffe format) or solver .prototxt")
    p.add_argument("--weights", metavar="W.caffemodel", help="weights (default: the prototxt's fillers)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx")
    p.add_argument("--opset", type=int, help="ONNX opset, 18 or newer (default 21)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension to the prototxt's")
    p.add_argument("--no-check", action="store_true", help="skip the checker and ONNX Runtime verification")
    p.add_argument("--ort-device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="ONNX Runtime execution provider for the check (default cpu)")
    p.add_argument("--stage", action="append", default=[], help="net state stage (repeatable)")
    p.add_argument("--level", type=int, default=0, help="net state level")
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
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, above any progress bar (Python's default adds the warning's source line)."""
    from tqdm.auto import tqdm
    tqdm.write(f"caffeinit: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    retain_freed_memory()  # 5-13% faster on large nets (see caffeinit/allocator.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _show_warning
        return _run_command(args)


def _run_command(args) -> int:
    try:
        return args.func(args)
    except CaffeinitError as e:
        if args.debug:
            raise
        print(f"caffeinit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("caffeinit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — no traceback for users unless --debug
        if args.debug:
            raise
        print(f"caffeinit: error: internal error ({type(e).__name__}: {e}); rerun with --debug for the traceback",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
