import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# ../shared beside the checkout (developers, CI); a shared/ inside the checkout on machines that only get the repo.
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else ROOT / "shared"


def shared_path(*parts) -> pathlib.Path:
    """A path inside ../shared; skips the test when ../shared is absent (e.g. a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return path


def conformance_cases() -> list:
    """The conformance case names for parametrizing: one skipped param where ../shared is absent (and only then);
    where ../shared is there without cases, one param naming that, which fails (a missing folder is not a pass)."""
    if not SHARED.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip("../shared absent"))]
    folder = SHARED / "conformance"
    cases = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return cases or ["no conformance cases in ../shared"]


@pytest.fixture
def shared():
    return shared_path
