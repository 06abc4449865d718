"""MediaPipe face mesh timing, run **by file path** with a MediaPipe 0.10.21 interpreter.

Self-contained on purpose (imports only mediapipe, numpy, cv2, json and the standard library):
the interpreter named by ``SMIRK_EDGE_MEDIAPIPE_PYTHON`` has mediapipe (which pins numpy<2) and
usually not smirk-edge. The harness starts it once per ``smirk-edge bench`` run::

    $SMIRK_EDGE_MEDIAPIPE_PYTHON benchmarks/mediapipe_side.py REQUEST.json OUT.json

Request: ``{"frames": [png paths], "runs": N, "warmup": N, "threads": n}``. Output: ``{"mediapipe":
version, "numpy": ..., "image": {"samples_ms": [...]}, "video": {"samples_ms": [...]},
"landmarks_box": [[x0, y0, x1, y1] per frame] (box of the 478 landmarks, pixels; null if no face)}``.

``image``: ``FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1)``: detection
and mesh on every frame (what the SMIRK demo needs per image). ``video``: ``static_image_mode=False``
(MediaPipe's own tracking) over the frames in order. The time is the ``process()`` call on an RGB
frame plus the BGR -> RGB conversion.
"""

import json
import sys
import time


def _box(res, w, h):
    if not res.multi_face_landmarks:
        return None
    pts = res.multi_face_landmarks[0].landmark
    xs = [p.x * w for p in pts]
    ys = [p.y * h for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]


def main(argv):
    req = json.load(open(argv[0]))
    import cv2
    import mediapipe as mp
    import numpy as np

    frames = [cv2.imread(p, cv2.IMREAD_COLOR) for p in req["frames"]]
    runs, warmup = int(req["runs"]), int(req["warmup"])
    out = {"mediapipe": mp.__version__, "numpy": np.__version__, "opencv": cv2.__version__, "python": sys.version.split()[0]}
    fm = mp.solutions.face_mesh
    boxes = []
    with fm.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        for f in frames:
            h, w = f.shape[:2]
            boxes.append(_box(mesh.process(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)), w, h))
        samples = []
        for i in range(warmup + runs):
            f = frames[i % len(frames)]
            t = time.perf_counter()
            mesh.process(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
            if i >= warmup:
                samples.append((time.perf_counter() - t) * 1e3)
    out["image"] = {"samples_ms": samples}
    with fm.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1) as mesh:
        samples = []
        for i in range(warmup + runs):
            f = frames[i % len(frames)]
            t = time.perf_counter()
            mesh.process(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
            if i >= warmup:
                samples.append((time.perf_counter() - t) * 1e3)
    out["video"] = {"samples_ms": samples}
    out["landmarks_box"] = boxes
    json.dump(out, open(argv[1], "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
