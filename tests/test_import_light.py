"""``import smirk_edge`` and the device-side CLI need numpy + OpenCV only.

A subprocess installs an import hook that makes every heavy dependency unimportable, then
imports the core package and runs ``smirk-edge --version`` and ``smirk-edge info``.
"""

import json
import subprocess
import sys
import textwrap

HEAVY = ["torch", "timm", "torchvision", "onnx", "onnxruntime", "openvino", "tensorrt", "nncf", "scipy",
         "tqdm", "onnxscript", "mediapipe", "cuda", "matplotlib"]

CORE_MODULES = ["smirk_edge", "smirk_edge.errors", "smirk_edge.face_model", "smirk_edge.face_model.format",
                "smirk_edge.face_model.model", "smirk_edge.camera", "smirk_edge.cli", "smirk_edge.system"]


def _run_blocked(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCK = set({HEAVY!r})
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCK:
                    raise ImportError(f'{{name}} is blocked in this test')
                return None
        sys.meta_path.insert(0, Blocker())
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_core_imports_without_heavy_dependencies():
    r = _run_blocked(f"""
        import importlib, json
        for m in {CORE_MODULES!r}:
            importlib.import_module(m)
        import smirk_edge
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCK)
        print(json.dumps({{"loaded": loaded, "version": smirk_edge.__version__}}))
    """)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []


def test_cli_version_and_info_without_heavy_dependencies():
    r = _run_blocked("""
        from smirk_edge.cli import main
        assert main(['--version']) == 0
    """)
    # argparse's version action exits via SystemExit(0)
    assert r.returncode == 0, r.stderr
    assert "smirk-edge" in r.stdout
    r = _run_blocked("""
        from smirk_edge.cli import main
        raise SystemExit(main(['info', '--json']))
    """)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["engines"] == {} or all("error" not in v for v in info["engines"].values())
    assert info["cpu"]["logical_cores"] >= 1


def test_missing_engine_names_the_extra():
    r = _run_blocked("""
        from smirk_edge._lazy import require
        from smirk_edge.errors import EngineUnavailable
        try:
            require('openvino')
        except EngineUnavailable as e:
            print(e)
        else:
            raise SystemExit('no error')
    """)
    assert r.returncode == 0, r.stderr
    # the hint works for a wheel or a checkout (smirk-edge is not on PyPI): the extra's packages + the checkout form
    assert 'pip install "openvino>=' in r.stdout and 'pip install -e ".[openvino]"' in r.stdout
