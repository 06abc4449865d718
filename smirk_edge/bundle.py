"""The model bundle: one folder per model, the unit shipped to a device.

``manifest.json`` describes the model (input, crop policy, parameter layout, face model, source
checkpoint) and lists every artifact with its kind, role, precision, files and their sha256.
Artifacts are checked against their hash before use; paths in the manifest must stay inside the
bundle folder. See docs/bundle.md for the schema.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from ._version import __version__
from .crop import CROP_SIZE, DEFAULT_SCALE, INPUT_NAME
from .errors import BundleError, excerpt
from .results import PARAM_WIDTHS

SCHEMA = "smirk-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# kind -> which files it consists of (informative; the manifest lists them)
KINDS = ("onnx", "openvino-ir", "tensorrt-engine", "face-model", "golden", "model-card", "torch-checkpoint")
ROLES = ("encoder", "fused", "detector", "face_model", "golden", "model_card", "checkpoint")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", None)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_MANIFEST_BYTES = 4 << 20
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 30
_BOOL_ATTRS = ("degraded",)


def _json_depth(obj: Any) -> int:
    """Deepest nesting of lists/objects in parsed JSON (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        deepest = max(deepest, d)
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BundleError(f"a number of {len(text)} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str):
    raise BundleError(f"{name} is not valid JSON")


def parse_manifest_text(raw: bytes, where: str) -> Any:
    """JSON of a manifest with bounded size, nesting and numbers; every failure a BundleError."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where} is {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where} is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    deep = BundleError(f"{where} nests objects or lists more than {MAX_JSON_DEPTH} deep")
    try:
        doc = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except BundleError as exc:
        raise BundleError(f"{where} is not a valid manifest: {exc}") from None
    except RecursionError:
        raise deep from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise BundleError(f"{where} is not valid JSON: {excerpt(str(exc), 200)}") from None
    if _json_depth(doc) > MAX_JSON_DEPTH:
        raise deep
    return doc


def _read_manifest(mpath: Path) -> Any:
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {mpath}: {exc.strerror or exc}") from None
    return parse_manifest_text(raw, str(mpath))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _safe_relpath(rel: str, where: str) -> str:
    """A manifest path: relative, POSIX, no '..', no drive, every part a plain name."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: path must be a non-empty string, got {excerpt(rel)}")
    if len(rel) > 255:
        raise BundleError(f"{where}: path {excerpt(rel)} is longer than 255 characters")
    p = PurePosixPath(rel)
    if p.is_absolute() or "\\" in rel or ":" in rel:
        raise BundleError(f"{where}: path {excerpt(rel)} must be relative to the bundle folder")
    if any(part in ("..", ".", "") or not _SAFE_NAME.match(part) for part in p.parts):
        raise BundleError(f"{where}: path {excerpt(rel)} may only hold plain names (letters, digits, '.', '_', '-')")
    return str(p)


@dataclass
class FileEntry:
    path: str
    sha256: str
    bytes: int


@dataclass
class Artifact:
    """One artifact: its kind (e.g. ``'onnx'``), precision (e.g. ``'fp32'``) and main file path.

    The one artifact record of smirk-edge: a bundle's manifest entries are these (``path`` relative
    to the bundle folder, with ``name``, ``role``, every file with its sha256, and ``attrs`` such as
    accuracy, opset, ``degraded``), and :func:`smirk_edge.runtimes.select_engine` ranks them.
    ``Artifact("onnx", "fp32", "encoder.onnx")`` is enough to ask which engine would open a file.
    """

    kind: str
    precision: str | None
    path: str | os.PathLike  # the main file (the .onnx, the .xml of an IR pair, the engine)
    name: str = ""
    role: str = "encoder"
    files: list[FileEntry] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)  # e.g. accuracy, device, opset, degraded

    def __post_init__(self) -> None:
        if not self.name:
            self.name = os.path.basename(os.fspath(self.path))

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "role": self.role, "precision": self.precision,
                "files": [vars(f) for f in self.files], **({"attrs": self.attrs} if self.attrs else {})}


