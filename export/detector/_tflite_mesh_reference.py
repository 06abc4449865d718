"""Run MediaPipe's face-mesh network (.tflite) on a stack of NHWC float32 inputs (parity reference).

Runs in its own environment (the one with ``ai-edge-litert`` or ``tensorflow``), called by
``convert_face_mesh.py --check`` and the parity test::

    python _tflite_mesh_reference.py MODEL.tflite INPUT.npy OUTPUT.npz

INPUT.npy: float32 ``(B, 192, 192, 3)`` RGB in the network's own range (``[0, 1]``).
OUTPUT.npz: ``landmarks`` ``(B, 1404)`` (468 x (x, y, z), input pixels) and ``score`` ``(B, 1)``
(face logit), told apart by their width; one interpreter call per image (the model has batch 1).
"""

from __future__ import annotations

import sys

import numpy as np

from _tflite_reference import _interpreter  # the detector's reference, beside this file

WIDTHS = {"landmarks": 1404, "score": 1}


def main() -> int:
    model, fin, fout = sys.argv[1:4]
    it = _interpreter(model)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    index = {name: next(o["index"] for o in it.get_output_details() if o["shape"][-1] == w)
             for name, w in WIDTHS.items()}
    got: dict[str, list] = {name: [] for name in WIDTHS}
    for img in np.load(fin).astype(np.float32):
        it.set_tensor(inp, img[None])
        it.invoke()
        for name, i in index.items():
            got[name].append(it.get_tensor(i).reshape(-1).copy())
    np.savez(fout, **{name: np.stack(v) for name, v in got.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
