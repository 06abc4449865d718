"""The CPU this process runs on, read in one place: SIMD flags, the CPU class, the core budget.

* :func:`cpu_flags`: the flags of ``/proc/cpuinfo`` (``SMIRK_EDGE_CPU_FLAGS`` overrides them:
  a comma- or space-separated list, for tests and for checking a bundle against another CPU).
* :func:`cpu_class`: one name per family of int8 kernels, from the flags:

  ===============  ==========================================  ===================================
  class            flags                                       ONNX Runtime u8s8 int8 (x86 QDQ)
  ===============  ==========================================  ===================================
  ``amx``          ``amx_int8``                                exact (AMX / VNNI kernels)
  ``avx512-vnni``  ``avx512_vnni``                             exact (VNNI dot products)
  ``avx-vnni``     ``avx_vnni`` (no AVX-512)                   exact (VNNI dot products)
  ``avx512``       ``avx512f``, no VNNI                        saturates (``vpmaddubsw`` sums
                                                               u8 x s8 pairs into int16)
  ``avx2``         ``avx2``, no AVX-512, no VNNI               saturates (as above)
  ``generic``      none of these (older x86, ARM)              not measured
  ===============  ==========================================  ===================================

  ONNX Runtime documents ``reduce_range`` (7-bit weights) or u8u8 for CPUs without VNNI. An
  int8 artifact records the classes its accuracy gate ran on (``attrs["cpu_classes"]``):
  :func:`int8_valid_classes` reads them (or infers them for bundles written before the key).
* :func:`core_budget`: the physical cores this process may use (CPU affinity, the cgroup CPU
  quota of ``/sys/fs/cgroup/cpu.max``, SMT siblings counted once): the default ``threads``.
* :func:`apply_thread_budget`: one budget for OpenCV (``cv2.setNumThreads``) and the BLAS under
  numpy (threadpoolctl when installed, else the usual environment variables), so that the engine,
  OpenCV and BLAS pools do not oversubscribe the cores.

numpy-free; OpenCV and threadpoolctl are imported only by :func:`apply_thread_budget`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

FLAGS_ENV = "SMIRK_EDGE_CPU_FLAGS"
CPU_CLASSES = ("amx", "avx512-vnni", "avx-vnni", "avx512", "avx2", "generic")
VNNI_CLASSES = ("amx", "avx512-vnni", "avx-vnni")
"""Classes whose u8s8 int8 dot products do not saturate."""
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's flags (lower case), from ``SMIRK_EDGE_CPU_FLAGS`` when set, else ``/proc/cpuinfo``."""
    override = os.environ.get(FLAGS_ENV)
    if override is not None:
        return frozenset(t.strip().lower() for t in override.replace(",", " ").split() if t.strip())
    return _read_cpuinfo()


def cpu_class(flags: Iterable[str] | None = None) -> str:
    """The CPU class of ``flags`` (default: this machine's), one of :data:`CPU_CLASSES`."""
    f = cpu_flags() if flags is None else frozenset(flags)
    if "amx_int8" in f:
        return "amx"
    if "avx512_vnni" in f:
        return "avx512-vnni"
    if "avx_vnni" in f:
        return "avx-vnni"
    if "avx512f" in f:
        return "avx512"
    if "avx2" in f:
        return "avx2"
    return "generic"


def has_vnni(cls: str) -> bool:
    """True when ONNX Runtime's u8s8 int8 kernels are exact on CPU class ``cls``."""
    return cls in VNNI_CLASSES


ISA_FEATURES = (("AVX2", ("avx2",)), ("AVX-512", ("avx512f",)), ("VNNI", ("avx512_vnni", "avx_vnni")),
                ("AMX", ("amx_int8",)))
"""The instruction-set features that decide CPU speed and int8 kernels, and the flags that show each."""


def isa_summary(flags: Iterable[str] | None = None) -> str:
    """``"AVX2 yes, AVX-512 no, VNNI no, AMX no"``: each of :data:`ISA_FEATURES` for ``flags``
    (default: this machine's), present or not."""
    f = cpu_flags() if flags is None else frozenset(x.lower() for x in flags)
    return ", ".join(f"{name} {'yes' if any(x in f for x in names) else 'no'}" for name, names in ISA_FEATURES)


