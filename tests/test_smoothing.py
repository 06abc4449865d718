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


def test_identity_lock_is_a_running_mean_that_settles():
    from smirk_edge.smoothing import IdentityLock

    lock = IdentityLock(frames=50)
    rng = np.random.default_rng(0)
    true = rng.normal(0, 1, 300)
    outs = [lock.filter(true + rng.normal(0, 0.5, 300)) for _ in range(200)]
    assert np.abs(outs[-1] - true).mean() < 0.1  # refined as the track goes on
    steps = [np.abs(b - a).mean() for a, b in zip(outs[100:], outs[101:])]
    assert max(steps) < 0.05  # no frame-to-frame jumps once settled


def test_affine_filter_keeps_a_still_transform_and_follows_a_move():
    from smirk_edge.smoothing import AffineFilter

    a = np.array([[1500.0, 30.0, 240.0], [-25.0, -1490.0, 260.0]])
    f = AffineFilter(OneEuroConfig(min_cutoff=1.0, beta=4.0))
    for _ in range(5):
        out = f.filter(a)
    np.testing.assert_allclose(out, a, atol=1e-2)
    moved = a.copy()
    moved[:, 2] += 80.0  # the face jumps 80 px
    for _ in range(30):
        out = f.filter(moved)
    np.testing.assert_allclose(out, moved, atol=0.5)


def test_stream_smoothing_validation_and_one_config_for_all():
    from smirk_edge.smoothing import StreamSmoothing

    one = OneEuroConfig(min_cutoff=2.0)
    s = StreamSmoothing.of(one)
    assert s.landmarks == s.pose == s.expression == one
    with pytest.raises(ValueError):
        StreamSmoothing(identity_frames=0)
    with pytest.raises(ValueError):
        StreamSmoothing(pose={"beta": 1})
