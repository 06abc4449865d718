"""Synthetic faces with ground truth: a face model rendered with random parameters.

:class:`SyntheticFaces` draws SMIRK parameters (shape, expression including one-sided slots, jaw,
eyelids, head pose, camera), decodes them with :class:`~smirk_edge.training.face_model.FaceModelLayer`,
rasterises the face region with :class:`~smirk_edge.training.renderer.MeshRenderer` and shades it
with a random directional light, ambient term and skin-like albedo on a random background (smooth
noise, colour gradients, or crops of photos you pass in). Everything is batched torch and runs on
the GPU when the face model and generator live there. Landmarks come out in the data convention of
:mod:`.data` (NDC, ``px = (ndc + 1) * S / 2``), with the ground-truth parameters and vertices.

Uses: tests (a fixed, learnable batch without any photo), measuring parameter recovery
(``smirk-edge evaluate``: vertex error, left/right recovery of one-sided expressions), and an
optional training source (``kind: synthetic``).

The stand-in's slots (docs/standin_face_model.md): 0..15 semantic, with left/right pairs
(8, 9) mouth corner raise, (10, 11) brow raise, (12, 13) squint, (14, 15) mouth corner lower;
16..39 data components; 40..49 unused. ``eyelid[0]`` is the left eye (+x, image right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from smirk_edge.errors import InputError

#: Left/right expression slot pairs of the stand-in face model (left first).
STANDIN_LR_PAIRS = ((8, 9), (10, 11), (12, 13), (14, 15))
N_SEMANTIC = 16
N_DATA_SLOTS = 40
#: MediaPipe eye-ring vertices used to place the 10 iris points (468-472 right, 473-477 left).
_RIGHT_EYE = (33, 133, 159, 145)
_LEFT_EYE = (362, 263, 386, 374)


@dataclass(frozen=True)
class SyntheticConfig:
    """Ranges of the random parameters and scene. Angles in degrees, translations in metres."""

    shape_std: float = 1.0
    semantic_prob: float = 0.25
    semantic_max: float = 1.5
    data_std: float = 0.5
    one_sided_prob: float = 0.5
    one_sided_min: float = 0.8
    one_sided_max: float = 2.0
    jaw_open_max: float = 0.35
    eyelid_closed_prob: float = 0.2
    yaw: float = 35.0
    pitch: float = 20.0
    roll: float = 12.0
    cam_scale: tuple[float, float] = (6.0, 8.5)
    cam_shift: float = 0.012
    ambient: tuple[float, float] = (0.25, 0.55)
    diffuse: tuple[float, float] = (0.45, 0.85)
    pixel_noise: float = 0.01


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def euler_to_axis_angle(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Head rotation ``R = Rz(roll) Ry(yaw) Rx(pitch)`` (radians, ``(N,)`` each) -> axis-angle ``(N, 3)``."""
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    Rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], 1).view(-1, 3, 3)
    Ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    Rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], 1).view(-1, 3, 3)
    R = Rz @ Ry @ Rx
    cos = ((R[:, 0, 0] + R[:, 1, 1] + R[:, 2, 2] - 1) / 2).clamp(-1 + 1e-7, 1 - 1e-7)
    angle = torch.acos(cos)
    axis = torch.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], 1)
    axis = axis / (2 * torch.sin(angle)[:, None]).clamp(min=1e-8)
    return axis * angle[:, None]


