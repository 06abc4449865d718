"""Convert MediaPipe's face-mesh network (.tflite) to a torch state dict, taking only the weights.

The architecture is ours (:mod:`smirk_edge.runtimes.mesh_backbone`); the .tflite is read (with the
``tflite`` flatbuffer parser, through ``convert_blazeface.read_tflite_conv_weights`` for the
convolutions) only for the weights and biases of its convolutions and the slopes of its PReLUs,
fp16 dequantized to fp32. Each torch parameter is taken from the .tflite layer :func:`weight_map`
names, and its shape is checked one by one; every layer of the .tflite must be used exactly once.

Model (MediaPipe 0.10.21 wheel, ``mediapipe/modules/face_landmark/face_landmark.tflite``,
Apache-2.0): 192 x 192 RGB in [0, 1] -> 468 x (x, y, z) landmarks in input pixels + a face logit.

Output: ``--out`` (default ``.carry/mesh/face_mesh.pt``, git-ignored: carried to the GPU machine),
the :class:`~smirk_edge.runtimes.mesh_backbone.FaceMeshNet` state dict as plain fp32 tensors
(``torch.load(path, weights_only=True)``), and ``face_mesh.json`` beside it (source, its sha256,
licence, parity). ``--init-checkpoint PATH`` also writes a ``mesh``-variant SMIRK encoder
checkpoint (official layout): this backbone with SMIRK's head initialisation, for
``model.init_from`` (configs/mesh_distill.yaml).

Usage::

    python export/detector/convert_face_mesh.py --check --tflite-python /work/mpenv/bin/python \\
        --init-checkpoint .carry/mesh/mesh_init.pt

``--check`` feeds real face photos (resized to 192 x 192) through :class:`FaceMeshNet` (torch,
fp32) and through the TFLite interpreter (``ai-edge-litert``, run by ``--tflite-python`` in its own
environment via ``_tflite_mesh_reference.py``) and reports the max abs difference per output.

Needs: numpy, torch, tflite (``pip install tflite``); OpenCV for ``--check``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCE = "face_landmark.tflite"
DEFAULT_OUT = REPO / ".carry" / "mesh" / "face_mesh.pt"
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "faces" / "utkface"


#: Recorded in the warm-start checkpoint's metadata; every checkpoint trained from it inherits it.
TERMS = ("The encoder's backbone starts from MediaPipe's face-mesh weights (face_landmark.tflite, mediapipe "
         "0.10.21, Copyright The MediaPipe Authors), Apache License 2.0: keep its licence and notice with "
         "the weights and state that they were changed")


class ConversionError(ValueError):
    """A .tflite whose weights do not fit the architecture (name, kind or shape)."""


def _sibling(name: str):
    """A module of this folder (not a package) by file name, e.g. ``convert_blazeface``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------
# Which .tflite layer each torch parameter comes from
# ----------------------------------------------------------------------------------------------

def weight_map() -> list[tuple[str, str, str]]:
    """``(torch module path, tflite layer name, kind)`` for every layer of :class:`FaceMeshNet`.

    ``kind``: ``conv`` (weight + bias), ``dw`` (depthwise weight + bias) or ``prelu`` (slopes).
    The tflite names are the Keras layer names in the file (``conv2d_7``, ``depthwise_conv2d_6``,
    ``p_re_lu_7``); the branches after the shared blocks are numbered out of order there.
    """
    def block(prefix: str, dw: int, pw: int, act: int) -> list[tuple[str, str, str]]:
        return [(f"{prefix}.dw", f"depthwise_conv2d_{dw}", "dw"), (f"{prefix}.pw", f"conv2d_{pw}", "conv"),
                (f"{prefix}.act", f"p_re_lu_{act}", "prelu")]

    def proj(prefix: str, conv: int, act: int) -> list[tuple[str, str, str]]:
        return [(f"{prefix}.conv", f"conv2d_{conv}", "conv"), (f"{prefix}.act", f"p_re_lu_{act}", "prelu")]

    m = proj("stem", 1, 1)
    for i in range(14):  # shared blocks: depthwise_conv2d_{i+1}, conv2d_{i+2}, p_re_lu_{i+2}
        m += block(f"blocks.{i}", i + 1, i + 2, i + 2)
    for j, n in enumerate((15, 16, 17)):  # landmark branch
        m += block(f"landmark_branch.{j}", n, n + 1, n + 1)
    m += proj("landmark_head.0", 19, 19) + block("landmark_head.1", 18, 20, 20)
    m += [("landmark_out", "conv2d_21", "conv")]
    m += block("score_branch.0", 23, 28, 26) + proj("score_head.0", 29, 27) + block("score_head.1", 24, 30, 28)
    m += [("score_out", "conv2d_31", "conv")]
    return m


