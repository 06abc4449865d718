"""The FLAME-format face model as a torch module (for training and fused export graphs).

Same arithmetic as the numpy decoder :class:`smirk_edge.face_model.FaceModel` (tests hold them to
1e-5): blend shapes, pose correctives, linear blend skinning, eyelids after skinning, 68 landmarks
with a yaw-dependent contour and 105 MediaPipe-indexed landmarks. All constants are buffers; the
module has no learnable parameters. Units: metres, radians.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
import torch
from torch import nn

from smirk_edge.face_model import format as fmt


def batch_rodrigues(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``(N, 3)`` radians -> rotation matrices ``(N, 3, 3)``; epsilon as the numpy decoder."""
    angle = torch.linalg.vector_norm(rotvec + 1e-8, dim=1, keepdim=True)
    axis = rotvec / angle
    cos = torch.cos(angle)[:, :, None]
    sin = torch.sin(angle)[:, :, None]
    x, y, z = axis.unbind(1)
    zeros = torch.zeros_like(x)
    K = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)[None]
    return eye + sin * K + (1.0 - cos) * torch.bmm(K, K)


def yaw_bin(rot: torch.Tensor) -> torch.Tensor:
    """Dynamic-contour row ``(B,)`` int64 for rotations ``(B, 3, 3)`` (see the numpy ``yaw_bin``)."""
    sy = torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    yaw = torch.atan2(-rot[:, 2, 0], sy) * (180.0 / math.pi)
    y = torch.round(torch.clamp(yaw, max=39.0)).to(torch.int64)
    neg = torch.where(y < -39, torch.full_like(y, 78), 39 - y)
    return torch.where(y < 0, neg, y)