class SyntheticFaces:
    """Random faces of a face model, rendered in batches (see the module docstring).

    Args:
        face_model_path: a face-model ``.npz`` (default: the shipped stand-in).
        image_size: crop side ``S`` in pixels.
        device: torch device for the face model and the rendering.
        config: :class:`SyntheticConfig`.
        photos: optional list of BGR uint8 images used as backgrounds (random crops).
    """

    def __init__(self, face_model_path: str | None = None, image_size: int = 224, device="cpu",
                 config: SyntheticConfig = SyntheticConfig(), photos: list[np.ndarray] | None = None):
        from smirk_edge.face_model import standin_path

        from .face_model import FaceModelLayer
        from .renderer import MeshRenderer, vertex_normals

        self.device = torch.device(device)
        self.layer = FaceModelLayer.from_file(face_model_path or standin_path()).to(self.device)
        self.size = int(image_size)
        self.renderer = MeshRenderer.from_face_model(self.layer, image_size=self.size).to(self.device)
        self._normals = vertex_normals
        self.config = config
        self.photos = [p for p in (photos or []) if p is not None and p.ndim == 3]
        V = self.layer.n_vertices
        if V == 468:  # MediaPipe's mesh: 478 = vertices + 10 iris points at the eye-ring centres
            self.mp_layout = True
            self._hull_idx = None
        else:
            self.mp_layout = False
            region_v = torch.unique(self.layer.faces[self.layer.face_region_faces].reshape(-1)).cpu()
            pick = np.linspace(0, len(region_v) - 1, 478).round().astype(np.int64)
            self._hull_idx = region_v[pick].to(self.device)
        self.n_expression_used = self.layer.n_expression_used

    # ------------------------------------------------------------------ parameters

    def sample_params(self, n: int, generator: torch.Generator | None = None,
                      one_sided: bool | None = None) -> dict[str, torch.Tensor]:
        """Random parameters: ``shape (n, 300)``, ``expression (n, 50)``, ``pose (n, 3)``,
        ``jaw (n, 3)``, ``eyelid (n, 2)``, ``cam (n, 3)``, plus ``side (n,)`` int64: for samples
        given one one-sided expression, 0 = left slot active, 1 = right, -1 = none, and
        ``pair (n,)`` the index into :data:`STANDIN_LR_PAIRS` (-1 = none).

        ``one_sided``: True gives every sample exactly one one-sided slot (and no other semantic
        slot of that pair); None uses ``config.one_sided_prob``.
        """
        c, g, dev = self.config, generator, self.device
        shape = torch.randn(n, 300, generator=g, device=dev) * c.shape_std
        expr = torch.zeros(n, 50, device=dev)
        on = torch.rand(n, N_SEMANTIC, generator=g, device=dev) < c.semantic_prob
        expr[:, :N_SEMANTIC] = on * torch.rand(n, N_SEMANTIC, generator=g, device=dev) * c.semantic_max
        expr[:, N_SEMANTIC:N_DATA_SLOTS] = torch.randn(n, N_DATA_SLOTS - N_SEMANTIC, generator=g, device=dev) * c.data_std
        for a, b in STANDIN_LR_PAIRS:  # no symmetric co-activation by default
            expr[:, b] = torch.where(expr[:, a] > 0, torch.zeros_like(expr[:, b]), expr[:, b])
        p_side = 1.0 if one_sided else c.one_sided_prob
        chosen = torch.rand(n, generator=g, device=dev) < p_side
        pair = torch.randint(len(STANDIN_LR_PAIRS), (n,), generator=g, device=dev)
        side = torch.randint(2, (n,), generator=g, device=dev)
        mag = _uniform(n, c.one_sided_min, c.one_sided_max, g, dev)
        pairs = torch.tensor(STANDIN_LR_PAIRS, device=dev)
        rows = torch.arange(n, device=dev)
        for k in range(2):
            expr[rows, pairs[pair, k]] = torch.where(chosen, torch.where(side == k, mag, torch.zeros_like(mag)),
                                                     expr[rows, pairs[pair, k]])
        if self.n_expression_used < 50:
            expr[:, self.n_expression_used:] = 0
        jaw = torch.zeros(n, 3, device=dev)
        jaw[:, 0] = torch.rand(n, generator=g, device=dev) ** 2 * c.jaw_open_max
        jaw[:, 1:] = (torch.rand(n, 2, generator=g, device=dev) - 0.5) * 0.1
        closed = torch.rand(n, 2, generator=g, device=dev) < c.eyelid_closed_prob
        eyelid = torch.where(closed, _uniform(n * 2, 0.7, 1.0, g, dev).view(n, 2),
                             _uniform(n * 2, 0.0, 0.3, g, dev).view(n, 2))
        deg = math.pi / 180
        pose = euler_to_axis_angle(_uniform(n, -c.yaw, c.yaw, g, dev) * deg,
                                   _uniform(n, -c.pitch, c.pitch, g, dev) * deg,
                                   _uniform(n, -c.roll, c.roll, g, dev) * deg)
        cam = torch.stack([_uniform(n, *c.cam_scale, g, dev), _uniform(n, -c.cam_shift, c.cam_shift, g, dev),
                           _uniform(n, -c.cam_shift, c.cam_shift, g, dev)], 1)
        return {"shape": shape, "expression": expr, "pose": pose, "jaw": jaw, "eyelid": eyelid, "cam": cam,
                "side": torch.where(chosen, side, torch.full_like(side, -1)),
                "pair": torch.where(chosen, pair, torch.full_like(pair, -1))}

    # ------------------------------------------------------------------ scene

    def backgrounds(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, 3, S, S)`` RGB backgrounds in [0, 1]: smooth noise, gradients, or photo crops."""
        g, dev, S = generator, self.device, self.size
        kinds = torch.randint(3 if self.photos else 2, (n,), generator=g, device=dev).tolist()
        out = torch.empty(n, 3, S, S, device=dev)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, S, device=dev), torch.linspace(0, 1, S, device=dev),
                                indexing="ij")
        for i, k in enumerate(kinds):
            if k == 0:
                low = torch.rand(1, 3, 6, 6, generator=g, device=dev)
                img = torch.nn.functional.interpolate(low, size=(S, S), mode="bicubic", align_corners=False)[0]
                img = img + 0.05 * torch.randn(3, S, S, generator=g, device=dev)
            elif k == 1:
                a, b = torch.rand(3, 1, 1, generator=g, device=dev), torch.rand(3, 1, 1, generator=g, device=dev)
                th = float(torch.rand(1, generator=g, device=dev)) * 2 * math.pi
                t = (math.cos(th) * xx + math.sin(th) * yy)
                t = (t - t.min()) / (t.max() - t.min() + 1e-6)
                img = a * (1 - t) + b * t
            else:
                photo = self.photos[int(torch.randint(len(self.photos), (1,), generator=g, device=dev))]
                h, w = photo.shape[:2]
                side = max(8, int(min(h, w) * (0.3 + 0.7 * float(torch.rand(1, generator=g, device=dev)))))
                y0 = int(torch.randint(max(1, h - side + 1), (1,), generator=g, device=dev))
                x0 = int(torch.randint(max(1, w - side + 1), (1,), generator=g, device=dev))
                crop = torch.from_numpy(np.ascontiguousarray(photo[y0:y0 + side, x0:x0 + side, ::-1])).to(dev)
                crop = crop.permute(2, 0, 1)[None].float() / 255.0
                img = torch.nn.functional.interpolate(crop, size=(S, S), mode="bilinear", align_corners=False)[0]
            out[i] = img.clamp(0, 1)
        return out

    def landmarks478(self, ndc: torch.Tensor) -> torch.Tensor:
        """``(B, 478, 2)`` hull points in NDC: MediaPipe's layout on a 468-vertex model (vertices +
        10 iris points at the eye-ring centres), else 478 face-region vertices spread over the mesh."""
        xy = ndc[..., :2]
        if not self.mp_layout:
            return xy[:, self._hull_idx]
        r = xy[:, list(_RIGHT_EYE)].mean(1, keepdim=True).expand(-1, 5, -1)
        left = xy[:, list(_LEFT_EYE)].mean(1, keepdim=True).expand(-1, 5, -1)
        return torch.cat([xy, r, left], dim=1)

    @torch.no_grad()
    def render(self, params: dict[str, torch.Tensor], generator: torch.Generator | None = None,
               background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Render ``params`` (as :meth:`sample_params` returns).

        Returns ``image (B, 3, S, S)`` RGB in [0, 1], ``mask (B, 1, S, S)``, ``landmarks105 (B, 105, 2)``,
        ``landmarks68 (B, 68, 2)``, ``landmarks478 (B, 478, 2)`` NDC, ``vertices (B, V, 3)`` metres
        (model frame), ``ndc_vertices (B, V, 3)``.
        """
        from .face_model import project_ndc

        g, dev, c = generator, self.device, self.config
        geo = self.layer(params["shape"], params["expression"], params["pose"], params["jaw"], params["eyelid"])
        cam = params["cam"]
        ndc = project_ndc(geo["vertices"], cam)
        B, S = ndc.shape[0], self.size
        ro = self.renderer(ndc)
        normals = self._normals(ndc, self.renderer.region_faces)
        fidx = ro.face_index.clamp(min=0)  # (B, S, S) into the full faces
        vid = self.layer.faces[fidx]  # (B, S, S, 3)
        bidx = torch.arange(B, device=dev)[:, None, None, None].expand_as(vid)
        n = (ro.bary[..., None] * normals[bidx, vid]).sum(3)  # (B, S, S, 3)
        n = torch.nn.functional.normalize(n, dim=-1, eps=1e-6)
        light = torch.stack([_uniform(B, -0.8, 0.8, g, dev), _uniform(B, -0.8, 0.8, g, dev),
                             -_uniform(B, 0.6, 1.2, g, dev)], 1)  # NDC frame: -z points at the camera
        light = torch.nn.functional.normalize(light, dim=1)
        lam = (n * light[:, None, None, :]).sum(-1).clamp(min=0)  # (B, S, S)
        amb = _uniform(B, *c.ambient, g, dev)[:, None, None]
        dif = _uniform(B, *c.diffuse, g, dev)[:, None, None]
        shade = (amb + dif * lam)[:, None]  # (B, 1, S, S)
        tone = torch.stack([_uniform(B, 0.55, 0.95, g, dev), _uniform(B, 0.4, 0.75, g, dev),
                            _uniform(B, 0.3, 0.65, g, dev)], 1)  # RGB skin-like albedo
        face = tone[:, :, None, None] * shade
        bg = self.backgrounds(B, g) if background is None else background.to(dev)
        mask = ro.mask
        img = mask * face + (1 - mask) * bg
        img = img + c.pixel_noise * torch.randn(img.shape, generator=g, device=dev)
        img = img.clamp(0, 1)
        l105 = project_ndc(geo["landmarks105"], cam)[..., :2]
        l68 = project_ndc(geo["landmarks68"], cam)[..., :2]
        return {"image": img, "mask": mask, "landmarks105": l105, "landmarks68": l68,
                "landmarks478": self.landmarks478(ndc), "vertices": geo["vertices"], "ndc_vertices": ndc}

    def batch(self, n: int, generator: torch.Generator | None = None, one_sided: bool | None = None) -> dict:
        """Parameters + render of ``n`` random faces in one dict (``params`` under their own keys)."""
        params = self.sample_params(n, generator, one_sided)
        out = self.render(params, generator)
        out.update({f"gt_{k}": v for k, v in params.items()})
        return out


