import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def shared_path(*parts) -> pathlib.Path:
    """A path inside ../shared; skips the test when ../shared is absent (e.g. a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return path


@pytest.fixture
def shared():
    return shared_path
