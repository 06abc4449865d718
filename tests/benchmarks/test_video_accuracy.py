"""The video accuracy harness's measures on made-up trajectories with known answers."""

import numpy as np

from smirk_edge.benchmarks.video_accuracy import clip_metrics, jitter, lag_frames, longest_run, nme


def face(t: np.ndarray) -> np.ndarray:
    """(T, 105, 2) points of a 100 px face moving on a smooth path."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (105, 2))
    base[0], base[1] = (0, 0), (100, 100)  # a 100 x 100 box
    path = np.stack([200 + 40 * np.sin(t / 7.0), 150 + 25 * np.cos(t / 5.0)], -1)
    return base[None] + path[:, None]


def test_measures_on_known_trajectories():
    t = np.arange(120, dtype=np.float64)
    ref = face(t)
    assert np.allclose(nme(ref, ref), 0)
    assert np.allclose(nme(ref + [3.0, 4.0], ref), 0.05)  # 5 px on a 100 px face
    late = face(t - 2)  # ours two frames behind
    assert abs(lag_frames(late, ref, np.full(len(t), 100.0)) - 2) < 0.3
    line = np.linspace(0, 50, 30)[:, None, None] * np.ones((1, 105, 2))
    assert jitter(line, np.full(30, 100.0)) < 1e-12
    noisy = ref + np.random.default_rng(1).normal(0, 1, ref.shape)
    assert jitter(noisy, np.full(len(t), 100.0)) > 3 * jitter(ref, np.full(len(t), 100.0))
    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0], bool)) == 3


def test_missing_faces_count_as_misses_and_as_above_ten_percent():
    t = np.arange(20, dtype=np.float64)
    ref = face(t)
    ours = ref.copy()
    ours[5:12] = np.nan
    m = clip_metrics(ours, ref)
    assert m["missed"] == 7 and m["max_run_above_10"] == 7 and m["nme_mean"] < 1e-9
