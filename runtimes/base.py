"""The one Runner contract every engine adapter follows.

A runner wraps one built model (an ONNX Runtime session, an OpenVINO compiled model, a TensorRT
engine, a torch module). Building is separate from running: a runner takes either the built
object or a small *loader* (a callable with no arguments, e.g. ``SessionFromOnnx(path)``) that it
calls in :meth:`Runner.activate`. Then::

    with OrtRunner(SessionFromOnnx("encoder.onnx", threads=1)) as runner:
        runner.get_input_metadata()        # [TensorMeta(name='image', dtype=float32, shape=('N', 3, 224, 224))]
        out = runner.infer({"image": x})   # dict[str, np.ndarray], by output name
        runner.last_inference_time()       # seconds spent in the engine by that call

Feeds are validated before they reach an engine (names, dtype, rank, static dimensions, equal
sizes of dimensions that share a symbolic name), so a bad array fails with an
:class:`~smirk_edge.errors.InputError` that says what was expected, never deep inside an engine.
This module imports numpy only.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError, OptionError, RunnerError  # noqa: F401  (re-exported)

Dim = int | str | None
"""One dimension of a tensor: an int when static, a str (symbolic name) or None when dynamic."""


def closest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise :class:`OptionError` with a hint."""
    if value in choices:
        return value
    raise OptionError(f"unknown {what} {value!r}{closest(value, choices)}; choose one of {list(choices)}")


