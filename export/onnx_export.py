"""SMIRK encoder (and optionally the face-model decoder) -> ONNX fp32.

Choices, measured with torch 2.14 / onnx 1.23 / onnxruntime 1.32 (see TOOLCHAIN_NOTES.md):

* **Exporter: the new one** (``torch.onnx.export(..., dynamo=True)``). It folds the TF "same"
  padding of the MobileNetV3 backbones into the Conv pads (256 nodes for the full encoder). The
  legacy TorchScript exporter emits 15 dynamic Pad subgraphs (1,571 nodes), runs ~30% slower in
  ONNX Runtime and loses the static output widths.
* **Opset 18.** The new exporter cannot go lower: asking for 17 silently stays at 18 ("No Adapter
  To Version $17 for Pad"), and ``onnx.version_converter`` to 17 leaves an attribute the opset-17
  checker rejects. Opset 18 is read by ONNX Runtime (>= 1.14), OpenVINO (>= 2023.0) and
  TensorRT 10's ONNX parser, every engine smirk-edge targets.
* **One file** (``external_data=False``; the encoder is ~14 MB, far below protobuf's 2 GB limit),
  **dynamic batch** (dimension ``batch``, 1..1024), **named outputs** in
  :data:`smirk_edge.export.metadata.OUTPUTS` order.
* **Fused graphs** (``fused=True`` in :func:`export_fused`): the encoder graph and a separately
  exported :class:`~smirk_edge.training.face_model.FaceModelLayer` graph joined with
  ``onnx.compose``, so any encoder precision (fp32, fp16, int8 QDQ) can be fused with an fp32
  decoder: the decoder stays float everywhere (its Rodrigues epsilon of 1e-8 underflows in fp16
  and its vertex offsets are sub-millimetre). The decoder is exported **without** the onnxscript
  graph optimizer: that optimizer rewrites ``x + 1e-8`` to ``x`` (it treats the constant as zero),
  which turns the zero neck/eye rotations into 0/0 = NaN (measured here; the encoder graph has no
  such constant and keeps the optimizer).
* Node-level ``pkg.torch.onnx.*`` metadata (stack traces with local file paths) is removed: it
  leaks paths, makes files non-reproducible and adds bytes.
* **Graph simplification** (onnxslim 0.1.98): not used. Measured on the full encoder: 256 nodes
  before and after (the new exporter already folds constants; the file shrinks by 0.7%), so there
  is nothing for it to gain; on the fused graph it produced a model ONNX Runtime refuses to load
  (``Range`` bound to both double and float in the decoder part). :func:`slim` stays available
  for experiments.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from smirk_edge._lazy import require
from smirk_edge.errors import SmirkEdgeError

from .metadata import INPUT_NAME, OUTPUTS, set_onnx_metadata

OPSET = 18
MAX_BATCH = 1024
OUTPUT_NAMES = tuple(name for name, _, _ in OUTPUTS)
DECODER_INPUTS = ("shape", "expression", "pose", "jaw", "eyelid")
DECODER_OUTPUTS = ("vertices", "landmarks68", "landmarks105")
FUSED_OUTPUT_NAMES = OUTPUT_NAMES + DECODER_OUTPUTS
_DECODER_PREFIX = "face_model/"


class ExportError(SmirkEdgeError):
    """An export step that failed (exporter error, checker failure, parity failure)."""


@dataclass
class OnnxExport:
    """Result of one ONNX export step.

    Attributes:
        path: the written file.
        seconds: wall time of the step (export + check + save).
        nodes: node count of the main graph.
        parity: ``{output: max |onnxruntime - torch|}`` on the check batch (empty if not checked).
    """

    path: Path
    seconds: float
    nodes: int
    parity: dict[str, float] = field(default_factory=dict)


def _quiet_export(module: Any, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic_shapes: Any, optimize: bool) -> None:
    torch = require("torch")
    import contextlib
    import io
    import warnings

    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              dynamic_shapes=dynamic_shapes, opset_version=OPSET, external_data=False,
                              dynamo=True, optimize=optimize, verbose=False)
        except Exception as exc:  # the exporter raises many types; report them as one
            raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {exc}\n{buf.getvalue()[-2000:]}"
                              ) from exc


def _finish(path: Path, metadata: Mapping[str, Any] | None, precision: str | None) -> Any:
    """Strip node metadata, set model metadata, check, save. Returns the ModelProto."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    strip_node_metadata(model)
    if metadata is not None:
        set_onnx_metadata(model, metadata, precision)
    model.producer_name = "smirk-edge"
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects {path.name}: {exc}") from exc
    onnx.save(model, str(path))
    return model


