"""Reading nets and solvers from text (caffeinit/prototxt.py)."""
import glob
import os

import pytest
from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.prototxt import format_net, parse_net_text, read_net, read_solver, rewrite_ceil_mode
from caffeinit.proto import caffe_pb2
from tests.conftest import shared_path

POOLING = caffe_pb2.PoolingParameter

TINY_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 } }
"""


# -- corpus ----------------------------------------------------------------------------------------------------------
def test_every_corpus_net_reads_except_ssd():
    files = sorted(glob.glob(str(shared_path("corpus", "*.prototxt"))))
    assert len(files) >= 20
    for path in files:
        if "ssd__" in path:
            continue
        net = read_net(path)
        assert len(net.layer) >= 6 and not net.layers and not net.input, path
        assert all(layer.type for layer in net.layer), path


def test_ssd_fails_naming_file_line_layer_field_and_fork():
    path = shared_path("corpus", "ssd__MobileNetSSD_deploy.prototxt")
    with pytest.raises(CaffeinitError) as info:
        read_net(path)
    message = str(info.value)
    assert "\n" not in message
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines, 1) if "permute_param" in line)
    column = lines[first - 1].index("permute_param") + 1
    assert message.startswith(f"{path}:{first}:{column}: layer 'conv11_mbox_loc_perm': ")
    assert "unknown field 'permute_param'" in message and "SSD" in message


def test_densenet_ceil_mode_false_reads_as_round_mode_floor():
    net = read_net(shared_path("corpus", "shicai__DenseNet_121.prototxt"))
    pools = {layer.name: layer.pooling_param for layer in net.layer if layer.type == "Pooling"}
    assert len(pools) == 5
    assert pools["pool1"].HasField("round_mode") and pools["pool1"].round_mode == POOLING.FLOOR
    assert all(not p.HasField("round_mode") for name, p in pools.items() if name != "pool1")


# -- ceil_mode -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, mode", [("true", POOLING.CEIL), ("false", POOLING.FLOOR), ("1", POOLING.CEIL),
                                         ("0", POOLING.FLOOR), ("True", POOLING.CEIL)])
def test_ceil_mode_values(value, mode):
    net = parse_net_text(TINY_NET.replace("kernel_size: 2", f"kernel_size: 2 ceil_mode: {value}"))
    assert net.layer[1].pooling_param.round_mode == mode and net.layer[1].pooling_param.kernel_size == 2


def test_ceil_mode_rewrite_touches_only_pooling_param():
    text = ('# ceil_mode: false in a comment\n'
            'layer { name: "ceil_mode: true" pooling_param {\n ceil_mode : false pad: 1 } }\n'
            'layer { convolution_param { ceil_mode: true } }\n')
    out = rewrite_ceil_mode(text)
    assert out == ('# ceil_mode: false in a comment\n'
                   'layer { name: "ceil_mode: true" pooling_param {\n round_mode: FLOOR pad: 1 } }\n'
                   'layer { convolution_param { ceil_mode: true } }\n')
    # ceil_mode elsewhere stays an unknown field, reported at its own line.
    with pytest.raises(CaffeinitError, match=r"^net.prototxt:4:29: .*unknown field 'ceil_mode' in "
                                             r"caffe.ConvolutionParameter"):
        parse_net_text(out, "net.prototxt")


def test_line_numbers_survive_the_rewrite():
    text = 'layer {\n pooling_param {\n  ceil_mode: false\n }\n bogus_field: 1\n}\n'
    with pytest.raises(CaffeinitError, match=r"^n.prototxt:5:2: .*unknown field 'bogus_field'"):
        parse_net_text(text, "n.prototxt")


# -- errors ----------------------------------------------------------------------------------------------------------
def test_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "x"\n}\n')
    with pytest.raises(CaffeinitError) as info:
        read_net(path)
    message = str(info.value)
    assert message.startswith(f"{path}:5:10: ") and "\n" not in message


def test_unterminated_block_is_a_syntax_error():
    with pytest.raises(CaffeinitError, match=r"^x.prototxt:\d+:\d+: "):
        parse_net_text('layer { name: "a"\n', "x.prototxt")


def test_unknown_fields_name_their_fork():
    cases = {"roi_pooling_param": "Fast/Faster R-CNN", "bn_param": "BN", "interp_param": "PSPNet",
             "upsample_param": "SegNet", "normalize_param": "SSD"}
    for field, fork in cases.items():
        with pytest.raises(CaffeinitError) as info:
            parse_net_text(f'layer {{\n  name: "L"\n  {field} {{ }}\n}}\n', "f.prototxt")
        message = str(info.value)
        assert message.startswith(f"f.prototxt:3:3: layer 'L': unknown field '{field}'"), message
        assert fork in message, message


def test_plain_unknown_field_names_no_fork():
    with pytest.raises(CaffeinitError) as info:
        parse_net_text('layer { name: "a" convolution_param { num_outputs: 3 } }', "t.prototxt")
    message = str(info.value)
    assert "unknown field 'num_outputs' in caffe.ConvolutionParameter" in message and "fork" not in message


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.prototxt"
    with pytest.raises(CaffeinitError, match=f"{missing}: no such net file"):
        read_net(missing)


def test_caffemodel_given_as_net_is_refused():
    path = shared_path("corpus", "htshinichi__resnet50_stem.caffemodel")
    with pytest.raises(CaffeinitError, match=r"resnet50_stem.caffemodel: binary data, not a text net"):
        read_net(path)


@pytest.mark.parametrize("text, line, field", [
    ('name: "first"\nname: "second"\n', 2, "name"),
    ('layer { name: "ip" type: "InnerProduct"\n  inner_product_param { num_output: 3 num_output: 5 } }', 2,
     "num_output"),
    # a message field too: C++ TextFormat::Parse refuses it where Python's Merge would merge the two
    ('layer { name: "ip" type: "InnerProduct" inner_product_param { num_output: 3 }\n'
     '  inner_product_param { bias_term: false } }', 2, "inner_product_param"),
])
def test_non_repeated_field_given_twice_is_refused_like_caffe(text, line, field):
    # Caffe reads text with TextFormat::Parse (util/io.cpp), which forbids singular overwrites: "Non-repeated field
    # ... is specified multiple times" (OpenCV's Caffe reader, the same parser, refuses these nets too).
    with pytest.raises(CaffeinitError) as info:
        parse_net_text(text, "net.prototxt")
    message = str(info.value)
    assert message.startswith(f"net.prototxt:{line}:") and f"'{field}'" in message and "more than once" in message
    assert "\n" not in message


def test_solver_field_given_twice_is_refused(tmp_path):
    solver = write(tmp_path / "solver.prototxt", 'net: "a.prototxt"\nbase_lr: 0.1\nbase_lr: 0.2\n')
    with pytest.raises(CaffeinitError, match=r"solver.prototxt:3:.*'base_lr'.*more than once"):
        read_solver(solver)
    with pytest.raises(CaffeinitError, match=r"solver.prototxt:3:.*'base_lr'.*more than once"):
        read_net(solver)


def test_repeated_fields_may_repeat():
    net = parse_net_text('layer { name: "c" type: "Convolution" top: "t" top: "u"\n'
                         '  convolution_param { kernel_size: 2 kernel_size: 3 pad: [1, 0] } }')
    assert list(net.layer[0].top) == ["t", "u"]
    assert list(net.layer[0].convolution_param.kernel_size) == [2, 3]
    assert list(net.layer[0].convolution_param.pad) == [1, 0]


def test_error_on_a_one_line_layer_names_the_layer():
    with pytest.raises(CaffeinitError, match=r"^net.prototxt:3:\d+: layer 'pool': .*number 7"):
        parse_net_text(TINY_NET.replace("pool: MAX", "pool: 7"), "net.prototxt")


# -- encodings -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["gbk", "latin-1"])
def test_comments_in_another_encoding_are_skipped_as_caffe_does(tmp_path, encoding):
    # Chinese repositories often carry GBK comments; Caffe's tokenizer skips a comment's bytes unread.
    comment = "# 卷积层 (conv)" if encoding == "gbk" else "# Übung"
    text = TINY_NET.replace("\nlayer", f"\n{comment}\nlayer", 1) + f"{comment} 'quote\n"
    path = tmp_path / "net.prototxt"
    path.write_bytes(text.encode(encoding))
    net = read_net(path)
    assert [layer.name for layer in net.layer] == ["data", "pool"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_text_is_named_as_such(tmp_path, encoding):
    path = tmp_path / "net.prototxt"
    path.write_bytes(("\ufeff" if encoding.endswith("be") else "").encode(encoding) + TINY_NET.encode(encoding))
    with pytest.raises(CaffeinitError, match=r"net.prototxt: UTF-16 text, .* save the net as UTF-8"):
        read_net(path)


def test_a_string_in_another_encoding_names_its_line(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes(TINY_NET.replace('name: "pool"', 'name: "池化"').encode("gbk"))
    with pytest.raises(CaffeinitError, match=r"net.prototxt:3:\d+: bytes that are not UTF-8 outside a comment"):
        read_net(path)


# -- output ----------------------------------------------------------------------------------------------------------
def test_format_net_round_trips():
    net = read_net(shared_path("corpus", "v1__alexnet_deploy.prototxt"))
    text = format_net(net)
    assert text.startswith('name: "AlexNet"\nlayer {\n  name: "input"\n  type: "Input"')
    assert parse_net_text(text) == net


# -- solvers ---------------------------------------------------------------------------------------------------------
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_solver_naming_a_net_file_beside_it(tmp_path, monkeypatch):
    write(tmp_path / "model" / "train_val.prototxt", TINY_NET)
    solver = write(tmp_path / "model" / "solver.prototxt",
                   'net: "train_val.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    monkeypatch.chdir(tmp_path)  # not the solver's folder
    net = read_net(solver)
    assert net.name == "tiny" and [layer.name for layer in net.layer] == ["data", "pool"]
    parsed = read_solver(solver)
    assert parsed.type == "Nesterov" and parsed.base_lr == pytest.approx(0.01)


def test_solver_path_written_for_the_caffe_root(tmp_path, monkeypatch):
    # BVLC's solvers name nets relative to the Caffe root, where caffe runs.
    write(tmp_path / "caffe" / "models" / "m" / "train_val.prototxt", TINY_NET)
    solver = write(tmp_path / "caffe" / "models" / "m" / "solver.prototxt",
                   'train_net: "models/m/train_val.prototxt"\n')
    monkeypatch.chdir(tmp_path)
    assert read_net(solver).name == "tiny"
    monkeypatch.chdir(tmp_path / "caffe")
    assert read_net(os.path.join("models", "m", "solver.prototxt")).name == "tiny"


def test_solver_with_inline_net_param_upgrades_it(tmp_path):
    v1 = 'name: "inline" layers { name: "r" type: RELU bottom: "x" top: "y" }'
    solver = write(tmp_path / "solver.prototxt", f"net_param {{ {v1} }}\nmax_iter: 10\n")
    net = read_net(solver)
    assert net.name == "inline" and (net.layer[0].name, net.layer[0].type) == ("r", "ReLU")
    assert read_solver(solver).net_param.layer[0].type == "ReLU"


def test_solver_with_only_a_test_net(tmp_path):
    write(tmp_path / "t.prototxt", TINY_NET)
    solver = write(tmp_path / "solver.prototxt", 'test_net: "t.prototxt"\ntest_iter: 1\n')
    assert read_net(solver).name == "tiny"


def test_solver_net_file_is_the_file_read_net_reads(tmp_path, monkeypatch):
    """What a command given a solver reads (and so must not overwrite): the net file it names, found as read_net
    finds it; None for a net, an inline net, or a file read_net refuses."""
    from caffeinit.prototxt import solver_net_file
    net = write(tmp_path / "caffe" / "models" / "m" / "train_val.prototxt", TINY_NET)
    solver = write(tmp_path / "caffe" / "models" / "m" / "solver.prototxt",
                   'train_net: "models/m/train_val.prototxt"\nbase_lr: 0.1\n')
    monkeypatch.chdir(tmp_path)
    assert solver_net_file(solver).resolve() == net.resolve()
    test_only = write(tmp_path / "t" / "solver.prototxt", 'test_net: "../caffe/models/m/train_val.prototxt"\n')
    assert solver_net_file(test_only).resolve() == net.resolve()
    inline = write(tmp_path / "inline.prototxt", 'net_param { name: "x" }\nmax_iter: 10\n')
    broken = write(tmp_path / "two.prototxt", 'net: "a.prototxt"\ntrain_net: "b.prototxt"\n')
    empty = write(tmp_path / "empty.prototxt", "")
    for path in (net, inline, broken, empty, tmp_path / "missing.prototxt"):
        assert solver_net_file(path) is None, path


def test_solver_naming_two_train_nets_is_an_error(tmp_path):
    solver = write(tmp_path / "solver.prototxt", 'net: "a.prototxt"\ntrain_net: "b.prototxt"\n')
    with pytest.raises(CaffeinitError, match="more than one train net"):
        read_net(solver)


def test_solver_with_missing_net_file_names_it(tmp_path):
    solver = write(tmp_path / "solver.prototxt", 'net: "gone/train_val.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(CaffeinitError, match=r"solver.prototxt: net file 'gone/train_val.prototxt' not found"):
        read_net(solver)


def test_bad_solver_reports_the_solver_syntax_error(tmp_path):
    solver = write(tmp_path / "solver.prototxt", 'net: "a.prototxt"\nbase_lr 0.1\n')
    with pytest.raises(CaffeinitError, match=r"solver.prototxt:2:\d+: "):
        read_solver(solver)


def test_solver_text_is_not_taken_for_a_net():
    solver = text_format.Parse('net: "x.prototxt" base_lr: 0.1', caffe_pb2.SolverParameter())
    assert solver.net == "x.prototxt"
    with pytest.raises(CaffeinitError, match="unknown field 'net' in caffe.NetParameter"):
        parse_net_text('net: "x.prototxt" base_lr: 0.1')


def test_read_net_on_a_bad_solver_reports_the_solver_error(tmp_path):
    solver = write(tmp_path / "solver.prototxt", 'net: "a.prototxt"\nbase_lr 0.1\n')
    with pytest.raises(CaffeinitError, match=r"solver.prototxt:2:\d+: ") as info:
        read_net(solver)
    assert "NetParameter" not in str(info.value)


def test_solver_without_a_net_is_an_error(tmp_path):
    solver = write(tmp_path / "solver.prototxt", 'base_lr: 0.1\nmax_iter: 5\n')
    with pytest.raises(CaffeinitError, match="solver.prototxt: a solver that names no net"):
        read_net(solver)


def test_format_net_with_ceil_mode_is_the_inverse_of_the_rewrite():
    from caffeinit.prototxt import format_net_with_ceil_mode
    net = parse_net_text('layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 '
                         'round_mode: FLOOR } }\nlayer { name: "q" type: "Pooling" pooling_param { kernel_size: 2 '
                         'round_mode: CEIL } }\n')
    text = format_net_with_ceil_mode(net)
    assert "round_mode" not in text and "ceil_mode: false" in text and "ceil_mode: true" in text
    assert rewrite_ceil_mode(text) == format_net(net)
