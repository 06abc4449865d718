"""PyTorch adapter: :class:`TorchRunner` (eager, CUDA graphs or ``torch.compile``).

The reference path, and the path for PyTorch-on-Jetson users. The wrapped module's ``forward``
takes named tensors (``forward(**feed)``) or one tensor, and returns a dict of tensors (a single
tensor or a tuple is accepted when ``outputs`` names it/them). Inputs and outputs on the runner's
side are always numpy; reduced precision lives only inside the runner:

* ``precision='fp32'``: as is. ``'fp16'``: CUDA only. ``'bf16'``: CUDA, or CPU autocast.
* ``cast='autocast'`` (default, ``torch.autocast``) or ``'module'`` (module and float inputs cast).
* ``cuda_graphs=True`` (CUDA only): the first call with a new input shape captures a graph; later
  calls with that shape copy the inputs into its static buffers and replay it.

torch is imported at activation, never when this module is imported.
"""

from __future__ import annotations

import contextlib

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._lazy import require
from .base import OptionError, Runner, RunnerError, TensorMeta, check_choice, resolve

PRECISIONS = ("fp32", "fp16", "bf16")
WARMUP_BEFORE_CAPTURE = 3


def _no_tf32(torch: Any) -> Any:
    """cuDNN convolutions without TF32 (on by default in torch): fp32 means fp32 here, which is
    what the parity with ONNX Runtime's fp32 (0.05 px) needs; the other cuDNN flags stay as set."""
    cd = torch.backends.cudnn
    return cd.flags(enabled=cd.enabled, benchmark=cd.benchmark, deterministic=cd.deterministic, allow_tf32=False)


