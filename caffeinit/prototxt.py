"""Reading Caffe's text formats: nets (any historic version, upgraded) and solvers.

Text is parsed like Caffe's C++ ``TextFormat::Parse`` (``util/io.cpp``), which forbids singular overwrites: a
non-repeated field (a scalar or a message such as ``convolution_param``) given twice in one message is an error, not
"the last one wins" (that is ``TextFormat::Merge``). Syntax errors and unknown fields become one-line
CaffeinitErrors ``FILE:LINE:COL: message``; fields that only exist in well-known Caffe forks name the fork. Comments
may hold bytes that are not UTF-8 (GBK or Latin-1 comments are common, and Caffe skips them unread). The fork
spelling ``pooling_param { ceil_mode: true|false }`` is accepted as BVLC's ``round_mode: CEIL|FLOOR``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from caffeinit.upgrade import upgrade_net_as_needed, upgrade_solver_as_needed

# Fields that exist only in Caffe forks, and the fork they come from.
FORK_FIELDS = {
    "permute_param": "SSD (weiliu89/caffe)",
    "prior_box_param": "SSD (weiliu89/caffe)",
    "detection_output_param": "SSD (weiliu89/caffe)",
    "detection_evaluate_param": "SSD (weiliu89/caffe)",
    "normalize_param": "SSD (weiliu89/caffe)",
    "multibox_loss_param": "SSD (weiliu89/caffe)",
    "annotated_data_param": "SSD (weiliu89/caffe)",
    "roi_pooling_param": "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "smooth_l1_loss_param": "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "psroi_pooling_param": "R-FCN (daijifeng001/caffe-rfcn)",
    "bn_param": "SegNet / PSPNet BN (bn_param)",
    "upsample_param": "SegNet (alexgkendall/caffe-segnet) or YOLO",
    "interp_param": "PSPNet / DeepLab (hszhao/PSPNet)",
    "seg_accuracy_param": "DeepLab",
    "image_seg_data_param": "DeepLab",
    "shuffle_channel_param": "ShuffleNet",
    "relu6_param": "MobileNet-v2",
    "region_param": "YOLO",
    "reorg_param": "YOLO",
    "center_loss_param": "caffe-face (ydwen/caffe-face)",
    "ceil_mode": "a fork with PR #3057's ceil_mode",
}

_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_TWICE = re.compile(r'Message type "([\w.]+)" should not have multiple "(\w+)" (?:fields|extensions)')

# Tokens of protobuf text format that matter for finding `ceil_mode` inside `pooling_param`.
_TOKEN = re.compile(r'''
    (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ceil>ceil_mode\s*:\s*(?P<value>true|false|True|False|t|f|1|0)\b)
  | (?P<ident>[A-Za-z_][\w.]*)
  | (?P<open>[{<])
  | (?P<close>[}>])
''', re.VERBOSE)


def rewrite_ceil_mode(text: str) -> str:
    """Replace the fork field ``ceil_mode: true|false`` by ``round_mode: CEIL|FLOOR`` where it appears directly
    inside a ``pooling_param`` block. Line numbers stay the same (errors still point at the right line)."""
    if "ceil_mode" not in text:
        return text
    pieces, pos = [], 0
    blocks: list[str] = []  # names of the enclosing message blocks
    last_ident = ""
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup if match.lastgroup != "value" else "ceil"
        if kind == "open":
            blocks.append(last_ident)
        elif kind == "close":
            if blocks:
                blocks.pop()
        elif kind == "ident":
            last_ident = match.group()
        elif kind == "ceil" and blocks and blocks[-1] == "pooling_param":
            ceil = match.group("value") in ("true", "True", "t", "1")
            pieces.append(text[pos:match.start()])
            pieces.append("round_mode: " + ("CEIL" if ceil else "FLOOR"))
            pos = match.end()
    pieces.append(text[pos:])
    return "".join(pieces)


def _layer_name_at(text: str, line: int, column: int = 0) -> str | None:
    """The name of the layer block enclosing ``line`` (1-based) of ``text`` at ``column`` (1-based; 0: the end of
    the line), if any (best effort)."""
    rows = text.splitlines(keepends=True)
    end = sum(len(row) for row in rows[:line])
    if column > 0 and line <= len(rows):
        end -= len(rows[line - 1]) - min(column - 1, len(rows[line - 1]))
    blocks: list[tuple[str, str | None]] = []  # (block name, layer name seen in it)
    last_ident = ""
    for match in _TOKEN.finditer(text, 0, end):
        kind = match.lastgroup
        if kind == "open":
            blocks.append((last_ident, None))
        elif kind == "close" and blocks:
            blocks.pop()
        elif kind == "ident":
            last_ident = match.group()
        elif kind == "string" and last_ident == "name" and blocks and blocks[-1][0] in ("layer", "layers"):
            blocks[-1] = (blocks[-1][0], match.group()[1:-1])
    layer_names = [name for block, name in blocks if block in ("layer", "layers") and name]
    return layer_names[-1] if layer_names else None


def _parse_error(error: text_format.ParseError, filename: str, text: str) -> CaffeinitError:
    """One line ``FILE:LINE:COL: message``, naming the layer and, for fork-only fields, the fork."""
    line, column = error.GetLine(), error.GetColumn()
    where = f"{filename}:{line}:{column}" if line else filename
    layer = _layer_name_at(text, line, column) if line else None
    if layer:
        where += f": layer '{layer}'"
    message = str(error)
    # The parser's message starts with its own "LINE:COL : ".
    message = re.sub(r"^\d+:\d+ : ", "", message)
    unknown = _NO_FIELD.search(message)
    if unknown:
        message_type, field = unknown.groups()
        message = f"unknown field '{field}' in {message_type}"
        if field in FORK_FIELDS:
            message += f": it is not in BVLC Caffe, it comes from the {FORK_FIELDS[field]} fork"
    twice = _TWICE.search(message)
    if twice:
        message_type, field = twice.groups()
        message = (f"non-repeated field '{field}' of {message_type} is given more than once (Caffe's parser refuses "
                   "this: keep one)")
    return CaffeinitError(f"{where}: {message}")


def _merge_text(text: str, message, filename: str):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise _parse_error(e, filename, text) from None
    return message


def parse_net_text(text: str, filename: str = "<string>") -> caffe_pb2.NetParameter:
    """A NetParameter from prototxt text, upgraded to the current format."""
    net = _merge_text(rewrite_ceil_mode(text), caffe_pb2.NetParameter(), filename)
    upgrade_net_as_needed(net, filename)
    return net


def parse_solver_text(text: str, filename: str = "<string>") -> caffe_pb2.SolverParameter:
    """A SolverParameter from text, upgraded (old ``solver_type`` enum -> ``type``)."""
    solver = _merge_text(rewrite_ceil_mode(text), caffe_pb2.SolverParameter(), filename)
    upgrade_solver_as_needed(solver, filename)
    for field in ("net_param", "train_net_param"):
        if solver.HasField(field):
            upgrade_net_as_needed(getattr(solver, field), f"{filename} ({field})")
    for i, net in enumerate(solver.test_net_param):
        upgrade_net_as_needed(net, f"{filename} (test_net_param {i})")
    return solver


def _read_text(path: str | os.PathLike, what: str) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CaffeinitError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise CaffeinitError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CaffeinitError(f"{path}: UTF-16 text, which Caffe cannot read either: save the {what} as UTF-8")
    if b"\x00" in data:
        raise CaffeinitError(f"{path}: binary data, not a text {what} (a .caffemodel? pass weights separately)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = _decode_legacy_comments(data, path)
    return text.removeprefix("\ufeff")


# The code part of a line: anything but quotes and '#', and whole strings (which never span lines).
_CODE = re.compile(r'''(?:[^"'#\n]|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')*''')


def _decode_legacy_comments(data: bytes, path) -> str:
    """Text whose bytes are not all UTF-8: Caffe's parser reads bytes and skips comments unread, so bytes of another
    encoding (GBK, Latin-1) in a comment are fine and become U+FFFD here; elsewhere (in a string: a layer name or a
    path) no decoding could give the bytes Caffe would use, so the line is named."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    for number, line in enumerate(lines, 1):
        if not any("\udc80" <= c <= "\udcff" for c in line):
            continue
        code = _CODE.match(line).group()
        if not line.startswith("#", len(code)):  # an unterminated string: the whole line is code
            code = line
        if any("\udc80" <= c <= "\udcff" for c in code):
            column = next(i for i, c in enumerate(code, 1) if "\udc80" <= c <= "\udcff")
            raise CaffeinitError(f"{path}:{number}:{column}: bytes that are not UTF-8 outside a comment (a binary "
                                 "file? a text net or solver must be UTF-8 outside its comments)")
        lines[number - 1] = code + "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in line[len(code):])
    return "\n".join(lines)


