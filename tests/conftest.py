"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tests/factories.py


def data_root() -> Path | None:
    """``$SMIRK_EDGE_DATA`` or ``../shared/data`` beside the repository, if present."""
    env = os.environ.get("SMIRK_EDGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(TESTS.parent.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real photos not found: set SMIRK_EDGE_DATA or put shared/data beside the repository")
    return root
