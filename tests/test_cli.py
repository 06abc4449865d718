import json

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