class SyntheticDataset:
    """A map dataset of ``n`` synthetic faces in the item layout of :mod:`.data` (rendered on the CPU).

    Face ``i`` has fixed parameters (seeded by ``seed`` and ``i``); keys ``(i, seed_tuple)`` from
    :class:`~smirk_edge.training.data.MixtureSampler` re-draw the scene (light, background) and
    camera, like an augmentation. ``with_params=True`` adds ``gt_*`` parameters to each item.
    """

    def __init__(self, n: int, size: int = 224, views: int = 1, face_model_path: str | None = None,
                 source: int = 0, seed: int = 0, with_params: bool = False,
                 config: SyntheticConfig = SyntheticConfig()):
        if n < 1:
            raise InputError(f"a synthetic source needs n >= 1, got {n}")
        self.n, self.size, self.views = int(n), int(size), int(views)
        self.face_model_path = face_model_path
        self.source, self.seed, self.with_params = source, int(seed), with_params
        self.config = config
        self._faces: SyntheticFaces | None = None

    def __len__(self) -> int:
        return self.n

    @property
    def faces(self) -> SyntheticFaces:
        if self._faces is None:  # built lazily: one per loader worker
            self._faces = SyntheticFaces(self.face_model_path, self.size, "cpu", self.config)
        return self._faces

    def __getitem__(self, key) -> dict:
        if isinstance(key, (tuple, list)):
            i, seed = int(key[0]), [int(s) for s in key[1]]
        else:
            i, seed = int(key), None
        if not 0 <= i < self.n:
            raise IndexError(f"synthetic face {i} out of range 0..{self.n - 1}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        params = self.faces.sample_params(1, g)
        scene = torch.Generator().manual_seed(
            int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed else self.seed * 7 + i)
        views = []
        for _ in range(self.views):
            p = dict(params)
            if seed:  # re-draw the camera like a crop augmentation
                fresh = self.faces.sample_params(1, scene)
                p["cam"] = fresh["cam"]
            views.append(self.faces.render(p, scene))
        out = {k: torch.cat([v[k] for v in views]) for k in ("image", "landmarks478", "landmarks105", "landmarks68")}
        out["valid"] = torch.ones(self.views)
        out["real68"] = torch.zeros(self.views, 68)  # renders have no human-annotated points
        out["source"] = torch.tensor(self.source, dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["emotion"] = torch.full((self.views,), -1, dtype=torch.int64)  # renders have no emotion label
        if self.with_params:
            out.update({f"gt_{k}": v[0] for k, v in params.items()})
        return out