def strip_node_metadata(model: Any) -> None:
    """Remove node-level metadata_props (torch stack traces and namespaces) in place."""
    for node in model.graph.node:
        del node.metadata_props[:]


def toposort(model: Any) -> Any:
    """Sort the main graph's nodes topologically in place (converters append nodes at the end)."""
    graph = model.graph
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or dangling inputs near node {rest[0].name!r}")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _ort_outputs(path: Path, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from smirk_edge.runtimes import OrtRunner, SessionFromOnnx

    with OrtRunner(SessionFromOnnx(path, providers="cpu")) as runner:
        return runner.infer(dict(feed))


def _check_batch(batch: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, 224, 224), dtype=np.float32)


def export_encoder(encoder: Any, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
                   example: np.ndarray | None = None, parity_tol: float | None = 1e-3) -> OnnxExport:
    """Export a :class:`~smirk_edge.training.encoder.SmirkEncoder` to one fp32 ONNX file.

    Args:
        encoder: the torch module (put in eval mode here), ``image (B, 3, 224, 224)`` in [0, 1] ->
            dict of ``pose (B, 3)``, ``cam (B, 3)``, ``shape (B, 300)``, ``expression (B, 50)``,
            ``eyelid (B, 2)``, ``jaw (B, 3)``.
        path: output ``.onnx``.
        metadata: :func:`smirk_edge.export.metadata.model_metadata` dict for ``metadata_props``.
        example: ``(B, 3, 224, 224)`` float32 batch for tracing and the parity check (default: 2
            random images; parity here only guards the export itself, the accuracy gate uses
            real crops).
        parity_tol: fail when any output differs from torch by more than this, relative to
            ``max(1, max|output|)`` (None: skip the check).
    Raises:
        ExportError: exporter failure, checker failure or parity above ``parity_tol``.
    """
    torch = require("torch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.eval()
    x = _check_batch() if example is None else np.ascontiguousarray(example, np.float32)
    start = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        _quiet_export(encoder, (torch.from_numpy(x),), path, [INPUT_NAME], list(OUTPUT_NAMES),
                      {"image": {0: batch}}, optimize=True)
    model = _finish(path, metadata, "fp32")
    seconds = time.perf_counter() - start
    parity: dict[str, float] = {}
    if parity_tol is not None:
        with torch.no_grad():
            ref = {k: v.numpy() for k, v in encoder(torch.from_numpy(x)).items()}
        got = _ort_outputs(path, {INPUT_NAME: x})
        parity = {k: float(np.abs(got[k] - ref[k]).max()) for k in OUTPUT_NAMES}
        worst = max(parity[k] / max(1.0, float(np.abs(ref[k]).max())) for k in OUTPUT_NAMES)
        if not worst <= parity_tol:
            raise ExportError(f"ONNX encoder differs from torch by {worst:.3g} (relative, > {parity_tol}): {parity}")
    return OnnxExport(path, seconds, len(model.graph.node), parity)


class _DecoderGraph:
    """Wraps FaceModelLayer with positional inputs/outputs for export (built lazily: needs torch)."""

    @staticmethod
    def make(layer: Any) -> Any:
        torch = require("torch")

        class Decoder(torch.nn.Module):
            def __init__(self, layer: Any):
                super().__init__()
                self.layer = layer

            def forward(self, shape, expression, pose, jaw, eyelid):  # noqa: D401 - export wrapper
                out = self.layer(shape, expression, pose, jaw, eyelid)
                return out["vertices"], out["landmarks68"], out["landmarks105"]

        return Decoder(layer).eval()


def export_decoder(layer: Any, path: str | os.PathLike) -> OnnxExport:
    """Export a :class:`~smirk_edge.training.face_model.FaceModelLayer` as its own ONNX graph.

    Inputs ``shape (B, 300)``, ``expression (B, 50)``, ``pose (B, 3)``, ``jaw (B, 3)``,
    ``eyelid (B, 2)``; outputs ``vertices (B, V, 3)``, ``landmarks68 (B, 68, 3)``,
    ``landmarks105 (B, 105, 3)`` in metres, model frame. Exported without the onnxscript optimizer
    (see the module docstring).
    """
    torch = require("torch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    B = 2
    args = (rng.standard_normal((B, 300)), rng.standard_normal((B, 50)), rng.uniform(-0.5, 0.5, (B, 3)),
            rng.uniform(0, 0.2, (B, 3)), rng.uniform(0, 1, (B, 2)))
    targs = tuple(torch.from_numpy(a.astype(np.float32)) for a in args)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    start = time.perf_counter()
    with torch.no_grad():
        _quiet_export(_DecoderGraph.make(layer), targs, path, list(DECODER_INPUTS), list(DECODER_OUTPUTS),
                      tuple({0: batch} for _ in DECODER_INPUTS), optimize=False)
    model = _finish(path, None, None)
    return OnnxExport(path, time.perf_counter() - start, len(model.graph.node))


def fuse(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, path: str | os.PathLike,
         metadata: Mapping[str, Any] | None = None, precision: str | None = None) -> OnnxExport:
    """Join an encoder graph (any precision, fp32 IO) and a decoder graph into one ONNX file.

    The result takes ``image`` and returns the six parameter outputs followed by ``vertices``,
    ``landmarks68`` and ``landmarks105``. The decoder's internal names get the prefix
    ``face_model/``.
    """
    onnx = require("onnx")
    from onnx import compose

    start = time.perf_counter()
    enc = onnx.load(str(encoder_path))
    dec = onnx.load(str(decoder_path))
    if enc.ir_version != dec.ir_version:
        dec.ir_version = enc.ir_version
    dec = compose.add_prefix(dec, _DECODER_PREFIX, rename_inputs=False, rename_outputs=False)
    del enc.metadata_props[:]
    del dec.metadata_props[:]
    # opsets must match exactly for merge_models: take the union (the encoder may carry
    # com.microsoft after quantization)
    domains = {o.domain: o.version for o in dec.opset_import}
    for o in enc.opset_import:
        if o.domain in domains and domains[o.domain] != o.version:
            raise ExportError(f"encoder and decoder use different opsets for domain {o.domain!r}: "
                              f"{o.version} vs {domains[o.domain]}")
    enc_domains = {o.domain for o in enc.opset_import}
    for o in dec.opset_import:
        if o.domain not in enc_domains:
            enc.opset_import.append(o)
    dec_domains = {o.domain for o in dec.opset_import}
    for o in enc.opset_import:
        if o.domain not in dec_domains:
            dec.opset_import.append(o)
    try:
        merged = compose.merge_models(enc, dec, io_map=[(n, n) for n in DECODER_INPUTS],
                                      outputs=list(FUSED_OUTPUT_NAMES))
    except Exception as exc:
        raise ExportError(f"cannot fuse {Path(encoder_path).name} with the decoder: {exc}") from exc
    merged.producer_name = "smirk-edge"
    if metadata is not None:
        set_onnx_metadata(merged, {**metadata, "fused": True}, precision)
    path = Path(path)
    try:
        onnx.checker.check_model(merged, full_check=False)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects the fused graph: {exc}") from exc
    onnx.save(merged, str(path))
    return OnnxExport(path, time.perf_counter() - start, len(merged.graph.node))


def export_fused(encoder: Any, layer: Any, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
                 workdir: str | os.PathLike | None = None) -> OnnxExport:
    """Encoder + face-model decoder in one fp32 graph (see :func:`fuse`)."""
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        e = export_encoder(encoder, Path(tmp) / "encoder.onnx", metadata)
        d = export_decoder(layer, Path(tmp) / "decoder.onnx")
        f = fuse(e.path, d.path, path, metadata, "fp32")
    return OnnxExport(path, e.seconds + d.seconds + f.seconds, f.nodes, e.parity)


def slim(src: str | os.PathLike, dst: str | os.PathLike) -> OnnxExport:
    """Simplify a graph with onnxslim (constant folding, dead-node removal, fusions).

    Not part of the export (see the module docstring: no gain on the encoder, a broken fused
    graph). Check the result with the accuracy gate before shipping it.
    """
    onnxslim = require("onnxslim")
    onnx = require("onnx")
    start = time.perf_counter()
    model = onnx.load(str(src))
    props = [(p.key, p.value) for p in model.metadata_props]
    slimmed = onnxslim.slim(model)
    del slimmed.metadata_props[:]
    for k, v in props:
        e = slimmed.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(slimmed, str(dst))
    return OnnxExport(Path(dst), time.perf_counter() - start, len(slimmed.graph.node))