def assemble_state(convs: Mapping[str, tuple[str, np.ndarray, np.ndarray]], alphas: Mapping[str, np.ndarray],
                   model=None) -> dict:
    """The :class:`FaceMeshNet` state dict from the .tflite's layers, every shape checked.

    Args:
        convs: tflite layer name -> ``(kind, weight, bias)`` in torch layout: ``conv`` weight
            ``(O, I, KH, KW)``, ``dw`` weight ``(C, 1, KH, KW)``; bias ``(O,)``.
        alphas: tflite PReLU layer name -> slopes ``(C,)``.
        model: the module to fill (default: a new :class:`FaceMeshNet`); only its shapes are read.
    Returns:
        ``{key: float32 tensor}`` with exactly ``model.state_dict()``'s keys.
    Raises:
        ConversionError: a layer missing, of the wrong kind or shape, or left unused.
    """
    import torch

    from smirk_edge.runtimes.mesh_backbone import FaceMeshNet

    want = (model if model is not None else FaceMeshNet()).state_dict()
    state: dict = {}
    used_convs, used_alphas = set(), set()
    for path, name, kind in weight_map():
        if kind == "prelu":
            if name not in alphas:
                raise ConversionError(f"{path}.weight: PReLU {name!r} is not in the .tflite")
            arr = np.asarray(alphas[name], np.float32).reshape(-1)
            parts = {f"{path}.weight": arr}
            used_alphas.add(name)
        else:
            if name not in convs:
                raise ConversionError(f"{path}: convolution {name!r} is not in the .tflite")
            got_kind, w, b = convs[name]
            if got_kind != kind:
                raise ConversionError(f"{path}: .tflite layer {name!r} is a {got_kind} convolution, "
                                      f"the architecture wants {kind}")
            parts = {f"{path}.weight": np.asarray(w, np.float32), f"{path}.bias": np.asarray(b, np.float32)}
            used_convs.add(name)
        for key, arr in parts.items():
            if key not in want:
                raise ConversionError(f"weight_map names {key!r}, which the architecture does not have")
            if tuple(arr.shape) != tuple(want[key].shape):
                raise ConversionError(f"{key}: .tflite layer {name!r} has shape {tuple(arr.shape)}, "
                                      f"the architecture wants {tuple(want[key].shape)}")
            state[key] = torch.from_numpy(np.ascontiguousarray(arr))
    left = sorted(set(convs) - used_convs) + sorted(set(alphas) - used_alphas)
    if left:
        raise ConversionError(f"{len(left)} .tflite layers left unused: {', '.join(left[:8])}")
    missing = [k for k in want if k not in state]
    if missing:
        raise ConversionError(f"{len(missing)} parameters not filled: {', '.join(missing[:8])}")
    return state


# ----------------------------------------------------------------------------------------------
# Reading the .tflite
# ----------------------------------------------------------------------------------------------

def _layer(tensor_name: str) -> str:
    """``conv2d_7/Kernel_dequantize`` -> ``conv2d_7``."""
    return tensor_name.split("/")[0]