def describe_flags(flags: Iterable[str] | None = None) -> str:
    """``"amx (avx2 avx512f avx512_vnni avx_vnni amx_int8)"``: the class and the flags that decide it."""
    f = cpu_flags() if flags is None else frozenset(flags)
    have = [x for x in FLAGS_OF_INTEREST if x in f]
    return f"{cpu_class(f)} ({' '.join(have) or 'none of ' + ', '.join(FLAGS_OF_INTEREST)})"


def exact_int8_family(cls: str) -> tuple[str, ...]:
    """The CPU classes whose ONNX Runtime u8s8 int8 results equal those of class ``cls``: every
    VNNI class (AVX-512 VNNI, AVX-VNNI, AMX: exact int32 sums, no saturation) for one of them,
    else ``cls`` alone (AVX2 and AVX-512 without VNNI saturate, each in its own way)."""
    return VNNI_CLASSES if cls in VNNI_CLASSES else (cls,)


def int8_valid_classes(attrs: Mapping[str, Any], kind: str = "onnx") -> tuple[str, ...] | None:
    """The CPU classes an int8 artifact is valid for, or None when it runs the same everywhere.

    ``attrs["cpu_classes"]`` (the classes its gate ran on) when the manifest has it. Bundles
    written before the key: an ONNX Runtime x86 int8 model with uint8 activations and int8 weights
    and no reduced range was gated on a VNNI machine and is exact only there
    (:data:`VNNI_CLASSES`); other artifacts (OpenVINO IR, TensorRT-only QDQ) are not limited.
    """
    if kind != "onnx" or attrs.get("intended_engine") not in (None, "any"):
        return None
    stated = attrs.get("cpu_classes")
    if isinstance(stated, (list, tuple)):
        return tuple(str(c) for c in stated)
    q = attrs.get("quantization")
    if isinstance(q, Mapping) and q.get("activations") == "QUInt8" and q.get("weights") == "QInt8" \
            and not q.get("reduce_range"):
        return VNNI_CLASSES
    return None


def int8_applies(attrs: Mapping[str, Any], kind: str, precision: str | None, cls: str | None = None) -> bool:
    """True unless an int8 ONNX artifact was not gated for CPU class ``cls`` (default: this machine's)."""
    if precision != "int8":
        return True
    valid = int8_valid_classes(attrs, kind)
    return valid is None or (cpu_class() if cls is None else cls) in valid


# ---------------------------------------------------------------------------------------------- cores
def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _read_words(path: str | os.PathLike) -> list[str] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split()
    except OSError:
        return None


