"""The README's commands and CI agree; every shipped file named in NOTICE exists."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    block = lines[start + 1:lines.index("```", start + 1)]
    return [line for line in block if line and not line.startswith("#")]


def test_readme_opens_with_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def test_licence_files_present():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "non-commercial" in (ROOT / "NOTICE.md").read_text()
