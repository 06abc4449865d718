"""Convert MediaPipe's BlazeFace face detectors (.tflite) to ONNX, taking only the weights.

The two networks are written here, block by block, with ``onnx.helper``; the .tflite files are
read (with the ``tflite`` flatbuffer parser) only for their convolution weights and biases, in
operator order, which are checked one by one against the shapes the architecture below expects.
fp16 weights are dequantized to fp32 and sparse (CSR) weights are densified.

Models (MediaPipe 0.10.21 wheel, ``mediapipe/modules/face_detection/``, Apache-2.0):

* ``face_detection_short_range.tflite``: 128x128 input, 896 anchors (16x16x2 + 8x8x6),
  "BlazeFace front" backbone of 16 single BlazeBlocks (depthwise 3x3 + pointwise 1x1, residual with
  max-pool / zero channel padding), two SSD heads (stride 8 and 16).
* ``face_detection_full_range_sparse.tflite``: 192x192 input, 2304 anchors (48x48x1), a backbone
  of down-sampling and residual bottleneck blocks, a top-down feature pyramid (bilinear 2x
  up-sampling + lateral 1x1 convs) and one stride-4 head that ends in a stride-2 depthwise conv +
  depth-to-space.

Output ONNX contract (both models; opset 17; dynamic batch ``B``, static spatial size):

* input ``input``: float32 ``(B, 3, S, S)``, RGB, values in [-1, 1] (pixel / 127.5 - 1),
  S = 128 (short) or 192 (full). NCHW (the tflite model is NHWC; we transpose the weights).
* output ``regressors``: float32 ``(B, N, 16)``: per anchor, box centre offset x, y, width,
  height, then 6 keypoints (x, y), all in input pixels relative to the anchor (see
  ``smirk_edge.detector`` for the decoding). N = 896 or 2304.
* output ``classificators``: float32 ``(B, N, 1)``: face logit (apply a sigmoid).

Usage::

    python export/detector/convert_blazeface.py                       # writes smirk_edge/assets/
    python export/detector/convert_blazeface.py --check \\
        --tflite-python /work/mpvenv/bin/python --images ../shared/data/photos

``--check`` feeds real images (letterboxed by the SDK's own preprocessing) through the written
ONNX models (onnxruntime) and through the TFLite interpreter (``ai-edge-litert``, run by
``--tflite-python`` in its own environment via ``_tflite_reference.py``) and reports the max abs
difference per output.

Needs: numpy, onnx, tflite (``pip install tflite``); onnxruntime for ``--check``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "smirk_edge" / "assets"
OPSET = 17

SOURCES = {
    "short": "face_detection_short_range.tflite",
    "full": "face_detection_full_range_sparse.tflite",
}


# ----------------------------------------------------------------------------------------------
# Weights: read from the .tflite, nothing else
# ----------------------------------------------------------------------------------------------

@dataclass
class ConvWeights:
    """One convolution's parameters as stored by TFLite, converted to ONNX layout (fp32).

    ``weight``: (O, I, KH, KW) for a regular conv, (C, 1, KH, KW) for a depthwise conv.
    ``bias``: (O,).
    """

    kind: str  # "conv" or "dw"
    weight: np.ndarray
    bias: np.ndarray
    tflite_name: str


def _densify_csr(tensor, values: np.ndarray) -> np.ndarray:
    """Dense array from a TFLite sparse tensor whose leading dims are dense and last dim is CSR."""
    import tflite

    sp = tensor.Sparsity()
    shape = [int(s) for s in tensor.ShapeAsNumpy()]
    order = [int(v) for v in sp.TraversalOrderAsNumpy()]
    if order != list(range(len(shape))) or sp.BlockMapLength():
        raise NotImplementedError(f"sparsity layout not supported: order={order}")
    fmts = [sp.DimMetadata(d).Format() for d in range(sp.DimMetadataLength())]
    if fmts != [0] * (len(shape) - 1) + [1]:  # DENSE..., SPARSE_CSR
        raise NotImplementedError(f"sparsity formats not supported: {fmts}")
    dm = sp.DimMetadata(len(shape) - 1)

    def _vec(kind: int, table) -> np.ndarray:
        cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}[kind]
        v = cls()
        v.Init(table.Bytes, table.Pos)
        return v.ValuesAsNumpy().astype(np.int64)

    segments = _vec(dm.ArraySegmentsType(), dm.ArraySegments())
    indices = _vec(dm.ArrayIndicesType(), dm.ArrayIndices())
    rows = int(np.prod(shape[:-1]))
    if segments.shape[0] != rows + 1 or indices.shape[0] != values.shape[0]:
        raise ValueError(f"{tensor.Name()!r}: inconsistent CSR arrays")
    dense = np.zeros((rows, shape[-1]), dtype=values.dtype)
    for r in range(rows):
        lo, hi = segments[r], segments[r + 1]
        dense[r, indices[lo:hi]] = values[lo:hi]
    return dense.reshape(shape)


def read_tflite_conv_weights(path: Path) -> list[ConvWeights]:
    """Every CONV_2D / DEPTHWISE_CONV_2D weight + bias of ``path`` in operator order, as fp32.

    Constant producers (DEQUANTIZE fp16 -> fp32, DENSIFY sparse -> dense) are folded here, so the
    result is plain arrays. The graph's other operators are not used: the architecture is ours.
    """
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator as BO
    from tflite.TensorType import TensorType as TT

    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"{path}: expected one subgraph")
    g = model.Subgraphs(0)
    producers = {}
    codes = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        oc = model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(code)
        for t in op.OutputsAsNumpy():
            producers[int(t)] = op, code

    np_types = {TT.FLOAT32: np.float32, TT.FLOAT16: np.float16, TT.INT32: np.int32}

    def const(idx: int) -> np.ndarray:
        if idx in producers:
            op, code = producers[idx]
            src = int(op.InputsAsNumpy()[0])
            if code == BO.DEQUANTIZE:
                return const(src).astype(np.float32)
            if code == BO.DENSIFY:
                t = g.Tensors(src)
                raw = model.Buffers(t.Buffer()).DataAsNumpy()
                return _densify_csr(t, raw.view(np_types[t.Type()]))
            raise ValueError(f"tensor {idx} is computed by builtin op {code}, not a constant")
        t = g.Tensors(idx)
        if t.Sparsity() is not None:
            raise ValueError(f"sparse tensor {t.Name()!r} without DENSIFY")
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            raise ValueError(f"tensor {t.Name()!r} has no constant data")
        shape = [int(s) for s in t.ShapeAsNumpy()]
        return data.view(np_types[t.Type()]).reshape(shape).copy()

    out = []
    for i, code in enumerate(codes):
        if code not in (BO.CONV_2D, BO.DEPTHWISE_CONV_2D):
            continue
        op = g.Operators(i)
        ins = [int(v) for v in op.InputsAsNumpy()]
        w = const(ins[1]).astype(np.float32)
        b = const(ins[2]).astype(np.float32)
        name = g.Tensors(ins[1]).Name().decode()
        if code == BO.CONV_2D:  # (O, KH, KW, I) -> (O, I, KH, KW)
            out.append(ConvWeights("conv", np.ascontiguousarray(w.transpose(0, 3, 1, 2)), b, name))
        else:  # (1, KH, KW, C) -> (C, 1, KH, KW)
            out.append(ConvWeights("dw", np.ascontiguousarray(w.transpose(3, 0, 1, 2)), b, name))
    return out


# ----------------------------------------------------------------------------------------------
# Graph building with onnx.helper
# ----------------------------------------------------------------------------------------------

class GraphBuilder:
    """Tiny NCHW graph builder: each method adds nodes and returns the output tensor name.

    Weights are consumed in order from ``weights`` (the tflite operator order); each ``conv`` /
    ``dw`` call checks the next weight's kind and shape against what the architecture asks for.
    """

    def __init__(self, weights: list[ConvWeights]):
        self.weights = list(weights)
        self.pos = 0
        self.nodes = []
        self.inits = []
        self.n = 0

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def _const(self, prefix: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def _node(self, op: str, inputs: list[str], prefix: str, **attrs) -> str:
        from onnx import helper

        out = self._name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _take(self, kind: str, shape: tuple) -> ConvWeights:
        if self.pos >= len(self.weights):
            raise ValueError(f"ran out of tflite weights; wanted {kind} {shape}")
        cw = self.weights[self.pos]
        if cw.kind != kind or tuple(cw.weight.shape) != tuple(shape):
            raise ValueError(f"weight #{self.pos} ({cw.tflite_name}) is {cw.kind} "
                             f"{cw.weight.shape}, architecture wants {kind} {shape}")
        self.pos += 1
        return cw

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1,
             pads: tuple[int, int, int, int] = (0, 0, 0, 0), relu: bool = False) -> str:
        """Regular conv, ``pads`` = (top, left, bottom, right) as ONNX orders them."""
        cw = self._take("conv", (cout, cin, k, k))
        w = self._const("w", cw.weight)
        b = self._const("b", cw.bias)
        y = self._node("Conv", [x, w, b], "conv", kernel_shape=[k, k], strides=[stride, stride],
                       pads=list(pads))
        return self.relu(y) if relu else y

    def dw(self, x: str, c: int, stride: int = 1,
           pads: tuple[int, int, int, int] = (1, 1, 1, 1)) -> str:
        """Depthwise 3x3 conv (group = channels)."""
        cw = self._take("dw", (c, 1, 3, 3))
        w = self._const("w", cw.weight)
        b = self._const("b", cw.bias)
        return self._node("Conv", [x, w, b], "dwconv", kernel_shape=[3, 3], group=c,
                          strides=[stride, stride], pads=list(pads))

    def relu(self, x: str) -> str:
        return self._node("Relu", [x], "relu")

    def add(self, a: str, b: str, relu: bool = False) -> str:
        y = self._node("Add", [a, b], "add")
        return self.relu(y) if relu else y

    def maxpool2(self, x: str) -> str:
        return self._node("MaxPool", [x], "maxpool", kernel_shape=[2, 2], strides=[2, 2])

    def pad_channels(self, x: str, extra: int) -> str:
        """Zero channels appended after the existing ones (BlazeBlock shortcut)."""
        pads = self._const("pads", np.array([0, 0, 0, 0, 0, extra, 0, 0], dtype=np.int64))
        return self._node("Pad", [x, pads], "chpad", mode="constant")

    def upsample2(self, x: str) -> str:
        """2x bilinear, half-pixel centres (TF ``resize_bilinear(half_pixel_centers=True)``)."""
        scales = self._const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
        return self._node("Resize", [x, "", scales], "up", mode="linear",
                          coordinate_transformation_mode="half_pixel")

    def depth_to_space2(self, x: str) -> str:
        # TF depth_to_space == ONNX DCR order.
        return self._node("DepthToSpace", [x], "d2s", blocksize=2, mode="DCR")

    def flatten_head(self, x: str, per_anchor: int) -> str:
        """(B, A*per_anchor, H, W) -> (B, H*W*A, per_anchor), anchors ordered y, x, a."""
        t = self._node("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
        shape = self._const("shape", np.array([0, -1, per_anchor], dtype=np.int64))
        return self._node("Reshape", [t, shape], "flat")

    def concat1(self, xs: list[str], out: str) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node("Concat", xs, [out], name=out, axis=1))
        return out

    def identity(self, x: str, out: str) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node("Identity", [x], [out], name=out))
        return out

    def done(self) -> None:
        if self.pos != len(self.weights):
            raise ValueError(f"{len(self.weights) - self.pos} tflite weights left unused")


def _tf_same(size: int, k: int, s: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis: the extra pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def build_short(b: GraphBuilder) -> tuple[str, str]:
    """BlazeFace short range (128x128): returns (regressors, classificators) names."""
    x = "input"
    p0, p1 = _tf_same(128, 5, 2)
    x = b.conv(x, 3, 24, k=5, stride=2, pads=(p0, p0, p1, p1), relu=True)  # 64x64
    blocks = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
              (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2),
              (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1)]
    size = 64
    feat16 = None
    for cin, cout, s in blocks:
        if s == 2:
            p0, p1 = _tf_same(size, 3, 2)
            y = b.dw(x, cin, stride=2, pads=(p0, p0, p1, p1))
            short = b.maxpool2(x)
            size //= 2
        else:
            y = b.dw(x, cin)
            short = x
        y = b.conv(y, cin, cout)
        if cout > cin:
            short = b.pad_channels(short, cout - cin)
        x = b.add(short, y, relu=True)
        if size == 16 and cout == 88:
            feat16 = x
    # heads, in the tflite's order: classificator 8, classificator 16, regressor 8, regressor 16
    c8 = b.conv(feat16, 88, 2)
    c16 = b.conv(x, 96, 6)
    r8 = b.conv(feat16, 88, 32)
    r16 = b.conv(x, 96, 96)
    cls = b.concat1([b.flatten_head(c8, 1), b.flatten_head(c16, 1)], "classificators")
    reg = b.concat1([b.flatten_head(r8, 16), b.flatten_head(r16, 16)], "regressors")
    return reg, cls


def build_full(b: GraphBuilder) -> tuple[str, str]:
    """BlazeFace full range (192x192, FPN): returns (regressors, classificators) names."""
    pad1 = (1, 1, 1, 1)

    def residual(x: str, c: int, mid: int) -> str:
        y = b.dw(x, c)
        y = b.conv(y, c, mid, relu=True)
        y = b.dw(y, mid)
        y = b.conv(y, mid, c)
        return b.add(x, y, relu=True)

    def down(x: str, cin: int, mid: int, cout: int) -> str:
        y = b.dw(x, cin, stride=2, pads=pad1)
        y = b.conv(y, cin, mid, relu=True)
        y = b.dw(y, mid)
        return b.conv(y, mid, cout, relu=True)

    x = b.conv("input", 3, 32, k=3, stride=2, pads=pad1, relu=True)  # 96x96
    x = residual(x, 32, 8)
    x = residual(x, 32, 8)
    x = down(x, 32, 16, 64)  # 48
    x = residual(x, 64, 16)
    x = residual(x, 64, 16)
    lat48 = b.conv(x, 64, 48, relu=True)
    x = down(x, 64, 32, 128)  # 24
    x = residual(x, 128, 32)
    x = residual(x, 128, 32)
    lat24 = b.conv(x, 128, 64, relu=True)
    x = down(x, 128, 48, 192)  # 12
    x = residual(x, 192, 48)
    x = residual(x, 192, 48)
    lat12 = b.conv(x, 192, 96, relu=True)
    x = down(x, 192, 96, 384)  # 6
    for _ in range(3):
        x = residual(x, 384, 96)
    # top-down pyramid
    x = b.add(lat12, b.upsample2(b.conv(x, 384, 96, relu=True)))  # 12
    x = residual(x, 96, 48)
    x = residual(x, 96, 48)
    x = b.add(lat24, b.upsample2(b.conv(x, 96, 64, relu=True)))  # 24
    x = residual(x, 64, 32)
    x = residual(x, 64, 32)
    x = b.add(lat48, b.upsample2(b.conv(x, 64, 48, relu=True)))  # 48
    x = residual(x, 48, 24)
    # heads: 1x1 conv at 48x48, stride-2 depthwise, depth-to-space back to 48x48
    c = b.depth_to_space2(b.dw(b.conv(x, 48, 4), 4, stride=2, pads=pad1))
    r = b.depth_to_space2(b.dw(b.conv(x, 48, 64), 64, stride=2, pads=pad1))
    cls = b.identity(b.flatten_head(c, 1), "classificators")
    reg = b.identity(b.flatten_head(r, 16), "regressors")
    return reg, cls


ARCH = {"short": (128, 896, build_short), "full": (192, 2304, build_full)}


def convert(variant: str, tflite_path: Path):
    """Build the ONNX model (``onnx.ModelProto``) for ``variant`` from ``tflite_path``'s weights."""
    import onnx
    from onnx import TensorProto, helper

    size, n_anchors, build = ARCH[variant]
    b = GraphBuilder(read_tflite_conv_weights(tflite_path))
    build(b)
    b.done()
    graph = helper.make_graph(
        b.nodes, f"blazeface_{variant}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 3, size, size])],
        [helper.make_tensor_value_info("regressors", TensorProto.FLOAT, ["B", n_anchors, 16]),
         helper.make_tensor_value_info("classificators", TensorProto.FLOAT, ["B", n_anchors, 1])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="smirk-edge convert_blazeface.py")
    model.ir_version = 8  # opset 17 era; loads on older runtimes
    meta = {
        "source": f"MediaPipe 0.10.21 wheel, mediapipe/modules/face_detection/{tflite_path.name}",
        "licence": "Apache-2.0 (see NOTICE.blazeface.md)",
        "input": f"input float32 (B,3,{size},{size}) RGB in [-1,1]",
        "outputs": f"regressors (B,{n_anchors},16), classificators (B,{n_anchors},1) logits",
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    return model


def find_mediapipe_models(explicit: str | None) -> Path:
    """The folder with the two .tflite files: ``--tflite-dir`` or a mediapipe install nearby."""
    if explicit:
        return Path(explicit)
    cands = sorted(Path("/work/mpvenv/lib").glob("python3*/site-packages/mediapipe/modules/"
                                                 "face_detection"))
    try:
        import mediapipe  # noqa: F401

        cands.insert(0, Path(mediapipe.__file__).parent / "modules" / "face_detection")
    except ImportError:
        pass
    for c in cands:
        if (c / SOURCES["short"]).is_file():
            return c
    raise SystemExit("cannot find mediapipe's face_detection .tflite files: pass --tflite-dir")


# ----------------------------------------------------------------------------------------------
# Parity check against the TFLite interpreter
# ----------------------------------------------------------------------------------------------

def check_parity(variant: str, onnx_path: Path, tflite_path: Path, images: list[Path],
                 tflite_python: str) -> dict:
    """Max/mean abs diff of both outputs, ONNX (onnxruntime) vs TFLite, on letterboxed images."""
    import cv2
    import onnxruntime as ort

    from smirk_edge.detector import letterbox

    size = ARCH[variant][0]
    batch = []
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        tensor, _ = letterbox(img, size)
        batch.append(tensor)
    x = np.stack(batch).astype(np.float32)  # (B, 3, S, S)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reg, cls = sess.run(["regressors", "classificators"], {"input": x})
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.npy", Path(tmp) / "out.npz"
        np.save(fin, x.transpose(0, 2, 3, 1))  # NHWC for tflite
        helper_script = Path(__file__).with_name("_tflite_reference.py")
        subprocess.run([tflite_python, str(helper_script), str(tflite_path), str(fin), str(fout)],
                       check=True)
        ref = np.load(fout)
        ref_reg, ref_cls = ref["regressors"], ref["classificators"]
    row = {"variant": variant, "images": len(batch)}
    for name, a, r in (("regressors", reg, ref_reg), ("classificators", cls, ref_cls)):
        d = np.abs(a - r)
        row[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "ref_abs_max": float(np.abs(r).max())}
    # decision-level agreement: the same anchors pass the 0.5 score threshold
    row["same_anchors_over_0.5"] = bool(np.array_equal(cls > 0.0, ref_cls > 0.0))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tflite-dir", help="folder with the MediaPipe face_detection .tflite files")
    ap.add_argument("--out-dir", default=str(ASSETS), help="where to write blazeface_*.onnx")
    ap.add_argument("--variants", nargs="+", default=["short", "full"], choices=list(ARCH))
    ap.add_argument("--check", action="store_true", help="compare against the TFLite interpreter")
    ap.add_argument("--tflite-python", default="/work/mpvenv/bin/python",
                    help="python with ai-edge-litert (or tensorflow) for --check")
    ap.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "photos"),
                    help="folder of real photos for --check")
    ap.add_argument("--json", help="write the parity rows here")
    args = ap.parse_args(argv)

    import onnx

    src = find_mediapipe_models(args.tflite_dir)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in args.variants:
        tfl = src / SOURCES[v]
        model = convert(v, tfl)
        dst = out_dir / f"blazeface_{v}.onnx"
        onnx.save(model, dst)
        print(f"{v}: {tfl} -> {dst} ({dst.stat().st_size / 1024:.0f} KiB, "
              f"{len(model.graph.node)} nodes)")
        if args.check:
            imgs = sorted(p for p in Path(args.images).iterdir()
                          if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            row = check_parity(v, dst, tfl, imgs, args.tflite_python)
            rows.append(row)
            print(json.dumps(row))
    if args.json and rows:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
