"""Run a .tflite face detector on a stack of NHWC float32 inputs (reference for the parity check).

Runs in its own environment (the one with ``ai-edge-litert`` or ``tensorflow``), called by
``convert_blazeface.py --check``::

    python _tflite_reference.py MODEL.tflite INPUT.npy OUTPUT.npz

INPUT.npy: float32 (B, S, S, 3) in [-1, 1]. OUTPUT.npz: ``regressors`` (B, N, 16) and
``classificators`` (B, N, 1), one interpreter call per image (the models have batch 1).
"""

from __future__ import annotations

import sys

import numpy as np


def _interpreter(path: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter  # type: ignore[no-redef]
    return Interpreter(model_path=path)


def main() -> int:
    model, fin, fout = sys.argv[1:4]
    x = np.load(fin).astype(np.float32)
    it = _interpreter(model)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = it.get_output_details()
    # the output order of the two models differs; tell them apart by the last dim
    reg_i = next(o["index"] for o in outs if o["shape"][-1] == 16)
    cls_i = next(o["index"] for o in outs if o["shape"][-1] == 1)
    regs, clss = [], []
    for img in x:
        it.set_tensor(inp, img[None])
        it.invoke()
        regs.append(it.get_tensor(reg_i)[0].copy())
        clss.append(it.get_tensor(cls_i)[0].copy())
    np.savez(fout, regressors=np.stack(regs), classificators=np.stack(clss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
