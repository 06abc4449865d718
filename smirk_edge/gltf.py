"""glTF 2.0 (binary ``.glb``) files of reconstructed faces, for Blender, Unity, Unreal and viewers.

Two kinds of file, both written with pygltflib (``pip install`` the ``gltf`` extra; ``import
smirk_edge`` does not need it):

- :func:`write_face_glb`: one face, one triangle mesh (positions, normals, a skin-coloured
  material). ``space="model"``: the face-model frame in metres, which is glTF's own convention
  (right-handed, +Y up, +Z toward the viewer). ``space="image"``: the image frame, x right and y
  down in the picture, with an orthographic camera that sees the mesh exactly where the face is in
  the image; one image pixel is ``pixel_size`` metres in the file (default 1 mm).
- :func:`write_track_glb` / :class:`TrackRecorder`: one animated face per video track. The mesh is
  the track's identity (its mean shape coefficients) at rest; morph targets carry the 50
  expression components, the jaw (opening sampled at several angles and blended piecewise
  linearly, sideways and forward rotation as linear targets) and the two eyelids; the head pose is
  the rotation of a parent node about the face model's root joint. Keyframes are at the frames'
  times in seconds (``frame index / fps`` in ``smirk-edge reconstruct``), linear interpolation.
  Morph-target names are in ``mesh.extras.targetNames``, which Blender reads as shape-key names.

The animation reproduces the decoder up to what a linear morph cannot express: expression offsets
are not turned with the jaw, jaw opening is exact only at the sampled angles, and per-frame jitter
of the identity coefficients is dropped. :func:`evaluate_track_glb` evaluates a written file at a
keyframe (for tests and tools).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ._version import __version__
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .face_model import FaceModel
    from .results import Face

# jaw opening (radians) at which exact jaw targets are sampled; weights blend neighbours linearly
JAW_OPEN_SAMPLES = (0.1, 0.2, 0.35, 0.5, 0.7)
# sideways (jaw[1]) and forward/twist (jaw[2]) targets at the encoder's clamp, one per direction
JAW_SIDE_AMPLITUDE = 0.2
SKIN_COLOUR = [0.80, 0.62, 0.52, 1.0]
GENERATOR = f"smirk-edge {__version__}"


def _gltf():
    from ._lazy import require

    return require("pygltflib")


# ------------------------------------------------------------------------------------- geometry


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals ``(V, 3)``; a vertex on no proper triangle gets +Z."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    n = np.zeros_like(v)
    tri = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for k in range(3):
        np.add.at(n, f[:, k], tri)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 1e-12, n / np.maximum(length, 1e-300), np.array([0.0, 0.0, 1.0]))
    return n.astype(np.float32)


def _check_mesh(vertices: np.ndarray, faces: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, np.float32)
    if faces is None:
        raise InputError("this Face has no triangles (Face.faces is None): cannot write a mesh file")
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"mesh needs vertices (V, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise InputError(f"mesh triangles index vertices outside 0..{len(v) - 1}")
    if not np.all(np.isfinite(v)):
        raise InputError("mesh vertices hold NaN or inf")
    return v, f


class _Builder:
    """Collects binary chunks and accessors for one glTF document (one buffer, 4-byte aligned views)."""

    def __init__(self):
        g = _gltf()
        self.g = g
        self.doc = g.GLTF2(asset=g.Asset(version="2.0", generator=GENERATOR))
        self.blob = bytearray()

    def accessor(self, data: np.ndarray, kind: str, target: int | None = None, minmax: bool = False) -> int:
        g = self.g
        data = np.ascontiguousarray(data)
        if data.dtype == np.float32:
            ctype = g.FLOAT
        elif data.dtype == np.uint16:
            ctype = g.UNSIGNED_SHORT
        elif data.dtype == np.uint32:
            ctype = g.UNSIGNED_INT
        else:  # pragma: no cover - internal use only
            raise TypeError(data.dtype)
        while len(self.blob) % 4:
            self.blob.append(0)
        offset = len(self.blob)
        raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        self.blob.extend(raw)
        self.doc.bufferViews.append(g.BufferView(buffer=0, byteOffset=offset, byteLength=len(raw), target=target))
        count = data.shape[0]
        acc = g.Accessor(bufferView=len(self.doc.bufferViews) - 1, componentType=ctype, count=int(count), type=kind)
        if minmax:
            flat = data.reshape(count, -1)
            acc.min = [float(x) if ctype == g.FLOAT else int(x) for x in flat.min(axis=0)]
            acc.max = [float(x) if ctype == g.FLOAT else int(x) for x in flat.max(axis=0)]
        self.doc.accessors.append(acc)
        return len(self.doc.accessors) - 1

    def primitive(self, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None):
        g = self.g
        pos = self.accessor(vertices.astype(np.float32), g.VEC3, g.ARRAY_BUFFER, minmax=True)
        nrm = self.accessor((vertex_normals(vertices, faces) if normals is None else normals).astype(np.float32),
                            g.VEC3, g.ARRAY_BUFFER)
        index_dtype = np.uint16 if len(vertices) < 65535 else np.uint32
        idx = self.accessor(faces.reshape(-1).astype(index_dtype), g.SCALAR, g.ELEMENT_ARRAY_BUFFER, minmax=True)
        if not self.doc.materials:
            self.doc.materials.append(g.Material(
                name="skin", doubleSided=True,
                pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorFactor=SKIN_COLOUR, metallicFactor=0.0,
                                                            roughnessFactor=0.7)))
        return g.Primitive(attributes=g.Attributes(POSITION=pos, NORMAL=nrm), indices=idx, material=0, mode=g.TRIANGLES)

    def save(self, path: str | os.PathLike) -> Path:
        g = self.g
        while len(self.blob) % 4:
            self.blob.append(0)
        self.doc.buffers = [g.Buffer(byteLength=len(self.blob))]
        self.doc.set_binary_blob(bytes(self.blob))
        path = Path(path)
        if path.suffix.lower() != ".glb":
            raise InputError(f"glTF files are written as binary .glb, got {path.name}")
        tmp = path.with_name(path.name + ".tmp")
        self.doc.save_binary(str(tmp))
        os.replace(tmp, path)
        return path


# ------------------------------------------------------------------------------------- one face


def _image_frame(face: "Face", pixel_size: float) -> np.ndarray:
    """Image-frame vertices as glTF coordinates: x right, y up (= -row), z toward the camera."""
    vi = np.asarray(face.vertices_image, np.float64)
    return (np.stack([vi[:, 0], -vi[:, 1], -vi[:, 2]], axis=1) * pixel_size).astype(np.float32)


def write_face_glb(path: str | os.PathLike, face: "Face", space: str = "model",
                   image_size: tuple[int, int] | None = None, pixel_size: float = 1e-3) -> Path:
    """Write one face as a binary glTF 2.0 file.

    Args:
        path: ``*.glb``.
        face: a :class:`~smirk_edge.results.Face`.
        space: ``"model"`` (metres, face-model frame, head pose applied) or ``"image"`` (image
            frame, with an orthographic camera that reproduces the photo's view).
        image_size: ``(width, height)`` of the photo in pixels: with ``space="image"`` the camera
            then frames the whole photo (otherwise the mesh with a 10 % margin).
        pixel_size: metres per image pixel in the file, for ``space="image"``.
    """
    if space not in ("model", "image"):
        raise ValueError(f"space must be 'model' or 'image', got {space!r}")
    if not pixel_size > 0:
        raise ValueError("pixel_size must be > 0")
    verts = face.vertices if space == "model" else _image_frame(face, pixel_size)
    v, f = _check_mesh(verts, face.faces)
    b = _Builder()
    g = b.g
    b.doc.meshes.append(g.Mesh(name="face", primitives=[b.primitive(v, f)]))
    info = {"space": space, "units": "metres" if space == "model" else f"{pixel_size} m per image pixel",
            "track_id": int(face.track_id), "score": float(face.score), "engine": face.engine,
            "head_pose_deg": [float(x) for x in face.head_pose], "params": face.params.to_dict()}
    b.doc.nodes.append(g.Node(name="face", mesh=0, extras={"smirk_edge": info}))
    roots = [0]
    if space == "image":
        if image_size is not None:
            w, h = (float(x) for x in image_size)
            if not (w > 0 and h > 0):
                raise ValueError(f"image_size must be positive (width, height), got {image_size}")
            x0, x1, y0, y1 = 0.0, w * pixel_size, -h * pixel_size, 0.0
        else:
            lo, hi = v.min(axis=0), v.max(axis=0)
            pad = 0.1 * float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6))
            x0, x1, y0, y1 = lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad
        zmin, zmax = float(v[:, 2].min()), float(v[:, 2].max())
        depth = max(zmax - zmin, 1e-3)
        cam_z = zmax + depth
        b.doc.cameras.append(g.Camera(name="image", type="orthographic", orthographic=g.Orthographic(
            xmag=float(x1 - x0) / 2, ymag=float(y1 - y0) / 2, znear=float(depth) * 0.5, zfar=float(3 * depth))))
        b.doc.nodes.append(g.Node(name="image_camera", camera=0,
                                  translation=[float(x0 + x1) / 2, float(y0 + y1) / 2, float(cam_z)]))
        roots.append(1)
    b.doc.scenes.append(g.Scene(name="smirk-edge face", nodes=roots))
    b.doc.scene = 0
    return b.save(path)


# ------------------------------------------------------------------------------------- animation


def jaw_open_weights(opening: np.ndarray, samples: Sequence[float] = JAW_OPEN_SAMPLES) -> np.ndarray:
    """Morph weights ``(N, len(samples))`` of the jaw-opening targets for openings ``(N,)`` radians.

    Between two sampled angles the two neighbouring targets are blended linearly (weights sum to
    1); below the first the first target is scaled from 0; beyond the last the last is scaled.
    Every weight is >= 0.
    """
    a = np.maximum(np.asarray(opening, np.float64).reshape(-1), 0.0)
    s = np.asarray(samples, np.float64)
    w = np.zeros((len(a), len(s)), np.float64)
    for i, x in enumerate(a):
        if x <= s[0]:
            w[i, 0] = x / s[0]
        elif x >= s[-1]:
            w[i, -1] = x / s[-1]
        else:
            k = int(np.searchsorted(s, x)) - 1
            t = (x - s[k]) / (s[k + 1] - s[k])
            w[i, k], w[i, k + 1] = 1.0 - t, t
    return w.astype(np.float32)


def morph_target_names(n_expression: int = 50) -> list[str]:
    """Names of the morph targets, in file order."""
    return ([f"expression_{k:02d}" for k in range(n_expression)]
            + [f"jaw_open_{a:.2f}rad" for a in JAW_OPEN_SAMPLES]
            + ["jaw_side_pos", "jaw_side_neg", "jaw_twist_pos", "jaw_twist_neg", "eyelid_left", "eyelid_right"])


def morph_weights(expression: np.ndarray, jaw: np.ndarray, eyelid: np.ndarray) -> np.ndarray:
    """Morph weights ``(N, T)`` for per-frame ``expression (N, 50)``, ``jaw (N, 3)``, ``eyelid (N, 2)``."""
    e = np.asarray(expression, np.float32).reshape(len(expression), -1)
    j = np.asarray(jaw, np.float32).reshape(-1, 3)
    lid = np.asarray(eyelid, np.float32).reshape(-1, 2)
    side = np.stack([np.maximum(j[:, 1], 0), np.maximum(-j[:, 1], 0),
                     np.maximum(j[:, 2], 0), np.maximum(-j[:, 2], 0)], axis=1) / JAW_SIDE_AMPLITUDE
    return np.concatenate([e, jaw_open_weights(j[:, 0]), side, lid], axis=1).astype(np.float32)


def _targets(face_model: "FaceModel", shape: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rest mesh (V, 3), morph deltas (T, V, 3), root joint (3,)) for identity ``shape``."""
    fm = face_model
    base = fm.decode(shape=shape).vertices[0]
    joint0 = (fm.J_regressor[0] @ (fm.v_template + fm.arrays["shapedirs"] @ np.asarray(shape, np.float32)))
    deltas = [np.moveaxis(fm.arrays["exprdirs"], 2, 0)]
    jaw = np.zeros((len(JAW_OPEN_SAMPLES) + 4, 3), np.float32)
    jaw[:len(JAW_OPEN_SAMPLES), 0] = JAW_OPEN_SAMPLES
    k = len(JAW_OPEN_SAMPLES)
    jaw[k:k + 4] = [[0, JAW_SIDE_AMPLITUDE, 0], [0, -JAW_SIDE_AMPLITUDE, 0],
                    [0, 0, JAW_SIDE_AMPLITUDE], [0, 0, -JAW_SIDE_AMPLITUDE]]
    posed = fm.decode(shape=np.repeat(np.asarray(shape, np.float32)[None], len(jaw), 0), jaw=jaw).vertices
    deltas.append(posed - base[None])
    deltas.append(np.stack([fm.l_eyelid, fm.r_eyelid]))
    return base.astype(np.float32), np.concatenate(deltas).astype(np.float32), joint0.astype(np.float32)


def _rotation_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix, w >= 0."""
    m = np.asarray(R, np.float64)
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2
    y = np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2
    z = np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2
    x = np.copysign(x, m[2, 1] - m[1, 2])
    y = np.copysign(y, m[0, 2] - m[2, 0])
    z = np.copysign(z, m[1, 0] - m[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def head_rotation(face: "Face") -> np.ndarray:
    """Rotation matrix ``(3, 3)`` of the head in the image's orientation (pose composed with the
    crop's roll, :func:`smirk_edge.rotation.head_rotation_matrix`; an upside-down crop included)."""
    from .rotation import crop_roll_degrees, head_rotation_matrix

    roll = crop_roll_degrees(face.crop_matrix) if face.crop_matrix is not None else 0.0
    return head_rotation_matrix(face.params.pose, roll)


def write_track_glb(path: str | os.PathLike, face_model: "FaceModel", times: Sequence[float],
                    faces: Sequence["Face"], name: str = "face") -> Path:
    """Write one animated face: ``faces[i]`` at ``times[i]`` seconds (strictly increasing).

    The faces are one person over time (one track of :meth:`Reconstructor.stream`), decoded with
    ``face_model`` (``Reconstructor.face_model``).
    """
    times = np.asarray(times, np.float64).reshape(-1)
    if len(times) == 0 or len(times) != len(faces):
        raise InputError(f"an animation needs one time per face and at least one face, got {len(times)} "
                         f"times and {len(faces)} faces")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise InputError("keyframe times must be finite and strictly increasing")
    shape = np.mean([f.params.shape for f in faces], axis=0).astype(np.float32)
    base, deltas, joint0 = _targets(face_model, shape)
    v, f = _check_mesh(base, face_model.faces)
    n0 = vertex_normals(v, f)
    b = _Builder()
    g = b.g
    prim = b.primitive(v, f, n0)
    names = morph_target_names(deltas.shape[0] - len(JAW_OPEN_SAMPLES) - 6)
    for d in deltas:
        pos = b.accessor(d, g.VEC3, g.ARRAY_BUFFER, minmax=True)
        nrm = b.accessor(vertex_normals(v + d, f) - n0, g.VEC3, g.ARRAY_BUFFER)
        prim.targets.append(g.Attributes(POSITION=pos, NORMAL=nrm))
    b.doc.meshes.append(g.Mesh(name=name, primitives=[prim], weights=[0.0] * len(deltas),
                               extras={"targetNames": names}))
    b.doc.nodes.append(g.Node(name=f"{name}_head", translation=[float(x) for x in joint0], children=[1],
                              extras={"smirk_edge": {"rotation": "head pose about the root joint"}}))
    b.doc.nodes.append(g.Node(name=name, mesh=0, translation=[float(-x) for x in joint0]))
    b.doc.scenes.append(g.Scene(name="smirk-edge track", nodes=[0]))
    b.doc.scene = 0

    weights = morph_weights(np.stack([x.params.expression for x in faces]), np.stack([x.params.jaw for x in faces]),
                            np.stack([x.params.eyelid for x in faces]))
    quats = np.stack([_rotation_quaternion(head_rotation(x)) for x in faces])
    for i in range(1, len(quats)):  # shortest path between neighbouring keys
        if np.dot(quats[i], quats[i - 1]) < 0:
            quats[i] = -quats[i]
    t32 = times.astype(np.float32)
    if np.any(np.diff(t32) <= 0):
        raise InputError("keyframe times are too close together for float32 seconds")
    t_acc = b.accessor(t32, g.SCALAR, minmax=True)
    r_acc = b.accessor(quats.astype(np.float32), g.VEC4)
    w_acc = b.accessor(weights.reshape(-1), g.SCALAR)
    b.doc.animations.append(g.Animation(
        name=f"{name}_animation",
        samplers=[g.AnimationSampler(input=t_acc, output=r_acc, interpolation="LINEAR"),
                  g.AnimationSampler(input=t_acc, output=w_acc, interpolation="LINEAR")],
        channels=[g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="rotation")),
                  g.AnimationChannel(sampler=1, target=g.AnimationChannelTarget(node=1, path="weights"))]))
    b.doc.asset.extras = {"smirk_edge": {"keyframes": int(len(times)), "start_s": float(times[0]),
                                         "end_s": float(times[-1]), "face_model": face_model.model_id,
                                         "track_id": int(faces[0].track_id)}}
    return b.save(path)


