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


@pytest.fixture
def shared():
    return shared_path
