"""The frame pipeline on a torch device: :class:`TorchStages`, the stages of
:mod:`smirk_edge.pipeline` with crop, encode, decode and project running in torch.

What runs where, per frame (``Reconstructor(backend="torch", device="cuda")``):

1. *detect*: the bundle's BlazeFace ONNX files, on one 128 px resize of the frame made on the host;
   on CUDA run by torch on the GPU (:class:`~smirk_edge.runtimes.onnx_torch.OnnxTorchRunner`, the
   same weights, one CUDA graph per input shape: the input and outputs are ~0.2 MB), on the CPU by
   the CPU engine (ONNX Runtime / OpenVINO, faster there than torch). The tracker's region checks
   use the same runners.
2. *crop*: only the part of the frame the crops read is uploaded (the bounding rectangle of the
   crops' source squares, clipped to the frame: a few hundred KB for one face in 720p instead of
   2.7 MB), through a pinned staging buffer with an asynchronous copy; the crops are cut on the
   device with ``affine_grid`` / ``grid_sample`` from the SDK's own crop matrices (bilinear, zero
   borders, rounded to integers as OpenCV's ``warpAffine`` of uint8 frames is).
3. *encode*: :meth:`TorchRunner.infer_tensors` (fp16/bf16 module cast, channels-last, one CUDA
   graph per batch size on CUDA).
4. *decode* and *project*: the face model (:class:`~smirk_edge.runtimes.torch_face_model.FaceModelLayer`)
   and the model-to-image affines in torch, captured as one CUDA graph per batch size on CUDA;
   the landmarks (image and model frame) come back in one packed copy. The vertices (model frame
   and image, ``2 x V x 3`` floats a face: 95 % of the bytes) come back only when a face's
   ``vertices`` / ``vertices_image`` is first read: the graph is replayed then from the frame's
   parameters, kept on the host, so no device memory is held for results that are never read.

The parameters come back to the host between *encode* and *decode* (a few hundred floats per
face), since video smoothing and the refine pass work on them there. Results equal the numpy
stages' within float rounding at fp32 (tests hold landmarks to 0.05 px on real photos).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..crop import CropTransform
from ..pipeline import CropPolicy, Crops, FrameView, Rolls, Stages, StageTimer, crop_transforms, image_affines
from .torch_face_model import FaceModelLayer
from .torch_runner import TorchRunner

__all__ = ["TorchStages", "DeviceFrame", "FrameUpload", "crop_thetas", "source_region"]


def _inverse_matrices(matrices: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``(B, 3, 3)`` crop -> image matrices: the inverses of ``(B, 2, 3)`` image -> crop ``matrices``."""
    m = np.asarray(matrices, np.float64).reshape(-1, 2, 3)
    m3 = np.concatenate([m, np.broadcast_to(np.array([0.0, 0.0, 1.0]), (len(m), 1, 3))], axis=1)
    return np.linalg.inv(m3)