def check_options(what: str, given: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Reject keyword options not in ``accepted``, with a closest-match hint for each."""
    unknown = [k for k in given if k not in accepted]
    if unknown:
        parts = [f"{k!r}{closest(k, accepted)}" for k in unknown]
        raise OptionError(f"{what} does not accept option(s) {', '.join(parts)}; it accepts {sorted(accepted)}")


@dataclass(frozen=True)
class TensorMeta:
    """Name, numpy dtype and shape of one model input or output.

    ``shape`` holds ints for static dimensions and a str (the model's symbolic name, e.g. ``'N'``)
    or None for dynamic ones, e.g. ``('N', 3, 224, 224)``.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype} ({dims})"


def validate_feed(feed: Any, inputs: Sequence[TensorMeta]) -> None:
    """Check ``feed`` against ``inputs``; raise :class:`InputError` naming what is wrong.

    Checks: a mapping of str -> np.ndarray; no missing and no unexpected names (with a hint);
    exact dtype (no silent casting); rank; static dimensions; dynamic dimensions that share a
    symbolic name (e.g. the batch ``'N'`` of two inputs) have the same size.
    """
    if not isinstance(feed, Mapping):
        raise InputError(f"feed must be a dict of name -> numpy array, got {type(feed).__name__}")
    expected = {m.name: m for m in inputs}
    unexpected = [k for k in feed if k not in expected]
    if unexpected:
        parts = [f"{k!r}{closest(k, list(expected))}" for k in unexpected]
        raise InputError(f"unexpected input(s) {', '.join(parts)}; the model takes {sorted(expected)}")
    missing = [k for k in expected if k not in feed]
    if missing:
        want = "; ".join(expected[k].describe() for k in missing)
        raise InputError(f"missing input(s) {missing}: expected {want}")
    symbols: dict[str, tuple[str, int]] = {}
    for name, meta in expected.items():
        arr = feed[name]
        if not isinstance(arr, np.ndarray):
            raise InputError(f"input {name!r} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != meta.dtype:
            raise InputError(f"input {name!r} has dtype {arr.dtype}, the model expects {meta.dtype}; "
                             f"convert it with .astype(np.{meta.dtype.name})")
        if arr.ndim != meta.rank:
            raise InputError(f"input {name!r} has shape {arr.shape} (rank {arr.ndim}); "
                             f"expected rank {meta.rank}: {meta.describe()}")
        for axis, (got, want) in enumerate(zip(arr.shape, meta.shape)):
            if isinstance(want, int) and want >= 0 and got != want:
                raise InputError(f"input {name!r} has shape {arr.shape}; dimension {axis} must be {want} "
                                 f"({meta.describe()})")
            if isinstance(want, str):
                first = symbols.setdefault(want, (name, got))
                if first[1] != got:
                    raise InputError(f"dimension {want!r} is {first[1]} in input {first[0]!r} but {got} in "
                                     f"input {name!r}; inputs that share it must agree")


class Runner:
    """Base of every engine adapter: ``activate`` / ``infer`` / ``deactivate``, a context manager.

    Subclasses implement ``activate_impl``, ``infer_impl``, ``deactivate_impl``,
    ``get_input_metadata_impl`` and ``get_output_metadata_impl``; the base class guards the order
    of calls, validates feeds and times inference.

    Attributes for reports: ``name`` (free text), ``engine`` (``'onnxruntime'``, ``'openvino'``,
    ``'tensorrt'``, ``'torch'``), ``device`` (e.g. ``'cpu'``, ``'CPU'``, ``'cuda:0'``; refined at
    activation), ``precision`` (``'fp32'``, ``'fp16'``, ``'bf16'``, ``'int8'``).
    """

    engine: ClassVar[str] = "base"

    def __init__(self, name: str | None = None, device: str = "cpu", precision: str = "fp32"):
        self.name = name or type(self).__name__
        self.device = device
        self.precision = precision
        self.is_active = False
        self._last_time: float | None = None
        self._inputs: list[TensorMeta] | None = None

    # ---- hooks -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        raise NotImplementedError

    def get_output_metadata_impl(self) -> list[TensorMeta]:
        raise NotImplementedError

    # ---- contract ----------------------------------------------------------------------------
    def activate(self) -> Runner:
        """Build or load the engine object (calls the loader). Returns ``self``."""
        if self.is_active:
            raise RunnerError(f"{self.name} is already active; call deactivate() before activating again")
        try:
            self.activate_impl()
            self._inputs = list(self.get_input_metadata_impl())
        except BaseException:
            try:
                self.deactivate_impl()
            except Exception:  # noqa: BLE001 - cleanup after a failure must not hide the failure
                pass
            raise
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the engine object and its buffers. The runner may be activated again."""
        self._require_active("deactivate")
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False
            self._inputs = None

    def infer(self, feed: Mapping[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        """Run one inference.

        Args:
            feed: input name -> array with the dtype and shape of :meth:`get_input_metadata`.
            check: validate the feed first (turn off only for feeds already checked).
        Returns:
            output name -> array (host numpy memory owned by the caller).
        """
        self._require_active("infer")
        if check:
            validate_feed(feed, self._inputs or [])
        start = time.perf_counter()
        out = self.infer_impl(dict(feed))
        self._last_time = time.perf_counter() - start
        return out

    def get_input_metadata(self) -> list[TensorMeta]:
        self._require_active("get_input_metadata")
        return list(self._inputs or [])

    def get_output_metadata(self) -> list[TensorMeta]:
        self._require_active("get_output_metadata")
        return list(self.get_output_metadata_impl())

    def last_inference_time(self) -> float | None:
        """Seconds spent in the engine by the last :meth:`infer` (None before the first)."""
        return self._last_time

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RunnerError(f"{self.name} is not active: call activate() (or use 'with runner:') before {what}()")

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        if self.is_active:
            self.deactivate()

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        return (f"{type(self).__name__}(name={self.name!r}, engine={self.engine!r}, device={self.device!r}, "
                f"precision={self.precision!r}, {state})")


def resolve(source: Any, is_built: Callable[[Any], bool], what: str) -> Any:
    """Return ``source`` if it is already built, else call it (a loader) and return the result."""
    if is_built(source):
        return source
    if callable(source):
        built = source()
        if not is_built(built):
            raise RunnerError(f"the loader for {what} returned {type(built).__name__}, not {what}")
        return built
    raise RunnerError(f"expected {what} or a loader callable returning one, got {type(source).__name__}")