def resolve_solver_net_path(net_path: str, solver_path: str | os.PathLike) -> Path:
    """Where the net file a solver names lives.

    Caffe opens it relative to the current directory (solvers in BVLC's tree say
    ``net: "models/bvlc_alexnet/train_val.prototxt"`` and are run from the Caffe root). We try, in order: the path
    as given (absolute or relative to the current directory, Caffe's rule), then relative to the solver's folder
    and to each folder above it (the Caffe root the path was written for), then the file name alone in the
    solver's folder (a solver shipped beside its net).
    """
    given = Path(net_path)
    if given.is_absolute():
        candidates = [given]
    else:
        folder = Path(solver_path).resolve().parent
        candidates = [given] + [base / given for base in (folder, *folder.parents)] + [folder / given.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CaffeinitError(f"{solver_path}: net file '{net_path}' not found (looked in the current directory and "
                         "beside the solver)")


def _solver_net(solver: caffe_pb2.SolverParameter, solver_path: str) -> tuple[str, caffe_pb2.NetParameter | Path]:
    """(field, the inline net or the path of the net file) of the net ``_net_from_solver`` reads."""
    train_fields = [f for f in ("train_net_param", "train_net", "net_param", "net") if solver.HasField(f)]
    if len(train_fields) > 1:
        raise CaffeinitError(f"{solver_path}: the solver names more than one train net "
                             f"({', '.join(train_fields)}); keep one")
    if train_fields:
        field = train_fields[0]
        if field.endswith("_param"):
            return field, getattr(solver, field)
        return field, resolve_solver_net_path(getattr(solver, field), solver_path)
    if solver.test_net_param:
        return "test_net_param", solver.test_net_param[0]
    if solver.test_net:
        return "test_net", resolve_solver_net_path(solver.test_net[0], solver_path)
    raise CaffeinitError(f"{solver_path}: a solver that names no net (set net, net_param, train_net or "
                         "train_net_param)")


def _net_from_solver(solver: caffe_pb2.SolverParameter, solver_path: str) -> caffe_pb2.NetParameter:
    """The train net a solver names (exactly one of train_net_param, train_net, net_param, net, as Caffe's
    Solver::InitTrainNet requires); a solver with only test nets gives its first test net."""
    field, source = _solver_net(solver, solver_path)
    if isinstance(source, Path):
        return _read_net_file(source)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(source)
    upgrade_net_as_needed(net, f"{solver_path} ({field})")
    return net


def solver_net_file(path: str | os.PathLike) -> Path | None:
    """The net file that ``read_net(path)`` reads where ``path`` is a solver that names one (``net``,
    ``train_net`` or its first ``test_net``); None for a net, a solver holding its net inline, or a file that
    ``read_net`` refuses (it says why). A net fails to parse as a solver at its first net-only field, so asking
    costs little even for large nets."""
    try:
        text = rewrite_ceil_mode(_read_text(path, "net"))
        solver = caffe_pb2.SolverParameter()
        text_format.Parse(text, solver)
        if not solver.ListFields():
            return None  # an empty file: read_net takes it as an empty net
        _, source = _solver_net(solver, os.fspath(path))
    except (CaffeinitError, text_format.ParseError):
        return None
    return source if isinstance(source, Path) else None


def _read_net_file(path: Path) -> caffe_pb2.NetParameter:
    """A net file a solver names (never itself a solver)."""
    return parse_net_text(_read_text(path, "net"), os.fspath(path))


def read_net(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """A net from a .prototxt in any historic format (upgraded), or the net a solver .prototxt names.

    A solver is recognised by its first top-level field being a SolverParameter field. Its net is the train net
    (see ``_net_from_solver``; file paths as ``resolve_solver_net_path`` explains). Inline nets are upgraded too,
    which Caffe does not do. The solver's ``train_state`` is not applied: callers choose phase, level and stages.
    """
    message = read_net_or_solver(path)
    if isinstance(message, caffe_pb2.SolverParameter):
        return _net_from_solver(message, os.fspath(path))
    return message


def read_net_or_solver(path: str | os.PathLike) -> caffe_pb2.NetParameter | caffe_pb2.SolverParameter:
    """The net or the solver a .prototxt holds, upgraded (a solver: its ``solver_type`` and inline nets; a solver
    is recognised as ``read_net`` says)."""
    filename = os.fspath(path)
    text = _read_text(path, "net")
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(rewrite_ceil_mode(text), net)
    except text_format.ParseError as e:
        unknown = _NO_FIELD.search(str(e))
        if not (unknown and unknown.group(1) == "caffe.NetParameter"
                and unknown.group(2) in caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name):
            raise _parse_error(e, filename, rewrite_ceil_mode(text)) from None
        return parse_solver_text(text, filename)  # a solver: its first field is unknown to NetParameter
    upgrade_net_as_needed(net, filename)
    return net


def read_solver(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """A SolverParameter from a solver .prototxt (old ``solver_type`` upgraded, inline nets upgraded)."""
    filename = os.fspath(path)
    return parse_solver_text(_read_text(path, "solver"), filename)


def format_net(net: caffe_pb2.NetParameter | caffe_pb2.SolverParameter) -> str:
    """Prototxt text of ``net`` or of a solver (what ``caffeinit upgrade`` writes)."""
    return text_format.MessageToString(net)


def format_net_with_ceil_mode(net: caffe_pb2.NetParameter) -> str:
    """Prototxt text of ``net`` with ``round_mode`` spelled as the forks' bool ``ceil_mode`` (the inverse of
    ``rewrite_ceil_mode``), for readers such as OpenCV's dnn whose Caffe proto has only the fork field."""
    text = format_net(net)
    text = re.sub(r"round_mode:\s*CEIL", "ceil_mode: true", text)
    return re.sub(r"round_mode:\s*FLOOR", "ceil_mode: false", text)
