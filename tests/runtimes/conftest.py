"""Fixtures for the runtime tests: the tiny ONNX model of runtime_models.py, and a broken file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime_models import build_onnx


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return build_onnx(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def broken_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "broken.onnx"
    path.write_bytes(b"this is not a protobuf")
    return path
