import json
import re

import pytest

from smirk_edge import __version__
from smirk_edge.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"smirk-edge {__version__}"


def test_info_text_and_json(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "CPU:" in text and "Engines:" in text
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["smirk_edge"] == __version__
    assert set(info["packages"]) >= {"numpy", "onnxruntime", "openvino", "tensorrt", "torch"}


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_convert_flame_subcommand_takes_its_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert-flame", "--help"])
    assert e.value.code == 0
    assert "--landmark-embedding" in capsys.readouterr().out
    # missing inputs: a typed error reported as exit code 1 or argparse's 2, never a traceback
    with pytest.raises(SystemExit) as e:
        main(["convert-flame"])
    assert e.value.code == 2


def test_every_subcommand_is_declared_one_way():
    """Each row names a module's add_arguments(parser) / run(args) pair; nothing parses its own argv."""
    import argparse
    import inspect

    from smirk_edge.cli import SUBCOMMANDS

    for name, spec in SUBCOMMANDS.items():
        add_arguments, run = spec.resolve()
        add_arguments(argparse.ArgumentParser(prog=name))
        assert list(inspect.signature(run).parameters) == ["args"], name


def test_python_m_entry_points_build_their_parsers_from_the_rows(capsys):
    from smirk_edge.cli import run_command
    from smirk_edge.training import cli as training_cli

    with pytest.raises(SystemExit) as e:
        training_cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "python -m smirk_edge.training.cli" in out
    listed = set(re.findall(r"^    ([a-z-]+) ", out, re.M))
    assert listed == {"train", "finetune", "evaluate", "pack"}, listed
    assert run_command("info", ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["smirk_edge"] == __version__
    with pytest.raises(SystemExit) as e:
        run_command("export", ["--help"])
    assert e.value.code == 0 and "--int8-cpu-class" in capsys.readouterr().out


def test_encoder_copy_tool_reports_errors_on_one_line(tmp_path, capsys):
    pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[export]')")
    from smirk_edge.training.cli_export_encoder import main as copy_main

    with pytest.raises(SystemExit) as e:
        copy_main([])
    assert e.value.code == 2
    assert copy_main([str(tmp_path / "missing.pt"), str(tmp_path / "out.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
