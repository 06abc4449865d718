"""``smirk-edge reconstruct --refine {on,off,auto}``: the CLI follows the Reconstructor's default
unless told otherwise; ``--no-refine`` still works; contradicting flags fail before any work."""

from __future__ import annotations

import argparse

import pytest

from smirk_edge import reconstructor
from smirk_edge.cli import main
from smirk_edge.errors import OptionError
from smirk_edge.reconstruct_cli import add_arguments, refine_options


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["x.jpg", "-o", "out", *argv])


@pytest.mark.parametrize("argv, expected", [
    ((), {}),  # the Reconstructor's default (refine="auto" and its threshold)
    (("--refine", "on"), {"refine": True}),
    (("--refine", "off"), {"refine": False}),
    (("--refine", "auto"), {"refine": "auto"}),
    (("--no-refine",), {"refine": False}),
    (("--no-refine", "--refine", "off"), {"refine": False}),
    (("--refine", "auto", "--refine-threshold", "0.2"), {"refine": "auto", "refine_threshold": 0.2}),
    (("--refine-threshold", "0.2"), {"refine_threshold": 0.2}),
])
def test_refine_flags(argv, expected):
    assert refine_options(_args(*argv)) == expected


@pytest.mark.parametrize("argv", [("--no-refine", "--refine", "on"), ("--refine", "off", "--refine-threshold", "0.2")])
def test_contradicting_refine_flags(argv):
    with pytest.raises(OptionError):
        refine_options(_args(*argv))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("argv, refine", [((), "default"), (("--refine", "on"), True), (("--no-refine",), False)])
def test_cli_passes_only_what_was_asked(monkeypatch, tmp_path, argv, refine):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(reconstructor, "Reconstructor", fake)
    img = tmp_path / "a.jpg"
    img.write_bytes(b"not read: the Reconstructor stops first")
    with pytest.raises(_Stop):
        main(["reconstruct", str(img), "-o", str(tmp_path / "out"), "--quiet", *argv])
    assert seen.get("refine", "default") == refine
    if refine == "default":
        assert "refine_threshold" not in seen


def test_contradiction_fails_before_the_model_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reconstructor, "Reconstructor", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["reconstruct", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "out"), "--no-refine", "--refine", "on"])
    assert code == 1 and "--no-refine contradicts --refine on" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
