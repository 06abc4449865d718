"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tests/factories.py


from factories import data_root  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real photos not found: set SMIRK_EDGE_DATA or put shared/data beside the repository")
    return root


@pytest.fixture(scope="session")
def astronaut():
    """The public-domain astronaut portrait shipped in smirk_edge/assets/examples (512 x 512 BGR)."""
    import cv2

    from smirk_edge.benchmarks.stress_sheet import example_photo

    img = cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (512, 512, 3)
    return img
