"""The Runner contract, with a pure-numpy runner (no engine needed)."""

from __future__ import annotations

import numpy as np
import pytest

from smirk_edge.errors import InputError, SmirkEdgeError
from smirk_edge.runtimes.base import (OptionError, Runner, RunnerError, TensorMeta, check_options, resolve,
                                      validate_feed)

INPUTS = [TensorMeta("image", np.float32, ("N", 3, 4, 4)), TensorMeta("vec", np.float32, ("N", 6))]


class NumpyRunner(Runner):
    engine = "numpy"

    def __init__(self, source="built", fail=False):
        super().__init__(name="np")
        self.source, self.fail, self.events = source, fail, []

    def activate_impl(self):
        self.events.append("activate")
        self.model = resolve(self.source, lambda s: s == "built", "a model")
        if self.fail:
            raise RuntimeError("broken model file")

    def deactivate_impl(self):
        self.events.append("deactivate")

    def get_input_metadata_impl(self):
        return INPUTS

    def get_output_metadata_impl(self):
        return [TensorMeta("sum", np.float32, ("N",))]

    def infer_impl(self, feed):
        return {"sum": feed["image"].sum(axis=(1, 2, 3)) + feed["vec"].sum(axis=1)}


def feed(n=2):
    return {"image": np.ones((n, 3, 4, 4), np.float32), "vec": np.ones((n, 6), np.float32)}


def test_contract_and_context_manager():
    r = NumpyRunner()
    with r as active:
        assert active is r and r.is_active
        assert r.last_inference_time() is None
        out = r.infer(feed())
        np.testing.assert_array_equal(out["sum"], [54.0, 54.0])
        assert r.last_inference_time() > 0
        assert [m.name for m in r.get_input_metadata()] == ["image", "vec"]
        assert r.get_output_metadata()[0].shape == ("N",)
    assert not r.is_active and r.events == ["activate", "deactivate"]
    r.activate()  # may be activated again after deactivation
    r.deactivate()


def test_double_activation_and_use_before_or_after():
    r = NumpyRunner()
    with pytest.raises(RunnerError, match="not active.*activate"):
        r.infer(feed())
    with pytest.raises(RunnerError, match="not active"):
        r.get_input_metadata()
    r.activate()
    with pytest.raises(RunnerError, match="already active"):
        r.activate()
    r.deactivate()
    with pytest.raises(RunnerError, match="not active"):
        r.infer(feed())
    with pytest.raises(RunnerError, match="not active"):
        r.deactivate()
    assert issubclass(RunnerError, SmirkEdgeError)


def test_failed_activation_cleans_up_and_stays_inactive():
    r = NumpyRunner(fail=True)
    with pytest.raises(RuntimeError, match="broken"):
        r.activate()
    assert not r.is_active and r.events == ["activate", "deactivate"]


def test_loader_or_built_object():
    calls = []

    def loader():
        calls.append(1)
        return "built"

    r = NumpyRunner(source=loader)
    with r:
        assert calls == [1]  # called at activation, not construction
    with pytest.raises(RunnerError, match="loader.*returned str"):
        NumpyRunner(source=lambda: "junk").activate()
    with pytest.raises(RunnerError, match="expected a model or a loader"):
        NumpyRunner(source=42).activate()


@pytest.mark.parametrize("bad, message", [
    ([1, 2], "must be a dict"),
    ({"image": np.ones((2, 3, 4, 4), np.float32)}, r"missing input\(s\) \['vec'\].*vec: float32 \(N, 6\)"),
    ({**feed(), "imagee": np.ones(1)}, r"unexpected input\(s\) 'imagee' \(did you mean 'image'\?\)"),
    ({**feed(), "vec": np.ones((2, 6))}, r"dtype float64.*expects float32.*astype\(np.float32\)"),
    ({**feed(), "vec": np.ones((2, 6, 1), np.float32)}, r"rank 3.*expected rank 2"),
    ({**feed(), "image": np.ones((2, 3, 5, 4), np.float32)}, r"dimension 2 must be 4"),
    ({**feed(), "vec": np.ones((3, 6), np.float32)}, r"dimension 'N' is 2 in input 'image' but 3 in input 'vec'"),
    ({**feed(), "vec": [[1.0] * 6] * 2}, r"'vec' must be a numpy array, got list"),
])
def test_feed_validation(bad, message):
    with pytest.raises(InputError, match=message):
        validate_feed(bad, INPUTS)
    with NumpyRunner() as r, pytest.raises(InputError, match=message):
        r.infer(bad)


def test_dynamic_dims_as_none_accept_any_size():
    validate_feed({"x": np.zeros((5, 2), np.int64)}, [TensorMeta("x", np.int64, (None, 2))])
    meta = TensorMeta("x", "float16", (None, 3))
    assert meta.dtype == np.float16 and meta.is_dynamic and meta.describe() == "x: float16 (?, 3)"


def test_unknown_options_get_a_hint():
    with pytest.raises(OptionError, match=r"'thread' \(did you mean 'threads'\?\)"):
        check_options("the runner", {"thread": 1}, ["threads", "providers"])
    assert issubclass(OptionError, ValueError)
