"""What this machine is and which engines it has (for ``smirk-edge info`` and benchmark rows).

Nothing here imports an engine unless ``probe=True`` is asked; versions come from package
metadata.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys

from ._lazy import available, require
from .cpu import cpu_class

# distributions reported by `smirk-edge info` and benchmark rows
ENGINE_PACKAGES = ("numpy", "opencv-python-headless", "onnxruntime", "openvino", "tensorrt", "torch", "timm",
                   "onnx", "nncf", "cuda-python")
# alternative builds, reported only when installed
ALTERNATIVE_PACKAGES = ("onnxruntime-gpu", "onnxruntime-openvino", "opencv-python")

_INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                      "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_description() -> dict:
    """CPU model, logical cores and the SIMD flags that matter to inference engines."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "arch": platform.machine(),
        "flags": sorted(f for f in _INTERESTING_FLAGS if f in flags),
        "class": cpu_class(flags),  # smirk_edge.cpu: which int8 kernels are exact here
    }


def gpu_description() -> list[dict]:
    """NVIDIA GPUs from ``nvidia-smi`` (empty when there is none); Jetson boards report their model."""
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=False).stdout
            for line in out.strip().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 4:
                    gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2],
                                 "compute_capability": parts[3]})
        except (OSError, subprocess.SubprocessError):
            pass
    if not gpus and os.path.exists("/proc/device-tree/model"):
        try:
            with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as f:
                model = f.read().strip("\x00\n ")
            if "jetson" in model.lower() or "nvidia" in model.lower():
                gpus.append({"name": model, "memory": "shared", "driver": "", "compute_capability": ""})
        except OSError:
            pass
    return gpus


def engine_versions() -> dict[str, str | None]:
    """Installed versions of the engines and libraries smirk-edge can use (None = absent)."""
    out = {dist: _version(dist) for dist in ENGINE_PACKAGES}
    out.update({dist: v for dist in ALTERNATIVE_PACKAGES if (v := _version(dist)) is not None})
    return out


def engine_details() -> dict[str, dict]:
    """Import the installed engines and report what they can run on (providers, devices, CUDA)."""
    details: dict[str, dict] = {}
    if available("onnxruntime"):
        try:
            import onnxruntime as ort

            details["onnxruntime"] = {"providers": ort.get_available_providers()}
        except Exception as exc:  # broken install: report, don't die
            details["onnxruntime"] = {"error": str(exc)}
    if available("openvino"):
        try:
            ov = require("openvino")
            details["openvino"] = {"devices": ov.Core().available_devices}
        except Exception as exc:
            details["openvino"] = {"error": str(exc)}
    if available("torch"):
        try:
            import torch

            details["torch"] = {"cuda": torch.cuda.is_available(),
                                "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                                if torch.cuda.is_available() else []}
        except Exception as exc:
            details["torch"] = {"error": str(exc)}
    if available("tensorrt"):
        try:
            import tensorrt as trt

            details["tensorrt"] = {"version": trt.__version__}
        except Exception as exc:
            details["tensorrt"] = {"error": str(exc)}
    return details


def describe(probe: bool = True) -> dict:
    """Everything above in one JSON-serialisable dict."""
    from ._version import __version__

    info = {
        "smirk_edge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "gpus": gpu_description(),
        "packages": engine_versions(),
    }
    if probe:
        info["engines"] = engine_details()
    return info
