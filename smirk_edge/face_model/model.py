"""FLAME-format face model in numpy: parameters -> vertices and landmarks, as SMIRK decodes them.

Decoding (for each batch item):

1. ``v_shaped = v_template + shapedirs @ shape + exprdirs @ expression``
2. full pose = global(3) + neck(3) + jaw(3) + left eye(3) + right eye(3), axis-angle in radians;
   SMIRK drives global and jaw and keeps neck and eyes at zero.
3. pose correctives from ``(R_j - I)`` of joints 1..4, then linear blend skinning.
4. eyelids are added after skinning, in posed space:
   ``v += r_eyelid * eyelid[1] + l_eyelid * eyelid[0]``.
5. landmarks are barycentric points on the posed mesh: 68 points (17 contour points chosen by
   the rounded neck-chain yaw, clamped to +-39 degrees, then 51 static) and 105 MediaPipe-indexed.

All arrays are float32. Units: metres in the model frame (x left of the subject, y up, z toward
the camera); angles in radians.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import InputError
from . import format as fmt


def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle ``(..., 3)`` radians -> rotation matrices ``(..., 3, 3)`` (float32).

    Uses the same epsilon as the torch decoder (``|r| + 1e-8``) so both agree at zero rotation.
    """
    r = np.asarray(rotvec, dtype=np.float32)
    angle = np.linalg.norm(r + np.float32(1e-8), axis=-1, keepdims=True).astype(np.float32)
    axis = r / angle
    cos = np.cos(angle)[..., None]
    sin = np.sin(angle)[..., None]
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zeros = np.zeros_like(x)
    K = np.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], axis=-1).reshape(r.shape[:-1] + (3, 3))
    eye = np.eye(3, dtype=np.float32)
    return (eye + sin * K + (1.0 - cos) * (K @ K)).astype(np.float32)


def yaw_degrees(rot: np.ndarray) -> np.ndarray:
    """Yaw ``(B,)`` degrees of rotations ``(B, 3, 3)``: ``atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2))``.

    The angle FLAME's dynamic contour uses; positive turns the face toward the image right
    (the subject's left), like ``head_pose`` yaw.
    """
    sy = np.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    return np.degrees(np.arctan2(-rot[:, 2, 0], sy)).astype(np.float32)


def yaw_bin(rot: np.ndarray) -> np.ndarray:
    """Row of the dynamic-contour table for rotations ``(B, 3, 3)``.

    :func:`yaw_degrees` rounded, clamped at 39; 0..39 -> rows 0..39, -1..-39 -> rows 40..78,
    below -39 -> row 78.
    """
    y = np.round(np.minimum(yaw_degrees(rot), 39.0)).astype(np.int64)
    neg = np.where(y < -39, 78, 39 - y)
    return np.where(y < 0, neg, y)


@dataclass
class FaceGeometry:
    """Decoded faces of a batch.

    Attributes:
        vertices: ``(B, V, 3)`` metres, model frame.
        landmarks68: ``(B, 68, 3)`` metres (17 yaw-dependent contour points first).
        landmarks105: ``(B, 105, 3)`` metres, MediaPipe-indexed (see ``FaceModel.mp_landmark_indices``).
    """

    vertices: np.ndarray
    landmarks68: np.ndarray
    landmarks105: np.ndarray


