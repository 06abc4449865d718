import numpy as np
import pytest

from smirk_edge.smoothing import OneEuroConfig, OneEuroFilter


def test_constant_signal_is_unchanged():
    f = OneEuroFilter()
    x = np.array([1.0, -2.0, 3.0])
    for _ in range(10):
        y = f.filter(x)
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_jitter_is_reduced_and_motion_followed():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0, fps=30))
    noisy = 5.0 + rng.normal(0, 1.0, 300)
    out = np.array([f.filter(np.array([v]))[0] for v in noisy])
    assert out[50:].std() < 0.4 * noisy[50:].std()
    # a fast ramp is followed with little lag when beta > 0
    fast = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=1.0, fps=30))
    slow = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0, fps=30))
    ramp = np.arange(60) * 2.0
    lag_fast = ramp[-1] - [fast.filter(np.array([v])) for v in ramp][-1][0]
    lag_slow = ramp[-1] - [slow.filter(np.array([v])) for v in ramp][-1][0]
    assert lag_fast < 0.5 * lag_slow


def test_timestamps_and_reset():
    f = OneEuroFilter(OneEuroConfig(min_cutoff=0.5, beta=0.0))
    f.filter(np.zeros(2), t=0.0)
    a = f.filter(np.ones(2), t=0.01)  # short interval: small step
    f.reset()
    f.filter(np.zeros(2), t=0.0)
    b = f.filter(np.ones(2), t=1.0)  # long interval: larger step
    assert (b > a).all()


@pytest.mark.parametrize("bad", [dict(min_cutoff=0), dict(beta=-1), dict(fps=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        OneEuroConfig(**bad)
