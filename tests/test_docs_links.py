"""Every relative link in README.md and docs/ points at a file (or folder) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
# [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def _links(path: Path):
    inside = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if inside:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            yield n, target


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("#")


def _anchors(md: Path) -> set[str]:
    text = md.read_text(encoding="utf-8")
    ids = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6}\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        ids.add(slug)
    return ids


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(doc):
    broken = []
    for n, target in _links(doc):
        if not _relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{doc.relative_to(REPO)}:{n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{doc.relative_to(REPO)}:{n}: {target} (no such heading or anchor)")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_links():
    found = [t for doc in DOCS for _, t in _links(doc) if _relative(t)]
    assert len(found) > 20 and any(t.startswith("images/") for t in found)


def _documented_commands():
    """(doc, line, subcommand, flags) of every ``smirk-edge SUB ...`` line in the code blocks of the guides."""
    out = []
    for doc in DOCS:
        blocks, current, lang = [], None, ""
        for line in doc.read_text(encoding="utf-8").splitlines():
            fence = FENCE.match(line.strip())
            if fence and current is None:
                current, lang = [], line.strip()[3:].strip()
            elif fence:
                if lang in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(current))
                current = None
            elif current is not None:
                current.append(line)
        for block in blocks:
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                for m in re.finditer(r"(?:^|[\s;&|(])smirk-edge\s+([a-z][a-z-]+)((?:[^;&|#]*))", line):
                    flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))
                    out.append((doc.relative_to(REPO), line.strip(), m.group(1), flags))
    return out


def test_documented_commands_and_flags_exist(capsys):
    """Each ``smirk-edge SUB --flag`` in a guide names a subcommand and flags its --help lists."""
    from smirk_edge.cli import SUBCOMMANDS, main

    helps: dict[str, str] = {}
    bad = []
    commands = _documented_commands()
    assert len(commands) > 30
    for doc, line, sub, flags in commands:
        if sub not in SUBCOMMANDS:
            bad.append(f"{doc}: unknown subcommand {sub!r}: {line}")
            continue
        if sub not in helps:
            try:
                main([sub, "--help"])
            except SystemExit:
                pass
            helps[sub] = capsys.readouterr().out
        missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", helps[sub])]
        if missing:
            bad.append(f"{doc}: smirk-edge {sub}: no {', '.join(missing)}: {line}")
    assert not bad, "\n".join(bad)