def _parse_artifact(d: Any, i: int) -> Artifact:
    where = f"manifest artifact #{i}"
    if not isinstance(d, dict):
        raise BundleError(f"{where} must be an object")
    try:
        name, kind, role = d["name"], d["kind"], d["role"]
        files = d["files"]
    except KeyError as exc:
        raise BundleError(f"{where} lacks {exc}") from exc
    if not isinstance(name, str) or not name or len(name) > 200:
        raise BundleError(f"{where}: name must be a string of 1 to 200 characters, got {excerpt(name)}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BundleError(f"{where} ({name}): unknown kind {excerpt(kind)}; known: {', '.join(KINDS)}")
    if not isinstance(role, str) or role not in ROLES:
        raise BundleError(f"{where} ({name}): unknown role {excerpt(role)}; known: {', '.join(ROLES)}")
    precision = d.get("precision")
    if not (precision is None or isinstance(precision, str)) or precision not in PRECISIONS:
        raise BundleError(f"{where} ({name}): unknown precision {excerpt(precision)}")
    if not isinstance(files, list) or not files:
        raise BundleError(f"{where} ({name}): 'files' must be a non-empty list")
    entries = []
    for f in files:
        if not isinstance(f, dict) or not {"path", "sha256", "bytes"} <= set(f):
            raise BundleError(f"{where} ({name}): each file needs path, sha256 and bytes")
        sha = f["sha256"]
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise BundleError(f"{where} ({name}): sha256 of {excerpt(f['path'])} is not a hex digest")
        if not isinstance(f["bytes"], int) or isinstance(f["bytes"], bool) or f["bytes"] < 0:
            raise BundleError(f"{where} ({name}): bytes of {excerpt(f['path'])} must be a non-negative integer")
        entries.append(FileEntry(_safe_relpath(f["path"], f"{where} ({name})"), sha, f["bytes"]))
    attrs = d.get("attrs", {})
    if not isinstance(attrs, dict):
        raise BundleError(f"{where} ({name}): attrs must be an object")
    for key in _BOOL_ATTRS:
        if key in attrs and not isinstance(attrs[key], bool):
            raise BundleError(f"{where} ({name}): attrs.{key} must be true or false (a JSON boolean), got "
                              f"{excerpt(attrs[key])}")
    return Artifact(kind, precision, entries[0].path, name=str(name), role=role, files=entries, attrs=attrs)


@dataclass(frozen=True)
class BundleMetadata:
    """The manifest's ``metadata`` that the SDK runs by, read and checked when the bundle opens.

    Attributes:
        input_name: the encoder's input tensor (``input.name``).
        input_size: side S of the encoder's ``(B, 3, S, S)`` input (``input.shape``).
        crop_scale: SMIRK's square-side factor (``crop_policy.scale``).
        outputs: parameter layout, name -> width (``outputs``); must equal the SDK's
            (:data:`smirk_edge.results.PARAM_WIDTHS`).
        face_model_id: ``face_model.id``, checked against the bundle's face-model file (None: unstated).
        face_model_vertices: ``face_model.vertices`` (None: unstated).

    Bundles written before a key existed get the value every export has written since (224 px,
    scale 1.4, input ``image``, SMIRK's layout); a key that is present but wrong is a BundleError.
    """

    input_name: str = INPUT_NAME
    input_size: int = CROP_SIZE
    crop_scale: float = DEFAULT_SCALE
    outputs: Mapping[str, int] = field(default_factory=lambda: dict(PARAM_WIDTHS))
    face_model_id: str | None = None
    face_model_vertices: int | None = None

    @classmethod
    def from_manifest(cls, meta: Mapping[str, Any], where: str) -> "BundleMetadata":
        def fail(what: str) -> BundleError:
            return BundleError(f"{where}: metadata {what}; re-export the bundle with 'smirk-edge export'")

        def section(key: str) -> Mapping[str, Any]:
            v = meta.get(key, {})
            if not isinstance(v, Mapping):
                raise fail(f"{key!r} must be an object")
            return v

        def positive_int(v: Any, what: str) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail(f"{what} must be a positive integer, got {v!r}")
            return v

        inp, policy, fm = section("input"), section("crop_policy"), section("face_model")
        name = inp.get("name", cls.input_name)
        if not isinstance(name, str) or not name:
            raise fail(f"input.name must be a non-empty string, got {name!r}")
        size = meta.get("input_size", cls.input_size)
        if "shape" in inp:
            shape = inp["shape"]
            if not isinstance(shape, list) or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
                raise fail(f"input.shape must be [batch, 3, S, S], got {shape!r}")
            size = shape[2]
        size = positive_int(size, "input size")
        if positive_int(policy.get("size", size), "crop_policy.size") != size:
            raise fail(f"crop_policy.size {policy.get('size')} differs from the input size {size}")
        scale = policy.get("scale", cls.crop_scale)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.5 <= scale <= 4.0:
            raise fail(f"crop_policy.scale must be a number in [0.5, 4], got {scale!r}")
        outputs = dict(PARAM_WIDTHS)
        if "outputs" in meta:
            raw = section("outputs")
            try:
                outputs = {k: v["width"] if isinstance(v, Mapping) else v for k, v in raw.items()}
            except KeyError as exc:
                raise fail(f"outputs.{exc.args[0]} lacks 'width'") from exc
            if outputs != PARAM_WIDTHS:
                raise fail(f"outputs {outputs} are not the SMIRK layout {PARAM_WIDTHS} this smirk-edge decodes")
        fm_id = fm.get("id")
        if fm_id is not None and not isinstance(fm_id, str):
            raise fail(f"face_model.id must be a string, got {fm_id!r}")
        fm_v = fm.get("vertices")
        if fm_v is not None:
            fm_v = positive_int(fm_v, "face_model.vertices")
        return cls(name, size, float(scale), outputs, fm_id, fm_v)

    def check_face_model(self, model_id: str, n_vertices: int, where: str) -> None:
        """BundleError when the face-model file is not the one the metadata names."""
        if self.face_model_vertices is not None and n_vertices != self.face_model_vertices:
            raise BundleError(f"{where}: the face model has {n_vertices} vertices, the metadata says "
                              f"{self.face_model_vertices} ({self.face_model_id}); re-export the bundle")
        if self.face_model_id is not None and model_id != self.face_model_id:
            raise BundleError(f"{where}: the face model is {model_id!r}, the metadata says {self.face_model_id!r}; "
                              "re-export the bundle")


class Bundle:
    """A model bundle folder, opened read-only. Files are verified against their sha256 on first use."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not self.root.is_dir():
            raise BundleError(f"bundle folder not found: {self.root}")
        if not mpath.is_file():
            raise BundleError(f"{self.root} is not a smirk-edge bundle: {MANIFEST} is missing")
        manifest = _read_manifest(mpath)
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise BundleError(f"{mpath} is not a smirk-edge bundle manifest (schema {SCHEMA!r} expected)")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise BundleError(f"{mpath}: schema_version must be a positive integer")
        if version > SCHEMA_VERSION:
            raise BundleError(f"bundle schema version {version} is newer than this smirk-edge reads "
                              f"({SCHEMA_VERSION}): upgrade smirk-edge")
        arts = manifest.get("artifacts")
        if not isinstance(arts, list):
            raise BundleError(f"{mpath}: 'artifacts' must be a list")
        self.manifest = manifest
        self.metadata: dict = manifest.get("metadata", {}) if isinstance(manifest.get("metadata"), dict) else {}
        self.info = BundleMetadata.from_manifest(self.metadata, str(mpath))
        self.artifacts = [_parse_artifact(a, i) for i, a in enumerate(arts)]
        names = [a.name for a in self.artifacts]
        if len(set(names)) != len(names):
            raise BundleError(f"{mpath}: artifact names must be unique")
        self._verified: set[str] = set()
        self._onnx_checked: set[str] = set()
        self.skipped_for_cpu: list[tuple[str, str]] = []  # (artifact, why) of the last runnable_encoders()

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, artifacts={[a.name for a in self.artifacts]})"

    def find(self, role: str | None = None, kind: str | None = None, precision: str | None = None) -> list[Artifact]:
        return [a for a in self.artifacts if (role is None or a.role == role) and (kind is None or a.kind == kind)
                and (precision is None or a.precision == precision)]

    def encoders(self) -> list[Artifact]:
        """Artifacts that can run as the encoder: every ``encoder``, plus each ``fused`` graph (it
        returns the six parameters too) of a kind and precision no plain encoder has. The default
        bundle ships its ONNX int8 model only fused, to stay small."""
        encs = self.find(role="encoder")
        have = {(a.kind, a.precision) for a in encs}
        return encs + [a for a in self.find(role="fused") if (a.kind, a.precision) not in have]

    def runnable_encoders(self, precision: str | None = None, cpu_class: str | None = None) -> list[Artifact]:
        """The :meth:`encoders` an SDK may run for ``precision`` (None: any precision).

        Artifacts made only for building TensorRT engines (``intended_engine``) are never run
        directly. Artifacts that failed the accuracy gate (``degraded``) are left out unless their
        precision is asked for explicitly, and then used with a RuntimeWarning. int8 ONNX artifacts
        not gated for this machine's CPU class (``cpu_class``, default
        :func:`smirk_edge.cpu.cpu_class`; see :func:`smirk_edge.cpu.int8_valid_classes`) are left
        out and listed in :attr:`skipped_for_cpu` with the reason (logged).
        Raises BundleError when nothing is left.
        """
        import logging
        import warnings

        from .cpu import cpu_class as running_class
        from .cpu import int8_valid_classes

        encoders = self.encoders()
        if not encoders:
            raise BundleError(f"bundle {self.root} has no encoder artifact")
        usable = [a for a in encoders if a.attrs.get("intended_engine") in (None, "any")]
        cls = running_class() if cpu_class is None else cpu_class
        self.skipped_for_cpu = []
        for a in list(usable):
            valid = int8_valid_classes(a.attrs, a.kind) if a.precision == "int8" else None
            if valid is not None and cls not in valid:
                usable.remove(a)
                why = (f"{a.name} skipped: int8 gated for CPU classes {', '.join(valid)}, this CPU is {cls} "
                       "(ONNX Runtime's u8s8 kernels saturate without VNNI)")
                self.skipped_for_cpu.append((a.name, why))
                logging.getLogger(__name__).info(why)
        if precision is None:
            usable = [a for a in usable if not a.attrs.get("degraded")]
        else:
            for a in usable:
                if a.precision == precision and a.attrs.get("degraded"):
                    warnings.warn(f"{a.name} failed the bundle's accuracy gate (marked degraded) and is used "
                                  f"because precision={precision!r} was asked for", RuntimeWarning, stacklevel=3)
        if not usable:
            raise BundleError(f"bundle {self.root} has no encoder artifact that passed the accuracy gate")
        return usable

    def get(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise BundleError(f"bundle {self.root} has no artifact {name!r}; it has {[a.name for a in self.artifacts]}")

    def file_path(self, artifact: Artifact, index: int = 0, verify: bool = True) -> Path:
        """Absolute path of one of the artifact's files, checked against its sha256 (once)."""
        entry = artifact.files[index]
        path = (self.root / entry.path)
        try:
            resolved = path.resolve(strict=True)
            inside = self.root.resolve(strict=True) in resolved.parents
        except FileNotFoundError:
            raise BundleError(f"artifact {artifact.name}: file {entry.path} is missing from {self.root}") from None
        except (OSError, RuntimeError) as exc:  # a symlink loop: ELOOP, or RuntimeError before Python 3.13
            raise BundleError(f"artifact {artifact.name}: {entry.path!r} cannot be resolved ({exc}); "
                              "the bundle holds a symbolic-link loop or an unreadable link") from None
        if not inside:
            raise BundleError(f"artifact {artifact.name}: {entry.path!r} resolves outside the bundle")
        if not path.is_file():
            raise BundleError(f"artifact {artifact.name}: file {entry.path} is missing from {self.root}")
        if verify and entry.path not in self._verified:
            size = path.stat().st_size
            if size != entry.bytes:
                raise BundleError(f"artifact {artifact.name}: {entry.path} is {size} bytes, the manifest says "
                                  f"{entry.bytes}: the bundle is damaged or was edited; re-export it")
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise BundleError(f"artifact {artifact.name}: sha256 of {entry.path} is {digest[:16]}..., the "
                                  f"manifest says {entry.sha256[:16]}...: the file was altered; re-export the bundle")
            self._verified.add(entry.path)
        return path

    def main_path(self, artifact: Artifact, verify: bool = True) -> Path:
        """Main file path, verifying every file of the artifact (e.g. the .bin beside an .xml).

        ONNX files are also checked for external data: every location must be a plain file name
        listed (and so hashed) in the same artifact; anything else is refused.
        """
        for i in range(1, len(artifact.files)):
            self.file_path(artifact, i, verify)
        path = self.file_path(artifact, 0, verify)
        if artifact.kind == "onnx" and (verify or artifact.name not in self._onnx_checked):
            self._check_external_data(artifact, path)
        return path

    def _check_external_data(self, artifact: Artifact, path: Path) -> None:
        from .onnx_guard import external_data_locations

        listed = {f.path for f in artifact.files[1:]}
        for loc in external_data_locations(path.read_bytes()):
            if loc not in listed:
                raise BundleError(
                    f"artifact {artifact.name}: {artifact.path} refers to external data {loc!r}, which is not a file "
                    "listed in its manifest entry; external data must be a plain file name in the bundle (refused)")
        self._onnx_checked.add(artifact.name)

    def verify_all(self) -> None:
        for a in self.artifacts:
            self.main_path(a)


