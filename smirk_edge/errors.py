"""Typed errors raised by smirk-edge.

Every user-facing failure is one of these, with a message that says what to do next.
This module imports nothing heavy and may be imported from anywhere.
"""

from __future__ import annotations


def install_hint(extra: str) -> str:
    """How to install the pip extra ``extra`` of smirk-edge, for an installed wheel or a git checkout.

    smirk-edge is installed from a wheel or a checkout, not from PyPI, so the hint names the
    extra's own packages (read from the installed metadata) and the checkout form.
    """
    import re

    reqs: list[str] = []
    try:
        from importlib.metadata import requires

        for r in requires("smirk-edge") or []:
            spec, _, marker = r.partition(";")
            m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
            if m and m.group(1) == extra:
                reqs.append(spec.strip().replace(" ", ""))
    except Exception:  # not installed (running from a source tree): the checkout form only
        reqs = []
    checkout = f'from a git checkout: pip install -e ".[{extra}]"'
    if reqs:
        return "pip install " + " ".join(f'"{r}"' for r in reqs) + f'  (the "{extra}" extra; {checkout})'
    return f'pip install the "{extra}" extra ({checkout}; from a wheel: pip install "WHEEL.whl[{extra}]")'


class SmirkEdgeError(Exception):
    """Base class of every error smirk-edge raises on purpose."""


class InputError(SmirkEdgeError, ValueError):
    """An image, frame or parameter array that cannot be used (wrong dtype, shape, empty, corrupt)."""


class FaceModelError(SmirkEdgeError):
    """A face-model file that is missing keys, has wrong shapes, or cannot be read."""


class CheckpointError(SmirkEdgeError):
    """A checkpoint that does not match the SMIRK key layout (missing/unexpected keys, shapes)."""


class UnsafeFileError(SmirkEdgeError):
    """A pickle or archive that tries to load something other than plain arrays (refused)."""


class BundleError(SmirkEdgeError):
    """A model bundle that is missing, malformed, or fails its checksum."""


class RunnerError(SmirkEdgeError, RuntimeError):
    """A runner used out of order (inactive, activated twice) or an engine call that failed."""


class OptionError(RunnerError, ValueError):
    """An unknown or unsupported option (engine, provider, device, precision, keyword)."""


class EngineUnavailable(SmirkEdgeError, ImportError):
    """An inference engine or optional dependency that is not installed.

    The message names the pip extra that installs it and its packages (:func:`install_hint`).
    """

    def __init__(self, what: str, extra: str, detail: str = ""):
        self.what = what
        self.extra = extra
        msg = f"{what} is not available: {install_hint(extra)}"
        if detail:
            msg += f"  ({detail})"
        super().__init__(msg)


class OutputError(SmirkEdgeError, OSError):
    """A result that could not be written (folder missing or read-only, disk full, encoder failed)."""


def excerpt(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting untrusted values in messages.

    Bytes and long strings are never quoted in full (an error about a 40 MB file must stay short).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return repr(value[:limit]) + f"...<{len(value)} chars>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit] + f"...<{len(text)} chars>"
    return text