def read_tflite_prelu_alphas(path: Path) -> dict[str, np.ndarray]:
    """Every PRELU's slopes of ``path``, by layer name, as fp32 ``(C,)`` (fp16 DEQUANTIZE folded)."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator as BO
    from tflite.TensorType import TensorType as TT

    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    g = model.Subgraphs(0)
    producers = {}
    ops = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        oc = model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        ops.append((op, code))
        for t in op.OutputsAsNumpy():
            producers[int(t)] = (op, code)
    np_types = {TT.FLOAT32: np.float32, TT.FLOAT16: np.float16}

    def const(idx: int) -> np.ndarray:
        if idx in producers:
            op, code = producers[idx]
            if code != BO.DEQUANTIZE:
                raise ConversionError(f"tensor {idx} is computed by builtin op {code}, not a constant")
            return const(int(op.InputsAsNumpy()[0])).astype(np.float32)
        t = g.Tensors(idx)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            raise ConversionError(f"tensor {t.Name()!r} has no constant data")
        return data.view(np_types[t.Type()]).reshape([int(s) for s in t.ShapeAsNumpy()]).copy()

    out = {}
    for op, code in ops:
        if code != BO.PRELU:
            continue
        idx = int(op.InputsAsNumpy()[1])
        name = _layer(g.Tensors(idx).Name().decode())
        if name in out:
            raise ConversionError(f"PReLU {name!r} appears twice")
        out[name] = const(idx).astype(np.float32).reshape(-1)
    return out


def read_tflite_layers(path: Path) -> tuple[dict, dict]:
    """``(convs, alphas)`` of :func:`assemble_state` read from ``path``."""
    read_convs = _sibling("convert_blazeface").read_tflite_conv_weights
    convs = {}
    for cw in read_convs(Path(path)):
        name = _layer(cw.tflite_name)
        if name in convs:
            raise ConversionError(f"convolution {name!r} appears twice")
        convs[name] = (cw.kind, cw.weight, cw.bias)
    return convs, read_tflite_prelu_alphas(path)


def convert(tflite_path: Path) -> dict:
    """The :class:`FaceMeshNet` state dict (fp32 tensors) from ``tflite_path``'s weights."""
    return assemble_state(*read_tflite_layers(tflite_path))


def find_tflite(explicit: str | None) -> Path:
    """``--tflite`` or ``face_landmark.tflite`` of a mediapipe install nearby."""
    if explicit:
        return Path(explicit)
    cands = sorted(Path("/work").glob("mp*env/lib/python3*/site-packages/mediapipe/modules/face_landmark"))
    try:
        import mediapipe  # noqa: F401

        cands.insert(0, Path(mediapipe.__file__).parent / "modules" / "face_landmark")
    except ImportError:
        pass
    for c in cands:
        if (c / SOURCE).is_file():
            return c / SOURCE
    raise SystemExit(f"cannot find mediapipe's {SOURCE}: pass --tflite")


# ----------------------------------------------------------------------------------------------
# Parity check against the TFLite interpreter
# ----------------------------------------------------------------------------------------------

def load_faces(folder: Path, count: int, size: int = 192) -> np.ndarray:
    """The first ``count`` photos of ``folder`` (sorted), resized to ``size`` (area), RGB
    ``(N, size, size, 3)`` float32 in [0, 1] (the network's input range)."""
    import cv2

    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1])
        if len(out) == count:
            break
    if not out:
        raise SystemExit(f"no photos in {folder}")
    return np.stack(out).astype(np.float32) / 255.0


def tflite_reference(tflite_path: Path, nhwc: np.ndarray, tflite_python: str) -> dict[str, np.ndarray]:
    """``landmarks (N, 1404)`` and ``score (N, 1)`` of the TFLite interpreter (run by ``tflite_python``)."""
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.npy", Path(tmp) / "out.npz"
        np.save(fin, np.ascontiguousarray(nhwc, np.float32))
        subprocess.run([tflite_python, str(HERE / "_tflite_mesh_reference.py"), str(tflite_path), str(fin),
                        str(fout)], check=True, capture_output=True)
        ref = np.load(fout)
        return {"landmarks": ref["landmarks"], "score": ref["score"]}


