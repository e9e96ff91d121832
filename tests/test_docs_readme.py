"""The README tells the truth: its options exist, every option is documented, its command lines parse, the run
synopsis shows the parser's defaults and choices, and the Python API snippet runs and does what it says."""
import re
import shlex

from caffeinit import cli
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
NOT_CLI = {"-h", "--help"}  # argparse's own


def _subparsers() -> dict:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return parser, action.choices


def _options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - NOT_CLI


def _code_blocks(language: str = "") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_option_named_exists():
    top, subs = _subparsers()
    known = _options(top).union(*(_options(p) for p in subs.values()))
    named = set(OPTION.findall(README))
    assert named - known == set()


def test_every_option_documented():
    """Each option of each command is named in the README by one of its spellings (-o or --output, --no-before)."""
    _, subs = _subparsers()
    for name, parser in subs.items():
        missing = [a.option_strings for a in parser._actions if a.option_strings and set(a.option_strings) - NOT_CLI
                   and not any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", README) for s in a.option_strings)]
        assert missing == [], f"caffeinit {name}: not in the README"


def test_command_table_options_belong_to_their_command():
    _, subs = _subparsers()
    rows = re.findall(r"^\| `caffeinit (\w+) ([^|`]*(?:\\\|[^|`]*)*)` \|", README, flags=re.M)
    assert {name for name, _ in rows} == set(subs)
    for name, synopsis in rows:
        assert set(OPTION.findall(synopsis)) <= _options(subs[name]), name


def test_code_block_command_lines_parse():
    lines = []
    for block in _code_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            if "caffeinit " in line and "[" not in line:
                lines.append(line[line.index("caffeinit ") + len("caffeinit "):])
    assert lines
    parser = cli.build_parser()
    for line in lines:
        parser.parse_args(shlex.split(line))  # SystemExit on an unknown option or a missing required one


def test_debug_goes_before_or_after_the_command_as_the_readme_says():
    assert "`--debug` (before or after the command)" in README
    parser = cli.build_parser()
    for command, sub in _subparsers()[1].items():
        args = [command, "net.prototxt"] + (["-o", "x"] if "-o" in sub._option_string_actions else [])
        assert parser.parse_args(["--debug"] + args).debug
        assert parser.parse_args(args + ["--debug"]).debug
        assert not parser.parse_args(args).debug


def test_run_synopsis_defaults_and_choices():
    _, subs = _subparsers()
    (synopsis,) = [b for b in _code_blocks() if b.startswith("caffeinit run ")]
    actions = {s: a for a in subs["run"]._actions for s in a.option_strings}
    checked = 0
    for option, value in re.findall(r"\[(--[a-z-]+) ([^\]\s]+)\]", synopsis):
        action = actions[option]
        if "|" in value:
            assert set(value.split("|")) == set(action.choices or value.split("|")), option
            if action.choices:
                checked += 1
        elif re.fullmatch(r"[0-9.]+|auto|test|ieee", value):
            default = action.default
            if default is None:  # decided at run time (--num-images: 160 or what memory holds): its help says
                assert f"(default {value}" in action.help, f"{option}: README {value}, help {action.help!r}"
            else:
                assert type(default)(value) == default, f"{option}: README {value}, parser {default}"
            checked += 1
    assert checked >= 10


def test_python_api_snippet(tmp_path):
    """The README's snippet verbatim, with the bundled CIFAR-10 net and images for its placeholder file names."""
    import numpy as np
    import caffeinit

    (snippet,) = _code_blocks("python")
    net = ROOT / "models" / "cifar10_quick" / "deploy.prototxt"
    weights = tmp_path / "net.caffemodel"
    caffeinit.load(net, device="cpu").save_caffemodel(weights)  # the prototxt's fillers as "net.caffemodel"
    files = {"deploy.prototxt": net, "net.caffemodel": weights, "list.txt": ROOT / "models" / "images" / "list.txt",
             "init.caffemodel": tmp_path / "init.caffemodel", "init.onnx": tmp_path / "init.onnx"}
    for name, path in files.items():
        assert f'"{name}"' in snippet
        snippet = snippet.replace(f'"{name}"', repr(str(path)))
    images = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    scope = {"images": images}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert set(scope["out"]) == {"prob"} and scope["out"]["prob"].shape == (2, 10)
    assert {"data", "conv1", "prob"} <= set(scope["blobs"])
    report = scope["report"]
    # InitConfig(method="kmeans") draws every learnable layer with k-means (not "kept" loaded weights)
    assert {r.method for r in report.layers} == {"kmeans"}
    assert report.num_images == 160
    assert (tmp_path / "init.caffemodel").stat().st_size > 0 and (tmp_path / "init.onnx").stat().st_size > 0
