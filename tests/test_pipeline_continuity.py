"""The pipeline is continuous in its detection box: a sub-millipixel change of the box (the float
rounding by which two engines, or two batch sizes of one engine, disagree) moves the landmarks by a
few hundredths of a pixel, not by whole pixels (a refine decision or a crop that jumped).

The crop's levels are rounded to integers (as a uint8 crop is), so such a change flips a few crop
pixels by one level; on the embedded default model that moves the landmarks by up to ~0.03 px.
The GPU test of ``rec.batch`` against ``rec(img)`` (tests/runtimes/test_torch_gpu.py) relies on this.
"""

from __future__ import annotations

import cv2
import numpy as np


def test_landmarks_are_continuous_in_the_box():
    from smirk_edge import Reconstructor
    from smirk_edge.benchmarks.stress_sheet import example_photo
    from smirk_edge.pipeline import StageTimer

    img = cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)
    with Reconstructor() as rec:
        det = rec.stages.detect(img, StageTimer())
        assert len(det) == 1

        def run(boxes: np.ndarray) -> np.ndarray:
            faces = rec.stages.reconstruct(img, boxes, det.scores, det.rolls, rec.options.refine, StageTimer(),
                                           rec.options.refine_threshold)
            assert len(faces) == 1
            return faces[0].landmarks68

        base = run(det.boxes)
        rng = np.random.default_rng(0)
        moved = [float(np.abs(run(det.boxes + rng.uniform(-1e-3, 1e-3, det.boxes.shape)) - base).max())
                 for _ in range(6)]
        assert max(moved) <= 0.1, f"landmarks moved {max(moved):.4f} px for a 0.001 px change of the box"
        assert max(moved) > 0.0, "the box change never reached the crop: the check above is vacuous"
        # a visible change of the box (4 px, a detector's jitter between frames) is absorbed by the
        # model finding the face in its crop: the landmarks follow the face, not the box
        shifted = run(det.boxes + np.array([4.0, 0.0, 4.0, 0.0]))
        assert float(np.abs(shifted - base).mean()) < 1.5
