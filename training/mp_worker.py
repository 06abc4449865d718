"""MediaPipe face-mesh worker for ``smirk-edge annotate`` (runs in the MediaPipe environment).

Self-contained on purpose: it imports only mediapipe, numpy, cv2, json (and the standard
library), because it runs **by file path** with an interpreter that has mediapipe 0.10.21 (which
pins numpy<2) and usually not smirk-edge. The front end (:mod:`smirk_edge.training.annotate`)
starts it as a subprocess and talks to it over stdin/stdout, one JSON object per line.

Protocol (version :data:`PROTOCOL`):

* on start the worker writes ``{"ready": true, "protocol": 1, "mediapipe": "0.10.21",
  "numpy": ..., "opencv": ...}`` (or ``{"ready": false, "error": "..."}`` and exits 3);
* request: ``{"id": <int>, "path": "<absolute path>", "max_faces": <int>, "pad_retry": <bool>}``;
* reply: ``{"id": <int>, "width": W, "height": H, "faces": F, "padded": <bool>,
  "landmarks": "<base64 of float32 little-endian (F, 478, 3)>", "error": ""}``. Landmarks are in
  pixels of the image as decoded (EXIF orientation applied): ``x = x_norm * W``,
  ``y = y_norm * H``, ``z = z_norm * W`` (MediaPipe's z: relative depth, origin near the head
  centre, smaller = closer to the camera, "roughly the same scale as x"). Faces come in
  MediaPipe's order (not sorted); the front end picks the largest. An image that cannot be
  decoded gives ``width = height = 0``, ``faces = 0`` and a non-empty ``error``;
* an empty line or end of input stops the worker.

``pad_retry``: when no face is found, the image is padded with black by 25 % of its longer side on
every edge and tried once more (MediaPipe's short-range detector misses faces that fill the whole
frame, as in tight face crops); landmarks are mapped back to the unpadded image (``padded: true``).

Run by hand: ``echo '{"id":0,"path":"/abs/face.jpg","max_faces":1}' | mp/bin/python mp_worker.py``.
"""

import base64
import json
import os
import sys

PROTOCOL = 1
N_LANDMARKS = 478
PAD_FRACTION = 0.25


_OUT = sys.stdout


def _reply(obj):
    _OUT.write(json.dumps(obj) + "\n")
    _OUT.flush()


def main():
    global _OUT
    # Keep the protocol channel clean: native libraries may print to fd 1, so the replies go to a
    # private copy of stdout and fd 1 is pointed at stderr.
    _OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import cv2
        import mediapipe as mp
        import numpy as np
    except Exception as exc:  # noqa: BLE001 - report any import failure to the front end
        _reply({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 3

    cv2.setNumThreads(1)
    meshes = {}

    def mesh_for(n):
        if n not in meshes:
            meshes[n] = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=n, refine_landmarks=True,
                min_detection_confidence=0.5)
        return meshes[n]

    def run(rgb, n):
        """(F, 478, 3) normalised landmarks of ``rgb`` (H, W, 3) uint8, F >= 0."""
        res = mesh_for(n).process(rgb)
        if not res.multi_face_landmarks:
            return np.zeros((0, N_LANDMARKS, 3), np.float64)
        out = []
        for face in res.multi_face_landmarks:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], np.float64)
            if pts.shape == (N_LANDMARKS, 3):
                out.append(pts)
        return np.stack(out) if out else np.zeros((0, N_LANDMARKS, 3), np.float64)

    _reply({"ready": True, "protocol": PROTOCOL, "mediapipe": getattr(mp, "__version__", "?"),
            "numpy": np.__version__, "opencv": cv2.__version__})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        req = json.loads(line)
        out = {"id": req.get("id"), "width": 0, "height": 0, "faces": 0, "padded": False,
               "landmarks": "", "error": ""}
        try:
            try:  # Python reads the file: OpenCV never sees a path (non-UTF-8 names crash it)
                with open(req["path"], "rb") as fh:
                    img = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_COLOR)
            except OSError:
                img = None
            if img is None or img.size == 0:
                out["error"] = "cannot decode image (missing, corrupt or unsupported format)"
                _reply(out)
                continue
            h, w = img.shape[:2]
            out["width"], out["height"] = int(w), int(h)
            rgb = np.ascontiguousarray(img[:, :, ::-1])
            n = max(1, int(req.get("max_faces", 1)))
            norm = run(rgb, n)
            if len(norm):
                px = norm * np.array([w, h, w], np.float64)
            elif req.get("pad_retry", True):
                p = int(round(PAD_FRACTION * max(w, h)))
                big = cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
                norm = run(big, n)
                W, H = w + 2 * p, h + 2 * p
                px = norm * np.array([W, H, W], np.float64) - np.array([p, p, 0.0])
                out["padded"] = bool(len(norm))
            else:
                px = norm
            out["faces"] = int(len(px))
            out["landmarks"] = base64.b64encode(px.astype("<f4").tobytes()).decode("ascii")
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
            out.update(faces=0, landmarks="", error=f"{type(exc).__name__}: {exc}")
        _reply(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