def check_parity(state: Mapping, tflite_path: Path, nhwc: np.ndarray, tflite_python: str) -> dict:
    """Max/mean abs difference of both outputs, :class:`FaceMeshNet` (torch fp32) vs TFLite."""
    import torch

    from smirk_edge.runtimes.mesh_backbone import FaceMeshNet

    net = FaceMeshNet().eval()
    net.load_state_dict(dict(state), strict=True)
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))))
    ours = {"landmarks": out["landmarks"].reshape(len(nhwc), -1).numpy(), "score": out["score"].numpy()}
    ref = tflite_reference(tflite_path, nhwc, tflite_python)
    row: dict = {"images": len(nhwc), "input": f"{nhwc.shape[1]}x{nhwc.shape[2]} RGB [0, 1]"}
    for name in ("landmarks", "score"):
        d = np.abs(ours[name] - ref[name])
        row[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "ref_abs_max": float(np.abs(ref[name]).max())}
    xy = np.abs(ours["landmarks"].reshape(len(nhwc), -1, 3) - ref["landmarks"].reshape(len(nhwc), -1, 3))[..., :2]
    row["landmarks_xy_max_px"] = float(xy.max())
    row["faces_over_0.5"] = {"ours": int((ours["score"] > 0).sum()), "tflite": int((ref["score"] > 0).sum())}
    return row


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tflite", help=f"path of {SOURCE} (default: a mediapipe install nearby)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="the state dict to write (.pt)")
    ap.add_argument("--init-checkpoint", help="also write a mesh-variant SMIRK encoder checkpoint here "
                                              "(backbone converted, heads at SMIRK's initialisation)")
    ap.add_argument("--check", action="store_true", help="compare against the TFLite interpreter")
    ap.add_argument("--tflite-python", default="/work/mpenv/bin/python",
                    help="python with ai-edge-litert (or tensorflow) for --check")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of face photos for --check")
    ap.add_argument("--count", type=int, default=64, help="photos for --check")
    args = ap.parse_args(argv)

    import torch

    src = find_tflite(args.tflite)
    state = convert(src)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    info: dict = {"source": f"MediaPipe 0.10.21 wheel, mediapipe/modules/face_landmark/{SOURCE}",
                  "source_sha256": _sha256(src), "licence": "Apache-2.0 (Copyright The MediaPipe Authors)",
                  "architecture": "smirk_edge.runtimes.mesh_backbone.FaceMeshNet", "input": "RGB [0, 1], 192x192",
                  "what": "conv weights/biases and PReLU slopes, fp16 dequantized to fp32; nothing else",
                  "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values()))}
    print(f"{src} -> {out} ({len(state)} tensors, {info['parameters']:,} parameters)")
    if args.check:
        row = check_parity(state, src, load_faces(Path(args.images), args.count), args.tflite_python)
        info["parity"] = row
        print(json.dumps(row))
    if args.init_checkpoint:
        from smirk_edge.runtimes.torch_encoder import load_mesh_weights, random_encoder
        from smirk_edge.training import save_checkpoint

        enc = random_encoder("mesh", seed=0)  # SMIRK's head initialisation
        load_mesh_weights(enc, out)
        path = save_checkpoint(args.init_checkpoint, enc, meta={
            "name": "mesh_init", "step": 0, "mesh_weights_sha256": _sha256(out),
            "training": "not trained: backbone converted from MediaPipe's face_landmark.tflite, heads at "
                        "SMIRK's initialisation (seed 0)",
            "terms": [TERMS]})
        info["init_checkpoint"] = str(path)
        print(f"mesh encoder checkpoint (warm start) -> {path}")
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
