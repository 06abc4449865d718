"""Small ONNX graphs run by torch: :class:`OnnxTorchRunner`, the BlazeFace detectors on a GPU.

The torch backend's detector: the bundle's own BlazeFace ONNX files (the same weights ONNX Runtime
runs), executed node by node with torch operators on the encoder's device, optionally replayed
as one CUDA graph per input shape. Only the operators our detector graphs use are implemented
(:data:`OPS`); any other operator is refused when the file is opened, with its name. The onnx
package reads the file (``pip install onnx``, part of the ``torch`` extra).

torch and onnx are imported at activation, never when this module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._lazy import require
from .base import Runner, RunnerError, TensorMeta

OPS = ("Add", "Concat", "Conv", "DepthToSpace", "Identity", "MaxPool", "Pad", "Relu", "Reshape", "Resize",
       "Transpose")


def _attrs(onnx: Any, node: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _sym_pads(pads: Sequence[int], dims: int) -> tuple[list[int], bool]:
    """ONNX ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` -> F.pad order (last dim first), and
    whether begin == end on every axis (then the convolution pads itself)."""
    begin, end = list(pads[:dims]), list(pads[dims:])
    order: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        order += [int(b), int(e)]
    return order, begin == end


class _Graph:
    """The graph as a list of torch closures over named values."""

    def __init__(self, model: Any, torch: Any, device: Any):
        onnx = require("onnx")
        from onnx import numpy_helper

        F = torch.nn.functional
        g = model.graph
        bad = sorted({n.op_type for n in g.node if n.op_type not in OPS})
        if bad:
            raise RunnerError(f"the torch ONNX runner does not implement {bad} (it runs {list(OPS)})")
        self.consts: dict[str, Any] = {}
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            self.consts[init.name] = torch.from_numpy(np.array(arr)).to(device)
        self.host: dict[str, np.ndarray] = {i.name: np.array(numpy_helper.to_array(i)) for i in g.initializer}
        init_names = set(self.consts)
        self.inputs = [i.name for i in g.input if i.name not in init_names]
        self.outputs = [o.name for o in g.output]
        self.steps: list[tuple[list[str], list[str], Callable[..., Any]]] = []
        for node in g.node:
            a = _attrs(onnx, node)
            self.steps.append((list(node.input), list(node.output), self._op(node.op_type, a, node, F, torch)))

    def _shape_arg(self, name: str) -> list[int]:
        if name not in self.host:
            raise RunnerError(f"the torch ONNX runner needs constant shapes/pads; {name!r} is computed in the graph")
        return [int(v) for v in self.host[name].reshape(-1)]

    def _op(self, op: str, a: dict[str, Any], node: Any, F: Any, torch: Any) -> Callable[..., Any]:
        if op == "Conv":
            strides, group = a.get("strides", [1, 1]), int(a.get("group", 1))
            dil = a.get("dilations", [1, 1])
            order, sym = _sym_pads(a.get("pads", [0, 0, 0, 0]), 2)
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise RunnerError("Conv with auto_pad is not implemented by the torch ONNX runner")
            if sym:  # F.pad order is (left, right, top, bottom); conv2d takes (top, left)
                return lambda x, w, b=None: F.conv2d(x, w, b, strides, [order[2], order[0]], dil, group)
            return lambda x, w, b=None: F.conv2d(F.pad(x, order), w, b, strides, 0, dil, group)
        if op == "Relu":
            return F.relu
        if op == "Add":
            return torch.add
        if op == "Identity":
            return lambda x: x
        if op == "MaxPool":
            k, s = a["kernel_shape"], a.get("strides", a["kernel_shape"])
            order, sym = _sym_pads(a.get("pads", [0, 0, 0, 0]), 2)
            if sym:
                return lambda x: F.max_pool2d(x, k, s, [order[2], order[0]])
            return lambda x: F.max_pool2d(F.pad(x, order, value=float("-inf")), k, s)
        if op == "Pad":
            mode = a.get("mode", b"constant")
            if mode not in (b"constant", "constant"):
                raise RunnerError(f"Pad mode {mode!r} is not implemented by the torch ONNX runner")
            pads = self._shape_arg(node.input[1])
            value = float(self.host[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
            order, _ = _sym_pads(pads, len(pads) // 2)
            return lambda x, *_: F.pad(x, order, value=value)
        if op == "Transpose":
            perm = list(a["perm"])
            return lambda x: x.permute(*perm)
        if op == "Reshape":
            shape = self._shape_arg(node.input[1])

            def reshape(x: Any, _s: Any = None) -> Any:
                dims = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
                return x.reshape(dims)
            return reshape
        if op == "Concat":
            axis = int(a["axis"])
            return lambda *xs: torch.cat(xs, dim=axis)
        if op == "DepthToSpace":
            b = int(a["blocksize"])
            dcr = a.get("mode", b"DCR") in (b"DCR", "DCR")

            def d2s(x: Any) -> Any:
                n, c, h, w = x.shape
                if dcr:
                    y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
                else:
                    y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
                return y.reshape(n, c // (b * b), h * b, w * b)
            return d2s
        if op == "Resize":
            mode = a.get("mode", b"nearest")
            ctm = a.get("coordinate_transformation_mode", b"half_pixel")
            if mode not in (b"linear", "linear") or ctm not in (b"half_pixel", "half_pixel", b"pytorch_half_pixel"):
                raise RunnerError(f"Resize {mode!r}/{ctm!r} is not implemented by the torch ONNX runner")
            names = list(node.input) + [""] * 4
            scales = self._shape_arg_f(names[2]) if names[2] else None
            sizes = self._shape_arg(names[3]) if names[3] else None

            def resize(x: Any, *_: Any) -> Any:
                if sizes is not None:
                    return F.interpolate(x, size=sizes[2:], mode="bilinear", align_corners=False)
                return F.interpolate(x, scale_factor=scales[2:], mode="bilinear", align_corners=False)
            return resize
        raise RunnerError(f"operator {op} is not implemented by the torch ONNX runner")  # pragma: no cover

    def _shape_arg_f(self, name: str) -> list[float]:
        if name not in self.host:
            raise RunnerError(f"the torch ONNX runner needs constant scales; {name!r} is computed in the graph")
        return [float(v) for v in self.host[name].reshape(-1)]

    def __call__(self, feed: dict[str, Any]) -> dict[str, Any]:
        env = dict(self.consts)
        env.update(feed)
        for ins, outs, fn in self.steps:
            args = [env[n] if n else None for n in ins]
            while args and args[-1] is None:
                args.pop()
            env[outs[0]] = fn(*args)
        return {k: env[k] for k in self.outputs}


class OnnxTorchRunner(Runner):
    """Runs a small ONNX graph (:data:`OPS`) with torch on ``device``; numpy in, numpy out.

    Args:
        path: the ``.onnx`` file.
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        cuda_graphs: capture one CUDA graph per input shape (CUDA only; default on CUDA).
        name: free text for reports.
    """

    engine = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", cuda_graphs: bool | None = None,
                 name: str | None = None, precision: str = "fp32"):
        super().__init__(name=name or f"torch-onnx:{os.path.basename(os.fspath(path))}", device=str(device),
                         precision=precision)
        self.path = os.fspath(path)
        self.cuda_graphs = str(device).startswith("cuda") if cuda_graphs is None else bool(cuda_graphs)
        self._graphs: dict[tuple, tuple[Any, dict[str, Any], dict[str, Any]]] = {}

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, precision: str = "fp32", name: str | None = None,
                      device: str = "cpu") -> "OnnxTorchRunner":
        return cls(path, device=device, name=name, precision=precision)

    def activate_impl(self) -> None:
        torch = self._torch = require("torch")
        onnx = require("onnx")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError("device='cuda' asked for, but torch.cuda.is_available() is False on this machine")
        model = onnx.load(self.path)
        self._graph = _Graph(model, torch, torch.device(self.device))
        self._meta_in = [TensorMeta(i.name, np.float32, tuple(d.dim_param or d.dim_value
                                                              for d in i.type.tensor_type.shape.dim))
                         for i in model.graph.input if i.name in self._graph.inputs]
        self._meta_out = [TensorMeta(o.name, np.float32, tuple(d.dim_param or d.dim_value
                                                               for d in o.type.tensor_type.shape.dim))
                          for o in model.graph.output]

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        return list(self._meta_in)

    def get_output_metadata_impl(self) -> list[TensorMeta]:
        return list(self._meta_out)

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self._graph = None

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in feed.items()}
            if not self.cuda_graphs:
                out = self._graph({k: v.to(self.device) for k, v in tensors.items()})
            else:
                out = self._replay(tensors)
            return {k: v.float().cpu().numpy().copy() for k, v in out.items()}

    def _replay(self, tensors: dict[str, Any]) -> dict[str, Any]:
        torch = self._torch
        key = tuple((k, tuple(v.shape)) for k, v in sorted(tensors.items()))
        entry = self._graphs.get(key)
        if entry is None:
            static_in = {k: v.to(self.device) for k, v in tensors.items()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._graph(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._graph(static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for k, v in tensors.items():
            static_in[k].copy_(v, non_blocking=True)
        graph.replay()
        return static_out