def source_region(matrices: Sequence[np.ndarray] | np.ndarray, size: int, height: int, width: int
                  ) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the pixels of an ``height x width`` frame that crops of side ``size``
    through the image -> crop ``matrices`` ``(B, 2, 3)`` read (their source squares' bounding rectangle, one
    pixel of margin for the bilinear taps, clipped to the frame; empty when every crop is outside)."""
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    p = (_inverse_matrices(matrices) @ corners.T)[:, :2]  # (B, 2, 4): x and y of the corners
    x0 = int(np.clip(np.floor(p[:, 0].min()) - 1, 0, width))
    y0 = int(np.clip(np.floor(p[:, 1].min()) - 1, 0, height))
    x1 = int(np.clip(np.ceil(p[:, 0].max()) + 2, x0, width))
    y1 = int(np.clip(np.ceil(p[:, 1].max()) + 2, y0, height))
    return x0, y0, x1, y1


def crop_thetas(matrices: Sequence[np.ndarray] | np.ndarray, size: int, region: tuple[int, int, int, int]
                ) -> np.ndarray:
    """``(B, 2, 3)`` float32 ``affine_grid`` matrices (``align_corners=False``) that cut, from the
    uploaded ``region`` of the frame, the crop each image -> crop matrix describes.

    Output pixel ``u`` (normalised ``(2u + 1) / S - 1``) reads region pixel ``M^-1 u - offset``
    (normalised ``(2x + 1) / w - 1``): pixel centres at integers, as OpenCV's ``warpAffine``.
    """
    x0, y0, x1, y1 = region
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    out_to_px = np.array([[size / 2.0, 0.0, (size - 1) / 2.0], [0.0, size / 2.0, (size - 1) / 2.0], [0, 0, 1]])
    px_to_norm = np.array([[2.0 / w, 0.0, 1.0 / w - 1.0 - 2.0 * x0 / w],
                           [0.0, 2.0 / h, 1.0 / h - 1.0 - 2.0 * y0 / h], [0, 0, 1]])
    return (px_to_norm @ _inverse_matrices(matrices) @ out_to_px)[:, :2].astype(np.float32)


class FrameUpload:
    """Host -> device copies of frame regions through one reused pinned buffer (CUDA), or views (CPU).

    The pinned buffer is rewritten by the next upload: callers synchronise with the device
    (the stages do, when results come back) before the next frame.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._pinned: torch.Tensor | None = None

    def __call__(self, image: np.ndarray, region: tuple[int, int, int, int]) -> torch.Tensor:
        """``(1, 3, h, w)`` float32 BGR on the device: the region of a ``(H, W, 3)`` uint8 frame."""
        return self.many([image], [region])[0]

    def many(self, images: Sequence[np.ndarray], regions: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
        """:meth:`__call__` of several frames with one host -> device copy: the regions are packed one
        after the other into the pinned buffer (each frame's own, so no upload overwrites another's
        bytes before the copy has run), then converted to float32 at once."""
        parts = []
        for image, (x0, y0, x1, y1) in zip(images, regions):
            part = image[y0:y1, x0:x1]
            parts.append(part if part.size else np.zeros((1, 1, 3), np.uint8))
        if not self.cuda:
            return [torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1)[None].float() for p in parts]
        ends = np.cumsum([p.size for p in parts])
        n = int(ends[-1])
        if self._pinned is None or self._pinned.numel() < n:
            self._pinned = torch.empty(max(n, 1 << 20), dtype=torch.uint8, pin_memory=True)
        staging = self._pinned[:n].numpy()
        for p, end in zip(parts, ends):
            np.copyto(staging[end - p.size:end].reshape(p.shape), p)
        dev = self._pinned[:n].to(self.device, non_blocking=True).float()
        return [dev[end - p.size:end].view(p.shape).permute(2, 0, 1)[None] for p, end in zip(parts, ends)]


def _levels(crops: torch.Tensor) -> torch.Tensor:
    """Sampled BGR crops -> RGB in [0, 1] at integer levels, as uint8 crops are."""
    return torch.round(crops).flip(1).mul_(1.0 / 255.0)


class _Graphed:
    """A function of fixed-shape tensors, captured as one CUDA graph per input signature (CUDA) or
    called as is (CPU). Outputs of a replay are the graph's static buffers."""

    def __init__(self, fn: Any, cuda: bool):
        self.fn, self.cuda = fn, cuda
        self._graphs: dict[tuple, tuple[Any, list[torch.Tensor], Any]] = {}

    def __call__(self, *args: torch.Tensor) -> Any:
        if not self.cuda:
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            static = [a.clone() for a in args]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.fn(*static)
            entry = self._graphs[key] = (graph, static, out)
        graph, static, out = entry
        for s, a in zip(static, args):
            s.copy_(a, non_blocking=True)
        graph.replay()
        return out