def _as_batch(name: str, x, width: int, batch: int | None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != width:
        raise InputError(f"{name} must have shape (B, {width}) or ({width},), got {np.shape(x)}")
    if batch is not None and a.shape[0] != batch:
        raise InputError(f"{name} has batch size {a.shape[0]}, expected {batch}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} holds NaN or inf")
    return a


class FaceModel:
    """A FLAME-format face model (numpy). Load with :meth:`load`; decode with :meth:`decode`.

    The object holds only constant arrays; :meth:`decode` is re-entrant and thread-safe.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], model_id: str = "unnamed", notice: str = ""):
        a = fmt.validate(arrays)
        self.model_id = model_id
        self.notice = notice
        self.arrays = a
        self.v_template = a["v_template"]
        self.faces = a["faces"]
        self.parents = a["parents"]
        self.n_vertices = self.v_template.shape[0]
        V = self.n_vertices
        # (V*3, 350) so one matmul applies shape and expression.
        self._blend = np.concatenate([a["shapedirs"], a["exprdirs"]], axis=2).reshape(V * 3, -1)
        self._posedirs = a["posedirs"].reshape(V * 3, -1)
        self.J_regressor = a["J_regressor"]
        self.lbs_weights = a["lbs_weights"]
        self.l_eyelid = a["l_eyelid"]
        self.r_eyelid = a["r_eyelid"]
        self.mp_landmark_indices = a["mp_landmark_indices"]
        self.face_region_faces = a.get("face_region_faces", np.arange(len(self.faces), dtype=np.int32))
        chain, j = [], 1  # neck, then its ancestors
        while j != -1:
            chain.append(j)
            j = int(self.parents[j])
        self.neck_kin_chain = np.array(chain, dtype=np.int64)

    @classmethod
    def load(cls, path: str | os.PathLike | bytes) -> "FaceModel":
        """Load a face-model ``.npz`` written by :func:`smirk_edge.face_model.format.save`."""
        arrays, meta = fmt.load_arrays(path)
        return cls(arrays, model_id=meta["model_id"], notice=meta["notice"])

    @classmethod
    def standin(cls) -> "FaceModel":
        """The redistributable stand-in face model shipped with the package."""
        return cls.load(fmt.standin_path())

    # ------------------------------------------------------------------ decoding
    def decode(self, shape=None, expression=None, pose=None, jaw=None, eyelid=None,
               neck=None, eyes=None) -> FaceGeometry:
        """Decode a batch of SMIRK parameters.

        Args:
            shape: ``(B, 300)`` identity coefficients (None = zeros).
            expression: ``(B, 50)`` expression coefficients (None = zeros).
            pose: ``(B, 3)`` global head rotation, axis-angle radians.
            jaw: ``(B, 3)`` jaw rotation, axis-angle radians.
            eyelid: ``(B, 2)`` [left, right] closure in [0, 1] (None = open).
            neck: ``(B, 3)`` neck rotation (SMIRK: zero).
            eyes: ``(B, 6)`` left + right eyeball rotation (SMIRK: zero).
        Any argument may also be given without the batch axis. Shapes must agree on B.

        Returns:
            :class:`FaceGeometry` with vertices and landmarks in metres.
        """
        given = [x for x in (shape, expression, pose, jaw, eyelid, neck, eyes) if x is not None]
        B = np.atleast_2d(np.asarray(given[0])).shape[0] if given else 1

        def arg(name, x, width):
            return np.zeros((B, width), np.float32) if x is None else _as_batch(name, x, width, B)

        shape = arg("shape", shape, fmt.N_SHAPE)
        expression = arg("expression", expression, fmt.N_EXPRESSION)
        pose, jaw = arg("pose", pose, 3), arg("jaw", jaw, 3)
        neck, eyes = arg("neck", neck, 3), arg("eyes", eyes, 6)
        eyelid = None if eyelid is None else _as_batch("eyelid", eyelid, 2, B)

        V = self.n_vertices
        betas = np.concatenate([shape, expression], axis=1)
        v_shaped = self.v_template[None] + (betas @ self._blend.T).reshape(B, V, 3)
        joints = np.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)

        full_pose = np.concatenate([pose, neck, jaw, eyes], axis=1).reshape(B, -1, 3)
        rot = rodrigues(full_pose)  # (B, J, 3, 3)
        pose_feature = (rot[:, 1:] - np.eye(3, dtype=np.float32)).reshape(B, -1)
        v_posed = v_shaped + (pose_feature @ self._posedirs.T).reshape(B, V, 3)

        transforms = self._rigid_transforms(rot, joints)  # (B, J, 4, 4)
        T = np.einsum("vj,bjmn->bvmn", self.lbs_weights, transforms)
        verts = np.einsum("bvmn,bvn->bvm", T[:, :, :3, :3], v_posed) + T[:, :, :3, 3]
        if eyelid is not None:
            verts = verts + self.r_eyelid[None] * eyelid[:, 1, None, None] \
                          + self.l_eyelid[None] * eyelid[:, 0, None, None]
        verts = verts.astype(np.float32)

        rel = np.broadcast_to(np.eye(3, dtype=np.float32), (B, 3, 3))
        for j in self.neck_kin_chain:
            rel = rot[:, j] @ rel
        rows = yaw_bin(rel)
        dyn_f = self.arrays["dynamic_lmk_faces_idx"][rows]  # (B, 17)
        dyn_b = self.arrays["dynamic_lmk_bary_coords"][rows]  # (B, 17, 3)
        st_f = np.broadcast_to(self.arrays["lmk_faces_idx"], (B, fmt.N_STATIC_LMK))
        st_b = np.broadcast_to(self.arrays["lmk_bary_coords"], (B, fmt.N_STATIC_LMK, 3))
        lmk68 = self.landmarks(verts, np.concatenate([dyn_f, st_f], 1), np.concatenate([dyn_b, st_b], 1))
        lmk105 = self.landmarks(verts, self.arrays["mp_lmk_faces_idx"], self.arrays["mp_lmk_bary_coords"])
        return FaceGeometry(verts, lmk68, lmk105)

    def _rigid_transforms(self, rot: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """World transforms ``(B, J, 4, 4)`` that move rest-pose points, as in standard LBS."""
        B, J = joints.shape[:2]
        rel_joints = joints.copy()
        rel_joints[:, 1:] -= joints[:, self.parents[1:]]
        local = np.zeros((B, J, 4, 4), np.float32)
        local[:, :, :3, :3] = rot
        local[:, :, :3, 3] = rel_joints
        local[:, :, 3, 3] = 1.0
        chain = [local[:, 0]]
        for j in range(1, J):
            chain.append(chain[int(self.parents[j])] @ local[:, j])
        world = np.stack(chain, axis=1)
        posed_joints = world[:, :, :3, 3]
        # remove the rest-pose joint location so the transform applies to rest-pose vertices
        shift = np.einsum("bjmn,bjn->bjm", world[:, :, :3, :3], joints)
        world = world.copy()
        world[:, :, :3, 3] = posed_joints - shift
        return world

    def landmarks(self, vertices: np.ndarray, faces_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """Barycentric points: ``vertices (B, V, 3)``, ``faces_idx (B, L)`` or ``(L,)``, ``bary (..., L, 3)``."""
        B = vertices.shape[0]
        fi = np.broadcast_to(faces_idx, (B,) + np.shape(faces_idx)[-1:])
        tri = self.faces[fi]  # (B, L, 3)
        pts = vertices[np.arange(B)[:, None, None], tri]  # (B, L, 3, 3)
        b = np.broadcast_to(bary, (B,) + np.shape(bary)[-2:])
        return np.einsum("blk,blkc->blc", b, pts).astype(np.float32)
