"""docs/ARCHITECTURE.md tells the truth: the files it names exist, every module of the package is in its table, and
the functions, classes and attributes it names are defined in the package."""
import re

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
SOURCES = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "caffeinit").rglob("*.py")
                    if "proto" not in p.parts)


def test_named_files_exist():
    paths = set(re.findall(r"`((?:caffeinit|proto|tools|docs)/[\w/.]+)`", DOC))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_every_module_in_the_table():
    table = "\n".join(line for line in DOC.splitlines() if line.startswith("| `"))
    package = ROOT / "caffeinit"
    modules = [p for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    modules += [p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    named = [p.relative_to(ROOT).as_posix() + ("/" if p.is_dir() else "") for p in modules]
    missing = sorted(n for n in named if f"`{n}" not in table)  # a package: any of its files
    assert missing == []


def test_named_functions_exist():
    """Every `name(...)` and `module.name` the document gives is defined (def, class, attribute or field)."""
    calls = re.findall(r"`(?:[\w.]+\.)?(\w+)\(", DOC)
    dotted = re.findall(r"`(?!torch\.)(?:caffeinit\.)?(?:[a-z_]+\.)+(\w+)`", DOC)
    names = set(calls) | {n for n in dotted if n not in ("py", "md", "proto", "cpp", "h5")}
    assert len(names) > 20
    missing = sorted(n for n in names if not re.search(
        rf"(def {n}\b|class {n}\b|^\s+{n}\s*[:=]|self\.{n}\s*[:=]|^{n}\s*=)", SOURCES, flags=re.M))
    # Caffe's own names the document cites for comparison
    assert set(missing) <= {"FilterNet", "StateMeetsRule", "ToProto", "LayerSetUp", "Reshape"}, missing