class TorchRunner(Runner):
    """Runs a ``torch.nn.Module`` on numpy feeds.

    Args:
        model: an ``nn.Module`` or a loader returning one (e.g. a checkpoint loader).
        inputs: metadata of the inputs, e.g. ``[TensorMeta('image', np.float32, ('N', 3, 224, 224))]``
            (a module carries none, so the caller states it; feeds are validated against it).
        outputs: output names in order; needed when ``forward`` returns a tensor or a tuple.
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        precision: ``'fp32'``, ``'fp16'`` (CUDA) or ``'bf16'``.
        cast: ``'autocast'`` or ``'module'`` (how reduced precision is applied).
        channels_last: run 4-D tensors and the module in channels-last memory format.
        cuda_graphs: capture and replay one CUDA graph per input shape (CUDA only).
        fold_bn: fold BatchNorm into the preceding convolutions at activation (inference only).
        branch_streams: run ``module.branches()`` (independent sub-networks given the one input, whose
            output dicts are merged) on one CUDA stream each (CUDA only).
        compile: wrap the module with ``torch.compile`` (``compile_mode``/``compile_backend`` passed on).
        name: free text for reports.
    """

    engine = "torch"

    def __init__(self, model: Any, inputs: Sequence[TensorMeta], outputs: Sequence[str] | None = None,
                 device: str = "cpu", precision: str = "fp32", cast: str = "autocast",
                 channels_last: bool = False, cuda_graphs: bool = False, compile: bool = False,
                 compile_mode: str | None = None, compile_backend: str = "inductor", name: str | None = None,
                 fold_bn: bool = False, branch_streams: bool = False):
        check_choice("precision", precision, list(PRECISIONS))
        check_choice("cast", cast, ["autocast", "module"])
        kind = str(device).split(":")[0]
        check_choice("torch device", kind, ["cpu", "cuda"])
        if precision == "fp16" and kind != "cuda":
            raise OptionError("precision='fp16' needs device='cuda' (use 'fp32' or 'bf16' on the CPU)")
        if cuda_graphs and kind != "cuda":
            raise OptionError("cuda_graphs=True needs device='cuda'")
        if cuda_graphs and compile:
            raise OptionError("choose one of cuda_graphs=True and compile=True (torch.compile has its own "
                              "CUDA-graph mode: compile_mode='reduce-overhead')")
        if not inputs:
            raise OptionError("inputs must describe at least one input (a list of TensorMeta)")
        super().__init__(name=name, device=str(device), precision=precision)
        self._source = model
        self._inputs_meta = [m if isinstance(m, TensorMeta) else TensorMeta(*m) for m in inputs]
        self._output_names = list(outputs) if outputs else None
        self.cast, self.channels_last, self.cuda_graphs = cast, channels_last, cuda_graphs
        self.compile, self.compile_mode, self.compile_backend = compile, compile_mode, compile_backend
        self.fold_bn, self.branch_streams = fold_bn, branch_streams
        self._streams: list[Any] = []
        self.module: Any = None
        self._graphs: dict[tuple, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        self._out_meta: list[TensorMeta] = []

    @classmethod
    def from_artifact(cls, path: Any, precision: str = "fp32", name: str | None = None, device: str = "cpu",
                      cuda_graphs: bool | None = None, compile: bool = False, channels_last: bool | None = None,
                      input_name: str = "image", input_size: int = 224) -> "TorchRunner":
        """A runner for a ``torch-checkpoint`` artifact (the encoder in the official SMIRK key layout,
        read with ``torch.load(weights_only=True)``), used by :func:`smirk_edge.runtimes.registry.make_runner`.

        On CUDA the defaults are the fast ones: the module cast to the precision, channels-last, and
        one CUDA graph per batch size; on the CPU, eager autocast (bf16) or fp32.
        """
        from .torch_encoder import load_encoder

        cuda = str(device).startswith("cuda")
        graphs = cuda and not compile if cuda_graphs is None else cuda_graphs
        return cls(lambda: load_encoder(path), [TensorMeta(input_name, np.float32, ("N", 3, input_size, input_size))],
                   device=device, precision=precision, cast="module" if cuda else "autocast",
                   channels_last=cuda if channels_last is None else channels_last, cuda_graphs=graphs,
                   compile=compile, name=name, fold_bn=True, branch_streams=cuda)

    # ---- activation --------------------------------------------------------------------------
    def activate_impl(self) -> None:
        torch = self._torch = require("torch")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError("device='cuda' asked for, but torch.cuda.is_available() is False on this machine")
        module = resolve(self._source, lambda m: isinstance(m, torch.nn.Module), "a torch.nn.Module")
        module = module.eval().to(self.device)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        if self.precision != "fp32" and self.cast == "module":
            module = module.to(self._dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.fold_bn:
            from .torch_encoder import fold_batchnorm

            fold_batchnorm(module)
        self.module = module
        # independent sub-networks (the SMIRK encoder's three) run on their own CUDA streams
        self._streams = ([torch.cuda.Stream(device=self.device) for _ in module.branches()]
                         if self.branch_streams and self.device.startswith("cuda") and hasattr(module, "branches")
                         else [])
        params = inspect.signature(module.forward).parameters
        names = [m.name for m in self._inputs_meta]
        takes_names = all(n in params for n in names) or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._positional = len(names) == 1 and not takes_names
        self._call: Callable[..., Any] = module
        if self.compile:
            self._call = torch.compile(module, mode=self.compile_mode, backend=self.compile_backend)

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        return list(self._inputs_meta)

    def get_output_metadata_impl(self) -> list[TensorMeta]:
        """What the last inference returned (batch dimension as None); empty before the first call,
        since a module does not declare its outputs."""
        return list(self._out_meta)

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self._out_meta = []
        self.module = None
        self._call = None  # type: ignore[assignment]

    # ---- inference ---------------------------------------------------------------------------
    def _to_device(self, arr: np.ndarray) -> Any:
        return self._prepare(self._torch.from_numpy(np.ascontiguousarray(arr)))

    def _forward(self, tensors: dict[str, Any]) -> dict[str, Any]:
        torch = self._torch
        kind = self.device.split(":")[0]
        use_autocast = self.precision != "fp32" and self.cast == "autocast"
        # autocast's weight cache must stay off while CUDA graphs are captured (freed casts)
        exact = _no_tf32(torch) if self.precision == "fp32" and kind == "cuda" else contextlib.nullcontext()
        with exact, torch.autocast(device_type=kind, dtype=self._dtype, enabled=use_autocast,
                                   cache_enabled=not self.cuda_graphs):
            if self._streams and len(tensors) == 1 and not self.compile:
                return self._name_outputs(self._forward_branches(next(iter(tensors.values()))))
            out = self._call(next(iter(tensors.values()))) if self._positional else self._call(**tensors)
        return self._name_outputs(out)

    def _forward_branches(self, x: Any) -> dict[str, Any]:
        """``module.branches()`` on one CUDA stream each, joined back into the current stream (also
        inside a CUDA graph capture, where it records parallel branches)."""
        torch = self._torch
        current = torch.cuda.current_stream()
        out: dict[str, Any] = {}
        for branch, stream in zip(self.module.branches(), self._streams):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                out.update(branch(x))
        for stream in self._streams:
            current.wait_stream(stream)
        names = self._output_names or list(out)
        return {k: out[k] for k in names if k in out}

    def _name_outputs(self, out: Any) -> dict[str, Any]:
        torch = self._torch
        if isinstance(out, dict):
            if self._output_names is None:
                self._output_names = list(out)
            return dict(out)
        items = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else None
        if items is None or self._output_names is None or len(items) != len(self._output_names):
            raise RunnerError(f"forward returned {type(out).__name__}; return a dict of tensors, or pass "
                              f"outputs=[names] matching the {len(items) if items else '?'} returned tensor(s)")
        return dict(zip(self._output_names, items))

    def _to_numpy(self, outputs: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        result = {}
        for k, v in outputs.items():
            v = v.detach()
            if v.is_floating_point() and v.dtype != torch.float32:
                v = v.float()
            result[k] = v.cpu().numpy().copy()
        if not self._out_meta:
            self._out_meta = [TensorMeta(k, a.dtype, (None,) + a.shape[1:] if a.ndim else ())
                              for k, a in result.items()]
        return result

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            if self.cuda_graphs:
                outputs = self._replay({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})
            else:
                outputs = self._forward({k: self._to_device(v) for k, v in feed.items()})
            return self._to_numpy(outputs)

    def infer_tensors(self, feed: dict[str, Any]) -> dict[str, Any]:
        """Device tensors in, device tensors out (no host copy): the path of the SDK's torch stages.

        Outputs are float32. With CUDA graphs they are views of the graph's static buffers, valid
        until the next call with the same batch size: copy what you keep.
        """
        if not self.is_active:
            self.activate()
        torch = self._torch
        with torch.inference_mode():
            if self.cuda_graphs:
                out = self._replay(feed)
            else:
                out = self._forward({k: self._prepare(v) for k, v in feed.items()})
            return {k: v.float() for k, v in out.items()}

    def _prepare(self, t: Any) -> Any:
        torch = self._torch
        t = t.to(self.device, non_blocking=True)
        if t.is_floating_point() and self.precision != "fp32" and self.cast == "module":
            t = t.to(self._dtype)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _replay(self, feed: dict[str, Any]) -> dict[str, Any]:
        """CUDA graph per input signature: capture on first sight (after warm-up), replay after.
        ``feed``: torch tensors (host or device)."""
        torch = self._torch
        key = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(feed.items()))
        entry = self._graphs.get(key)
        if entry is None:
            static_in = {k: self._prepare(v) for k, v in feed.items()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_BEFORE_CAPTURE):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for k, v in feed.items():
            static_in[k].copy_(v, non_blocking=True)  # casts dtype / memory format into the static buffer
        graph.replay()
        return static_out
