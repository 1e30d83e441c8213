"""Build, cache and load prunelab's C++ sparse kernels (with a pure-torch fallback).

The kernels (``runtime/csrc``) are a torch extension built with
:func:`torch.utils.cpp_extension.load` on first use and cached under
``$PRUNELAB_CACHE_DIR/native/<digest>`` (default ``~/.cache/prunelab``); the digest covers
the sources, the torch version and the compiler, so an upgrade rebuilds and an unchanged
install loads in milliseconds. ``scripts/setup.sh`` builds them at install time.

Every instruction-set path (generic SSE2, AVX2 + FMA, AVX-512) is compiled into the same
library from one source; the fastest one this CPU runs is chosen at run time.
``PRUNELAB_SPARSE_ISA=generic|avx2|avx512`` forces one (an unsupported choice is an error).

Where the extension cannot be built (no C++ compiler, no ninja, a failing build) or
``PRUNELAB_NATIVE=0`` is set, :func:`load` returns ``None`` once with a one-line notice and
the sparse modules run a pure-torch formulation of the same products.

Example:
    >>> from prunelab.runtime import native
    >>> native.isa_name() in ("generic", "avx2", "avx512", "torch")
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from prunelab.errors import PrunelabError

__all__ = [
    "ISA_NAMES",
    "NativeUnavailableError",
    "available",
    "build_dir",
    "isa",
    "isa_name",
    "load",
    "status_line",
]

ISA_NAMES: dict[str, int] = {"generic": 0, "avx2": 1, "avx512": 2}
"""Instruction-set paths of the kernels and their codes."""

_SRC = Path(__file__).with_name("csrc")
_SOURCES = ("bindings.cpp", "spkern_generic.cpp", "spkern_avx2.cpp", "spkern_avx512.cpp")
_HEADERS = ("spkern.h", "spkern_impl.h")

_module: ModuleType | None = None
_tried = False
_reason = ""
_isa_cache: dict[str, int] = {}  # PRUNELAB_SPARSE_ISA value -> code (the CPU does not change)


class NativeUnavailableError(PrunelabError, RuntimeError):
    """The C++ kernels could not be built or loaded here (the message says why)."""


def _digest() -> str:
    h = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        h.update(name.encode())
        h.update((_SRC / name).read_bytes())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    h.update(str(shutil.which(os.environ.get("CXX", "c++")) or "").encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Directory of the cached build for these sources, this torch and this compiler.

    Example:
        >>> build_dir().parent.name
        'native'
    """
    root = os.environ.get("PRUNELAB_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "prunelab"
    return base / "native" / _digest()


def _build() -> ModuleType:
    if os.environ.get("PRUNELAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise NativeUnavailableError("disabled by PRUNELAB_NATIVE=0")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise NativeUnavailableError(f"no C++ compiler ({compiler!r} not found)")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.utils import cpp_extension

        try:
            cpp_extension.verify_ninja_availability()
        except RuntimeError as exc:
            raise NativeUnavailableError("ninja is not installed (pip install ninja)") from exc
        out = build_dir()
        out.mkdir(parents=True, exist_ok=True)
        try:
            return cpp_extension.load(
                name="prunelab_sparse_" + out.name,
                sources=[str(_SRC / s) for s in _SOURCES],
                extra_cflags=["-O3", "-fno-math-errno", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                extra_include_paths=[str(_SRC)],
                build_directory=str(out),
                verbose=os.environ.get("PRUNELAB_NATIVE_VERBOSE") == "1",
            )
        except Exception as exc:  # compiler errors arrive as RuntimeError/CalledProcessError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NativeUnavailableError(f"build failed in {out}: {first}") from exc


def load(*, required: bool = False) -> ModuleType | None:
    """The compiled kernel module, building it on first use; ``None`` if unavailable.

    Args:
        required: raise :class:`NativeUnavailableError` instead of returning ``None``.

    The first failure prints one notice (a ``RuntimeWarning``) naming the reason; later
    calls return ``None`` silently.

    Example:
        >>> mod = load()
        >>> mod is None or hasattr(mod, "spmm")
        True
    """
    global _module, _tried, _reason
    if not _tried:
        _tried = True
        try:
            _module = _build()
        except NativeUnavailableError as exc:
            _reason = str(exc)
            if "PRUNELAB_NATIVE=0" not in _reason:
                warnings.warn(
                    f"prunelab: native sparse kernels unavailable ({_reason}); "
                    "using the pure-torch fallback",
                    RuntimeWarning,
                    stacklevel=2,
                )
    if _module is None and required:
        raise NativeUnavailableError(_reason or "native kernels unavailable")
    return _module


def available() -> bool:
    """Whether the C++ kernels are built and loaded (building them if needed).

    Example:
        >>> isinstance(available(), bool)
        True
    """
    return load() is not None


def isa() -> int:
    """Instruction-set code the kernels use here (``PRUNELAB_SPARSE_ISA`` or the best).

    Raises ``ValueError`` for an unknown or unsupported forced choice and
    :class:`NativeUnavailableError` without the kernels.

    Example:
        >>> isa() in ISA_NAMES.values() if available() else True
        True
    """
    env = os.environ.get("PRUNELAB_SPARSE_ISA", "")
    cached = _isa_cache.get(env)
    if cached is not None:
        return cached
    mod = load(required=True)
    assert mod is not None
    forced = env.strip().lower()
    if not forced:
        _isa_cache[env] = int(mod.best_isa())
        return _isa_cache[env]
    if forced not in ISA_NAMES:
        raise ValueError(
            f"PRUNELAB_SPARSE_ISA={forced!r} is not one of {', '.join(ISA_NAMES)}"
        )
    code = ISA_NAMES[forced]
    if not mod.isa_supported(code):
        raise ValueError(f"PRUNELAB_SPARSE_ISA={forced!r}: this CPU does not support {forced}")
    _isa_cache[env] = code
    return code


def isa_name() -> str:
    """Name of the kernel path in use: ``generic``, ``avx2``, ``avx512`` or ``torch``.

    Example:
        >>> isa_name() in ("generic", "avx2", "avx512", "torch")
        True
    """
    if not available():
        return "torch"
    code = isa()
    return next(name for name, c in ISA_NAMES.items() if c == code)


def status_line() -> str:
    """One line saying which kernels run here and why.

    Example:
        >>> status_line().startswith("sparse kernels:")
        True
    """
    if available():
        return f"sparse kernels: native C++ ({isa_name()}), built in {build_dir()}"
    return f"sparse kernels: pure-torch fallback ({_reason})"