class BundleWriter:
    """Create or extend a bundle folder. Files are copied in, hashed, and listed in the manifest."""

    def __init__(self, root: str | os.PathLike, metadata: Mapping | None = None, overwrite: bool = False):
        self.root = Path(root)
        if (self.root / MANIFEST).exists() and not overwrite:
            existing = Bundle(self.root)
            self.metadata = dict(existing.metadata)
            self.artifacts = {a.name: a for a in existing.artifacts}
        else:
            self.metadata, self.artifacts = {}, {}
        self.metadata.update(metadata or {})
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, kind: str, role: str, sources: Iterable[str | os.PathLike] | str | os.PathLike,
            precision: str | None = None, attrs: Mapping | None = None, move: bool = False) -> Artifact:
        """Copy (or move) ``sources`` into the bundle under their file names and register them."""
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        entries = []
        for src in sources:
            src = Path(src)
            rel = _safe_relpath(src.name, f"artifact {name}")
            dst = self.root / rel
            if src.resolve() != dst.resolve():
                (shutil.move if move else shutil.copyfile)(src, dst)
            entries.append(FileEntry(rel, sha256_file(dst), dst.stat().st_size))
        art = Artifact(kind, precision, entries[0].path if entries else "", name=name, role=role, files=entries, attrs=dict(attrs or {}))
        _parse_artifact(art.to_json(), 0)  # same validation as reading
        self.artifacts[name] = art
        return art

    def remove(self, name: str) -> None:
        self.artifacts.pop(name, None)

    def write(self) -> Bundle:
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "sdk_version": __version__,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "metadata": self.metadata,
            "artifacts": [a.to_json() for a in self.artifacts.values()],
        }
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / MANIFEST)
        return Bundle(self.root)
