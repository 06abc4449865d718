"""Mixed-precision int8: keep the parts of the encoder that int8 breaks in float, one rung at a time.

Post-training int8 of the three SMIRK encoders is not uniform. Measured on the default model
(200 held-back UTKFace crops, ONNX Runtime x86 QDQ, per-channel weights, MinMax calibration):

* everything int8: 16.5 px mean landmark error (the gate allows 0.5): the pose branch (the small
  MobileNetV3 that predicts rotation and the camera) loses 4.5 degrees and 10 % of the camera
  scale, and the linear heads' int8 outputs shift the jaw;
* pose branch in float: 0.91 px, p99 4.9 px;
* pose branch and the three linear heads in float: 0.44 px, p99 1.8 px (passes).

So export walks a ladder of rungs (:data:`LADDER`), from "all int8" to "more in float", and keeps
the first rung whose artifact passes the gate's int8 bounds on a **selection** set of crops
(200 calibration crops, never the gate's own, so the gate itself stays an independent check). The
pose branch is about a fifth of the encoder's arithmetic, so the speed-up of int8 mostly remains.

Branches are found from the graph, not from node names: every node that an output depends on
belongs to that output's branch (``pose``/``cam`` -> pose, ``expression``/``eyelid``/``jaw`` ->
expression, ``shape`` -> shape). The same rule works on an ONNX graph (for ONNX Runtime's
``nodes_to_exclude``) and on an OpenVINO model (for NNCF's ignored scope).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smirk_edge._lazy import require
from smirk_edge.errors import InputError

#: encoder outputs of each branch
BRANCH_OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "pose": ("pose", "cam"),
    "shape": ("shape",),
    "expression": ("expression", "eyelid", "jaw"),
}


@dataclass(frozen=True)
class Rung:
    """One mixed-precision choice: ``float_branches`` stay float whole, ``float_heads`` keeps the
    final linear layers (Gemm / MatMul feeding the outputs) float."""

    name: str
    float_branches: tuple[str, ...] = ()
    float_heads: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"rung": self.name, "float_branches": list(self.float_branches), "float_heads": self.float_heads}


#: tried in order; the first that passes the int8 bounds on the selection crops is kept
LADDER: tuple[Rung, ...] = (
    Rung("all-int8"),
    Rung("float-heads", float_heads=True),
    Rung("float-pose", ("pose",), float_heads=True),
    Rung("float-pose-expression", ("pose", "expression"), float_heads=True),
)


def _ancestors(producers: Mapping[str, Any], inputs_of: Callable[[Any], Iterable[str]], key: Callable[[Any], str],
               outputs: Iterable[str]) -> dict[str, Any]:
    stack = [producers[o] for o in outputs if o in producers]
    seen: dict[str, Any] = {}
    while stack:
        n = stack.pop()
        k = key(n)
        if k in seen:
            continue
        seen[k] = n
        stack.extend(producers[i] for i in inputs_of(n) if i in producers)
    return seen


def onnx_float_nodes(model: Any, rung: Rung) -> list[str]:
    """Node names of an ONNX ``ModelProto`` (or path) that ``rung`` keeps in float.

    Use the pre-processed graph that the quantizer sees (``quant_pre_process`` renames nodes)."""
    onnx = require("onnx")
    if not hasattr(model, "graph"):
        model = onnx.load(str(model))
    g = model.graph
    names = {o.name for o in g.output}
    missing = sorted({o for outs in BRANCH_OUTPUTS.values() for o in outs} - names)
    if missing:
        raise InputError(f"the encoder graph lacks outputs {missing}; mixed precision needs the six SMIRK outputs")
    producers = {o: n for n in g.node for o in n.output}
    keep: dict[str, Any] = {}
    for b in rung.float_branches:
        keep.update(_ancestors(producers, lambda n: n.input, lambda n: n.name, BRANCH_OUTPUTS[b]))
    if rung.float_heads:
        for n in g.node:
            if n.op_type in ("Gemm", "MatMul"):
                keep[n.name] = n
    order = {n.name: i for i, n in enumerate(g.node)}
    return sorted(keep, key=lambda k: order.get(k, 0))


def openvino_float_ops(model: Any, rung: Rung) -> list[str]:
    """Friendly names of the ops of an ``openvino.Model`` that ``rung`` keeps in float (for
    ``nncf.IgnoredScope(names=...)``)."""
    results = {}
    for r in model.get_results():
        src = r.input_value(0)
        for name in src.get_names():
            results[name] = src.get_node()
    missing = sorted({o for outs in BRANCH_OUTPUTS.values() for o in outs} - set(results))
    if missing:
        raise InputError(f"the OpenVINO model lacks outputs {missing}; mixed precision needs the six SMIRK outputs")
    keep: dict[str, Any] = {}
    key = lambda n: n.get_friendly_name()  # noqa: E731

    def parents(n):
        return [v.get_source_output().get_node() for v in n.inputs()]

    for b in rung.float_branches:
        stack = [results[o] for o in BRANCH_OUTPUTS[b]]
        while stack:
            n = stack.pop()
            if key(n) in keep:
                continue
            keep[key(n)] = n
            stack.extend(parents(n))
    if rung.float_heads:
        for n in model.get_ordered_ops():
            if n.get_type_name() == "MatMul":
                keep[key(n)] = n
    types = {"Convolution", "GroupConvolution", "MatMul", "Add", "Multiply", "ReduceMean", "AvgPool", "Relu",
             "Clamp", "Concat"}
    return [k for k, n in keep.items() if n.get_type_name() in types]


@dataclass
class LadderResult:
    """The rung that was kept, its metrics on the selection crops, and every rung tried."""

    rung: Rung
    metrics: dict[str, float]
    tried: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {**self.rung.to_json(), "selection_metrics": {k: round(v, 4) for k, v in self.metrics.items()},
                "tried": self.tried, "passed": self.passed}


def climb(build: Callable[[Rung], Any], measure: Callable[[Any], dict[str, float]],
          passes: Callable[[dict[str, float]], bool], ladder: Sequence[Rung] = LADDER,
          say: Callable[[str], None] | None = None) -> tuple[Any, LadderResult]:
    """Build each rung in order until one ``passes``; returns ``(artifact, LadderResult)``.

    ``build(rung)`` makes the artifact, ``measure(artifact)`` returns the gate metrics on the
    selection crops. When no rung passes, the last one is returned with ``passed=False`` (the gate
    then rejects it or marks it degraded, as for any failing artifact).
    """
    if not ladder:
        raise InputError("the mixed-precision ladder is empty")
    tried: list[dict[str, Any]] = []
    art, m = None, {}
    for rung in ladder:
        art = build(rung)
        m = measure(art)
        ok = bool(passes(m))
        tried.append({"rung": rung.name, "lmk_mean_px": round(m.get("lmk_mean_px", float("nan")), 4),
                      "lmk_p99_px": round(m.get("lmk_p99_px", float("nan")), 4), "passed": ok})
        if say:
            say(f"int8 rung {rung.name}: lmk mean {m.get('lmk_mean_px', float('nan')):.3f} px, "
                f"p99 {m.get('lmk_p99_px', float('nan')):.3f} px -> {'pass' if ok else 'fail'}")
        if ok:
            return art, LadderResult(rung, m, tried, True)
    return art, LadderResult(ladder[-1], m, tried, False)