@dataclass
class TorchStages(Stages):
    """:class:`~smirk_edge.pipeline.Stages` whose crop, encode, decode and project run in torch on
    the encoder runner's device. ``Crops.batch`` is a device tensor here; parameters and results
    are numpy, as in the numpy stages."""

    layer: Any = None
    _upload: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        runner = self.encoder
        if not isinstance(runner, TorchRunner):
            raise TypeError(f"TorchStages needs a TorchRunner encoder, got {type(runner).__name__}")
        if not runner.is_active:
            runner.activate()
        self.device = torch.device(runner.device)
        self.cuda = self.device.type == "cuda"
        if self.layer is None:
            self.layer = FaceModelLayer.from_arrays(self.face_model.arrays, self.face_model.model_id)
        self.layer = self.layer.to(self.device).eval()
        self._upload = FrameUpload(self.device)
        self._decode = _Graphed(self._decode_project, self.cuda)
        self._host: torch.Tensor | None = None
        self._names = list(self.widths)
        self._decode_lock = threading.Lock()
        self.decode_runs = [0, 0]  # replays of the decode graph for landmarks, for vertices

    # ------------------------------------------------------------------ crop and encode
    def crop_frame(self, image: np.ndarray, boxes: np.ndarray, rolls: Rolls, timer: StageTimer,
                   policy: CropPolicy | None = None) -> Crops:
        """Stage *crop* on the device: the transforms (numpy, as the numpy stages) and the batch."""
        return self.crop_frames([image], np.zeros(len(boxes), np.int64), boxes, rolls, timer, policy)

    def crop_frames(self, images: Sequence[np.ndarray], owner: np.ndarray, boxes: np.ndarray, rolls: Rolls,
                    timer: StageTimer, policy: CropPolicy | None = None) -> Crops:
        """Stage *crop* of the faces of several frames (``owner``: each face's frame, sorted) as one
        device batch: one upload of every frame's region, one ``affine_grid``, one ``grid_sample`` per frame."""
        policy = policy or self.policy
        with timer("crop"):
            transforms = crop_transforms(boxes, rolls, policy)
            return Crops(transforms, self._cut(images, np.asarray(owner), transforms, policy.size))

    def _cut(self, images: Sequence[np.ndarray], owner: np.ndarray, transforms: Sequence[CropTransform],
             size: int) -> torch.Tensor:
        B = len(transforms)
        if not B:
            return torch.zeros((0, 3, size, size), device=self.device)
        matrices = np.stack([t.matrix for t in transforms])
        frames, starts, counts = np.unique(owner, return_index=True, return_counts=True)
        regions = [source_region(matrices[a:a + n], size, images[i].shape[0], images[i].shape[1])
                   for i, a, n in zip(frames, starts, counts)]
        sources = self._upload.many([images[i] for i in frames], regions)
        thetas = torch.from_numpy(np.concatenate([crop_thetas(matrices[a:a + n], size, r)
                                                  for a, n, r in zip(starts, counts, regions)]))
        sample = lambda src, grid, n: F.grid_sample(src.expand(n, -1, -1, -1) if n > 1 else src, grid,  # noqa: E731
                                                    mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.cuda:  # launch-bound: one grid, one sample per frame, one rounding of the whole batch
            grid = F.affine_grid(thetas.to(self.device, non_blocking=True), [B, 3, size, size], align_corners=False)
            outs = [sample(src, grid[a:a + n], n) for src, a, n in zip(sources, starts, counts)]
            return _levels(outs[0] if len(outs) == 1 else torch.cat(outs))
        # CPU: frame by frame (each frame's crops stay in cache; the same values as one batch)
        outs = [_levels(sample(src, F.affine_grid(thetas[a:a + n], [int(n), 3, size, size], align_corners=False), n))
                for src, a, n in zip(sources, starts, counts)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def encode_batch(self, batch: torch.Tensor, timer: StageTimer) -> dict[str, np.ndarray]:
        """Stage *encode* of a device batch -> parameter arrays on the host (one copy)."""
        with timer("encode"):
            if batch.shape[0] == 0:
                return {k: np.zeros((0, w), np.float32) for k, w in self.widths.items()}
            out = self.encoder.infer_tensors({self.input_name: batch})
            packed = torch.cat([out[k].reshape(batch.shape[0], -1) for k in self._names], dim=1)
            host = packed.cpu().numpy()
            if not np.all(np.isfinite(host)):
                from ..errors import SmirkEdgeError

                raise SmirkEdgeError(f"the encoder produced NaN/inf ({self.encoder.name}); "
                                     "run 'smirk-edge selftest' on this bundle")
            params, at = {}, 0
            for k in self._names:
                w = self.widths[k]
                params[k] = host[:, at:at + w].copy()
                at += w
            return params

    def merge_crops(self, crops: Crops, idx: np.ndarray, again: Crops) -> Crops:
        transforms = list(crops.transforms)
        for j, i in enumerate(idx):
            transforms[i] = again.transforms[j]
        batch = crops.batch.clone()
        batch[torch.as_tensor(idx, device=batch.device)] = again.batch
        return Crops(transforms, batch)

    def join_crops(self, parts: Sequence[Crops]) -> Crops:
        transforms = [t for p in parts for t in p.transforms]
        batches = [p.batch for p in parts if len(p)]
        batch = torch.cat(batches) if batches else torch.zeros((0, 3, self.policy.size, self.policy.size),
                                                                device=self.device)
        return Crops(transforms, batch)

    # ------------------------------------------------------------------ decode and project
    def _decode_project(self, params: torch.Tensor, affines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed parameters ``(B, P)`` and affines ``(B, 2, 3)`` -> ``(landmarks, vertices)``:
        ``(B, L)`` image 68 and 105 points, model-frame 68 and 105 points; ``(B, 6V)`` model-frame
        vertices and image vertices (x, y, depth)."""
        p, at = {}, 0
        for k in self._names:
            p[k] = params[:, at:at + self.widths[k]]
            at += self.widths[k]
        g = self.layer(p["shape"], p["expression"], p["pose"], p["jaw"], p["eyelid"])
        lin, off = affines[:, :, :2], affines[:, None, :, 2]
        k = torch.sqrt(torch.abs(torch.linalg.det(lin)))[:, None, None]

        def to_image(x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bnk,bjk->bnj", x[..., :2], lin) + off

        v = g["vertices"]
        vi = torch.cat([to_image(v), -k * v[..., 2:3]], dim=-1)
        B = params.shape[0]
        marks = [to_image(g["landmarks68"]), to_image(g["landmarks105"]), g["landmarks68"], g["landmarks105"]]
        return (torch.cat([t.reshape(B, -1) for t in marks], dim=1),
                torch.cat([v.reshape(B, -1), vi.reshape(B, -1)], dim=1))

    def run_decode(self, packed: np.ndarray, affines: np.ndarray, part: int) -> np.ndarray:
        """One replay of the decode graph on host ``packed`` parameters ``(B, P)`` and ``affines``
        ``(B, 2, 3)``; ``part`` 0 brings the landmarks back, 1 the vertices (one copy). Serialised:
        the graph's buffers and the pinned download buffer are shared, and faces read their
        vertices from any thread."""
        with self._decode_lock:
            out = self._decode(torch.from_numpy(np.ascontiguousarray(packed, np.float32)).to(self.device, non_blocking=True),
                               torch.from_numpy(np.asarray(affines, np.float32)).to(self.device, non_blocking=True))
            self.decode_runs[part] += 1
            return self._download(out[part])  # copied out before the next replay can overwrite the graph's buffer

    def decode_project(self, params: Mapping[str, np.ndarray], crops: Crops, timer: StageTimer,
                       affines: np.ndarray | None = None, geometry: Any = None) -> tuple[FrameView, FrameView]:
        """Stages *decode* and *project* on the device: the landmarks come back now, the vertices
        when first read (:class:`DeviceFrame`; ``geometry`` is recomputed there: the device does it
        faster than the host copies it)."""
        B = len(crops)
        with timer("project"):
            if affines is None:
                affines = image_affines(params["cam"], [t.matrix for t in crops.transforms], self.policy.size)
        with timer("decode"):
            packed = np.concatenate([np.asarray(params[k], np.float32).reshape(B, -1) for k in self._names], 1)
            frame = DeviceFrame(self, packed, np.asarray(affines, np.float64), self.run_decode(packed, affines, 0))
        return frame.model_frame, frame.image_frame

    def _download(self, out: torch.Tensor) -> np.ndarray:
        """One device -> host copy of a packed result (through a reused pinned buffer on CUDA)."""
        if not self.cuda:
            return out.numpy()  # a fresh tensor of this call (no graph buffer on the CPU)
        n = out.numel()
        if self._host is None or self._host.numel() < n:
            self._host = torch.empty(max(n, 1 << 16), dtype=torch.float32, pin_memory=True)
        dst = self._host[:n].view(out.shape)
        dst.copy_(out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return dst.numpy().copy()



class _DeviceView(FrameView):
    """:class:`~smirk_edge.pipeline.FrameView` of a :class:`DeviceFrame`."""

    def part(self, name: str) -> np.ndarray:
        return self.frame.part(name, self.image)


class DeviceFrame:
    """One batch's decode and projection by :class:`TorchStages`: the landmarks (image and model
    frame) on the host, the vertices brought back on their first read, by one more replay of the
    decode graph from the batch's parameters (kept here, on the host). :attr:`model_frame` and
    :attr:`image_frame` read like those of :class:`~smirk_edge.pipeline.FrameGeometry`. Thread-safe."""

    def __init__(self, stages: TorchStages, packed: np.ndarray, affines: np.ndarray, landmarks: np.ndarray):
        self.stages, self.packed, self.affines = stages, np.array(packed, np.float32, copy=True), affines
        B = len(packed)
        cuts = np.cumsum([0, 68 * 2, 105 * 2, 68 * 3, 105 * 3])
        l68, l105, m68, m105 = (landmarks[:, a:b] for a, b in zip(cuts[:-1], cuts[1:]))
        self._parts = {(True, "landmarks68"): l68.reshape(B, 68, 2), (True, "landmarks105"): l105.reshape(B, 105, 2),
                       (False, "landmarks68"): m68.reshape(B, 68, 3), (False, "landmarks105"): m105.reshape(B, 105, 3)}
        self._lock = threading.Lock()
        self.model_frame = _DeviceView(self, image=False)  # type: ignore[arg-type]
        self.image_frame = _DeviceView(self, image=True)  # type: ignore[arg-type]

    @property
    def decoded(self) -> bool:
        """True once the vertices are on the host."""
        return (False, "vertices") in self._parts

    def part(self, name: str, image: bool) -> np.ndarray:
        """``vertices`` ``(B, V, 3)``, ``landmarks68`` or ``landmarks105`` in the model frame
        (metres) or the image (pixels; vertices with depth)."""
        with self._lock:
            if (image, name) not in self._parts:
                if name != "vertices":
                    raise KeyError(name)
                host = self.stages.run_decode(self.packed, self.affines, 1)
                B, V = len(self.packed), self.stages.face_model.n_vertices
                self._parts[(False, "vertices")] = host[:, :V * 3].reshape(B, V, 3)
                self._parts[(True, "vertices")] = host[:, V * 3:].reshape(B, V, 3)
            return self._parts[(image, name)]