class FaceModelLayer(nn.Module):
    """Decode SMIRK parameters to vertices and landmarks.

    Build with :meth:`from_file` (a face-model ``.npz``) or :meth:`from_arrays`.
    ``forward`` returns a dict: ``vertices (B, V, 3)``, ``landmarks68 (B, 68, 3)``,
    ``landmarks105 (B, 105, 3)``, all metres in the model frame.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], model_id: str = "unnamed"):
        super().__init__()
        a = fmt.validate(arrays)
        self.model_id = model_id
        V = a["v_template"].shape[0]
        self.n_vertices = V
        f32 = lambda k: torch.from_numpy(np.ascontiguousarray(a[k], dtype=np.float32))  # noqa: E731
        i64 = lambda k: torch.from_numpy(np.ascontiguousarray(a[k], dtype=np.int64))  # noqa: E731
        self.register_buffer("v_template", f32("v_template"))
        blend = np.concatenate([a["shapedirs"], a["exprdirs"]], axis=2).reshape(V * 3, -1).T  # (350, V*3)
        #: which of the 350 shape + expression components move any vertex (FLAME: all; the stand-in:
        #: 50 identity + 40 expression). Only those rows are kept, so exported graphs carry no zeros.
        used = np.abs(blend).sum(1) > 0
        self.n_shape_used = int(used[:a["shapedirs"].shape[2]].sum())
        self.n_expression_used = int(used[a["shapedirs"].shape[2]:].sum())
        self._all_rows = bool(used.all())
        self.register_buffer("blend", torch.from_numpy(np.ascontiguousarray(blend[used] if not self._all_rows
                                                                            else blend)))
        self.register_buffer("blend_rows", torch.from_numpy(np.flatnonzero(used).astype(np.int64)))
        self.register_buffer("posedirs", torch.from_numpy(
            np.ascontiguousarray(a["posedirs"].reshape(V * 3, -1).T)))  # (36, V*3)
        self.register_buffer("J_regressor", f32("J_regressor"))
        self.register_buffer("lbs_weights", f32("lbs_weights"))
        self.register_buffer("l_eyelid", f32("l_eyelid"))
        self.register_buffer("r_eyelid", f32("r_eyelid"))
        self.register_buffer("faces", i64("faces"))
        # a buffer, not a tensor made per call: CUDA graph capture cannot copy from pageable host memory
        self.register_buffer("homogeneous_row", torch.tensor([0.0, 0.0, 0.0, 1.0]), persistent=False)
        self.register_buffer("lmk_faces_idx", i64("lmk_faces_idx"))
        self.register_buffer("lmk_bary_coords", f32("lmk_bary_coords"))
        self.register_buffer("dynamic_lmk_faces_idx", i64("dynamic_lmk_faces_idx"))
        self.register_buffer("dynamic_lmk_bary_coords", f32("dynamic_lmk_bary_coords"))
        self.register_buffer("mp_lmk_faces_idx", i64("mp_lmk_faces_idx"))
        self.register_buffer("mp_lmk_bary_coords", f32("mp_lmk_bary_coords"))
        region = a.get("face_region_faces")
        self.register_buffer("face_region_faces", torch.arange(len(a["faces"])) if region is None
                             else torch.from_numpy(region.astype(np.int64)))
        self.parents = [int(p) for p in a["parents"]]
        self.register_buffer("parent_index", torch.tensor(self.parents[1:], dtype=torch.int64), persistent=False)
        chain, j = [], 1
        while j != -1:
            chain.append(j)
            j = self.parents[j]
        self.neck_kin_chain = chain

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], model_id: str = "unnamed") -> "FaceModelLayer":
        return cls(arrays, model_id)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "FaceModelLayer":
        arrays, meta = fmt.load_arrays(path)
        return cls(arrays, meta["model_id"])

    def landmarks(self, vertices: torch.Tensor, faces_idx: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """Barycentric points: ``vertices (B, V, 3)``, ``faces_idx (B, L)``, ``bary (B, L, 3)`` -> ``(B, L, 3)``."""
        B, L = faces_idx.shape
        tri = self.faces[faces_idx.reshape(-1)].reshape(B, L * 3)  # vertex ids
        pts = torch.gather(vertices, 1, tri[:, :, None].expand(-1, -1, 3)).reshape(B, L, 3, 3)
        return (bary[..., None] * pts).sum(dim=2)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor, jaw: torch.Tensor,
                eyelid: torch.Tensor | None = None, neck: torch.Tensor | None = None,
                eyes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Decode ``shape (B, 300)``, ``expression (B, 50)``, ``pose (B, 3)``, ``jaw (B, 3)``,
        optional ``eyelid (B, 2)`` [left, right], ``neck (B, 3)``, ``eyes (B, 6)`` (zeros when None)."""
        B = shape.shape[0]
        V = self.n_vertices
        dt = self.v_template.dtype
        if neck is None:
            neck = torch.zeros(B, 3, dtype=dt, device=shape.device)
        if eyes is None:
            eyes = torch.zeros(B, 6, dtype=dt, device=shape.device)
        betas = torch.cat([shape, expression], dim=1)
        if not self._all_rows:
            betas = betas.index_select(1, self.blend_rows)
        v_shaped = self.v_template[None] + (betas @ self.blend).view(B, V, 3)
        joints = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)
        full_pose = torch.cat([pose, neck, jaw, eyes], dim=1)
        J = len(self.parents)
        rot = batch_rodrigues(full_pose.reshape(-1, 3)).view(B, J, 3, 3)
        eye3 = torch.eye(3, dtype=dt, device=shape.device)
        pose_feature = (rot[:, 1:] - eye3).reshape(B, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(B, V, 3)

        rel_joints = torch.cat([joints[:, :1], joints[:, 1:] - joints.index_select(1, self.parent_index)], dim=1)
        local = torch.cat([rot, rel_joints[..., None]], dim=3)  # (B, J, 3, 4)
        bottom = self.homogeneous_row.to(dt).expand(B, J, 1, 4)
        local = torch.cat([local, bottom], dim=2)  # (B, J, 4, 4)
        chain = [local[:, 0]]
        for j in range(1, J):
            chain.append(torch.matmul(chain[self.parents[j]], local[:, j]))
        world = torch.stack(chain, dim=1)
        shift = torch.einsum("bjmn,bjn->bjm", world[:, :, :3, :3], joints)
        trans = world[:, :, :3, 3] - shift
        T_rot = torch.einsum("vj,bjmn->bvmn", self.lbs_weights, world[:, :, :3, :3])
        T_tr = torch.einsum("vj,bjm->bvm", self.lbs_weights, trans)
        verts = torch.einsum("bvmn,bvn->bvm", T_rot, v_posed) + T_tr
        if eyelid is not None:
            verts = verts + self.r_eyelid[None] * eyelid[:, 1:2, None] + self.l_eyelid[None] * eyelid[:, 0:1, None]

        rel = eye3[None].expand(B, 3, 3)
        for j in self.neck_kin_chain:
            rel = torch.matmul(rot[:, j], rel)
        rows = yaw_bin(rel)
        dyn_f = self.dynamic_lmk_faces_idx[rows]
        dyn_b = self.dynamic_lmk_bary_coords[rows]
        st_f = self.lmk_faces_idx[None].expand(B, -1)
        st_b = self.lmk_bary_coords[None].expand(B, -1, -1)
        lmk68 = self.landmarks(verts, torch.cat([dyn_f, st_f], 1), torch.cat([dyn_b, st_b], 1))
        lmk105 = self.landmarks(verts, self.mp_lmk_faces_idx[None].expand(B, -1),
                                self.mp_lmk_bary_coords[None].expand(B, -1, -1))
        return {"vertices": verts, "landmarks68": lmk68, "landmarks105": lmk105}


def project_ndc(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """SMIRK's orthographic camera in torch: ``x = s(X+tx)``, ``y = -s(Y+ty)``, ``z = -sZ`` (NDC)."""
    s = cam[:, None, 0:1]
    xy = s * (points[..., :2] + cam[:, None, 1:3])
    z = s * points[..., 2:3]
    return torch.cat([xy[..., :1], -xy[..., 1:2], -z], dim=-1)