class TrackRecorder:
    """Collects the faces of :meth:`Reconstructor.stream` per track and writes one animated ``.glb`` each.

    Example::

        rec_tracks = TrackRecorder(rec.face_model)
        for i, faces in enumerate(rec.stream(frames)):
            rec_tracks.add(i / fps, faces)
        paths = rec_tracks.save("out", "clip")      # out/clip.track0.glb, ...
    """

    def __init__(self, face_model: "FaceModel"):
        _gltf()  # fail early, before a long video, when pygltflib is missing
        self.face_model = face_model
        self.tracks: dict[int, tuple[list[float], list]] = {}

    def add(self, time_s: float, faces: Iterable["Face"]) -> None:
        for f in faces:
            times, items = self.tracks.setdefault(int(f.track_id), ([], []))
            if times and time_s <= times[-1]:
                continue
            times.append(float(time_s))
            items.append(f)

    def save(self, folder: str | os.PathLike, stem: str) -> list[Path]:
        folder = Path(folder)
        return [write_track_glb(folder / f"{stem}.track{tid}.glb", self.face_model, times, items,
                                name=f"{stem}_track{tid}")
                for tid, (times, items) in sorted(self.tracks.items())]


# ------------------------------------------------------------------------------------- reading


def _read_accessor(doc, blob: bytes, index: int) -> np.ndarray:
    g = _gltf()
    acc = doc.accessors[index]
    view = doc.bufferViews[acc.bufferView]
    dtype = {g.FLOAT: "<f4", g.UNSIGNED_SHORT: "<u2", g.UNSIGNED_INT: "<u4", g.UNSIGNED_BYTE: "u1"}[acc.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    return np.frombuffer(blob, dtype, acc.count * width, start).reshape(acc.count, width).squeeze(-1 if width == 1 else ())


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = (float(c) for c in q / np.linalg.norm(q))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def evaluate_track_glb(path: str | os.PathLike, key: int) -> tuple[float, np.ndarray]:
    """(time, vertices ``(V, 3)`` in the file's world frame) of a file from :func:`write_track_glb` at keyframe ``key``."""
    g = _gltf()
    doc = g.GLTF2().load_binary(str(path))
    blob = doc.binary_blob()
    prim = doc.meshes[0].primitives[0]
    base = _read_accessor(doc, blob, prim.attributes.POSITION).astype(np.float64)
    targets = np.stack([_read_accessor(doc, blob, t["POSITION"] if isinstance(t, dict) else t.POSITION)
                        for t in prim.targets]).astype(np.float64)
    anim = doc.animations[0]
    samplers = {ch.target.path: anim.samplers[ch.sampler] for ch in anim.channels}
    times = _read_accessor(doc, blob, samplers["rotation"].input)
    quats = _read_accessor(doc, blob, samplers["rotation"].output).reshape(-1, 4)
    weights = _read_accessor(doc, blob, samplers["weights"].output).reshape(len(times), len(targets))
    head, face = doc.nodes[0], doc.nodes[1]
    local = base + np.tensordot(weights[key], targets, axes=1) + np.asarray(face.translation)
    world = local @ _quat_matrix(quats[key]).T + np.asarray(head.translation)
    return float(np.atleast_1d(times)[key]), world.astype(np.float32)