def _v2_quota(path: str | os.PathLike) -> float | None:
    """CPUs of one cgroup v2 ``cpu.max`` file (``quota period``), None when ``max`` or unreadable."""
    parts = _read_words(path)
    if not parts or len(parts) < 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    """CPUs of one cgroup v1 cpu controller folder (``cpu.cfs_quota_us / cpu.cfs_period_us``; -1 = none)."""
    quota, period = _read_words(folder / "cpu.cfs_quota_us"), _read_words(folder / "cpu.cfs_period_us")
    try:
        q, t = float(quota[0]), float(period[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return None
    return q / t if q > 0 and t > 0 else None


def _up_to(folder: Path, top: Path) -> list[Path]:
    """``folder`` and its parents up to ``top`` (a cgroup and the cgroups above it, whose quotas hold too)."""
    out = [folder]
    while folder != top and top in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


def cgroup_quota(path: str | os.PathLike | None = None, proc_cgroup: str = "/proc/self/cgroup",
                 root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup CPU quota (``quota / period``), None when unlimited or unknown.

    ``path``: read this one cgroup v2 ``cpu.max`` file. Otherwise this process's cgroups from
    ``proc_cgroup``: cgroup v2 (``cpu.max`` of its cgroup and of every cgroup above it) and cgroup
    v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of the cpu controller, e.g. Docker on older
    hosts); the smallest quota found. A container that sees only its own cgroup (the path of
    ``proc_cgroup`` is not under the mount) reads the mount's root.
    """
    if path is not None:
        return _v2_quota(path)
    base = Path(root)
    found: list[float] = []
    try:
        lines = Path(proc_cgroup).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = ["0::/"]  # unknown: the root of a v2 hierarchy
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        rel = rel.lstrip("/")
        if hid == "0" and controllers == "":
            mounts = [(base, _v2_quota, "cpu.max")] if (base / "cgroup.controllers").is_file() else []
            mounts += [(base / "unified", _v2_quota, "cpu.max")]
        elif "cpu" in controllers.split(","):
            mounts = [(base / name, _v1_quota, "") for name in (controllers, "cpu", "cpu,cpuacct")]
        else:
            continue
        for mount, read, leaf in mounts:
            if not mount.is_dir():
                continue
            folder = mount / rel if (mount / rel).is_dir() else mount
            for f in _up_to(folder, mount):
                q = read(f / leaf) if leaf else read(f)
                if q is not None:
                    found.append(q)
            break
    return min(found) if found else None


def _physical(cpus: set[int], sysfs: str = "/sys/devices/system/cpu") -> int:
    """Physical cores among logical ``cpus`` (SMT siblings counted once; unknown topology: all)."""
    cores = set()
    for c in cpus:
        try:
            with open(f"{sysfs}/cpu{c}/topology/thread_siblings_list", encoding="utf-8") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


@dataclass(frozen=True)
class CoreBudget:
    """The cores this process may use: ``logical`` (affinity), ``physical`` (SMT siblings once),
    ``quota`` (cgroup CPUs, None = none) and ``threads``, the default thread count."""

    logical: int
    physical: int
    quota: float | None
    threads: int


def core_budget(affinity: set[int] | None = None, cpu_max: str | None = None,
                sysfs: str = "/sys/devices/system/cpu", max_threads: int = 256,
                proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> CoreBudget:
    """The default thread budget: physical cores in the affinity mask, capped by the cgroup quota
    (:func:`cgroup_quota`: ``cpu_max`` when given, else this process's cgroup v2 or v1 quota)."""
    cpus = _affinity() if affinity is None else set(affinity)
    q = cgroup_quota(cpu_max, proc_cgroup, cgroup_root)
    physical = _physical(cpus, sysfs)
    threads = physical if q is None else min(physical, max(1, math.floor(q)))
    return CoreBudget(len(cpus), physical, q, max(1, min(threads, max_threads)))


def apply_thread_budget(threads: int) -> dict[str, Any]:
    """Give OpenCV and numpy's BLAS the same ``threads`` budget as the engine; returns what was set.

    OpenCV: ``cv2.setNumThreads`` (process-wide). BLAS: threadpoolctl's ``threadpool_limits`` when
    threadpoolctl is installed; otherwise the BLAS environment variables are set where unset
    (they take effect only for a BLAS loaded later).
    """
    done: dict[str, Any] = {"threads": threads}
    usable = len(_affinity())
    q = cgroup_quota()
    if q is not None:
        usable = min(usable, max(1, math.ceil(q)))
    if threads > usable:
        import warnings

        msg = (f"threads={threads} is more than the {usable} CPU(s) this process may use (CPU affinity, cgroup "
               f"quota): the engine, OpenCV and BLAS pools will compete for them; threads=None takes "
               f"{core_budget().threads}")
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        done["oversubscribed"] = usable
    try:
        import cv2

        cv2.setNumThreads(int(threads))
        done["opencv"] = int(threads)
    except Exception as exc:  # noqa: BLE001 - a missing/odd OpenCV build must not stop the SDK
        log.debug("cv2.setNumThreads failed: %s", exc)
    from importlib.util import find_spec

    if find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(threads), user_api="blas")
        done["blas"] = "threadpoolctl"
    else:
        for k in BLAS_ENV:
            os.environ.setdefault(k, str(int(threads)))
        done["blas"] = "environment"
    return done
