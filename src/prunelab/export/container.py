"""One safetensors file holding a compact (pruned) model, and its loader.

File layout
-----------
All arrays are safetensors tensors; nothing is pickled. A compressed layer ``name`` (a state_dict
key such as ``"fc1.weight"``) is stored under keys ``"<name>/<field>"``:

* ``"han"``: ``values`` (value dtype, 1-D) and ``indices`` (uint8, the bit-packed relative
  indices of :mod:`prunelab.export.relative_index`);
* ``"csr"``: ``values``, ``col_indices`` (int32) and ``row_ptr`` (int32/int64);
* ``"dense"``: ``values`` (value dtype, the layer's shape);
* ``"compressed"`` (Deep Compression, :mod:`prunelab.export.compressed`): ``codebook`` (float32,
  the layer's distinct nonzero values), ``cluster_code_lengths`` and ``cluster_stream`` (uint8:
  the Huffman table as code lengths, and the Huffman-coded codebook index of every entry),
  ``gap_code_lengths`` and ``gap_stream`` (uint8: the same for the relative-index gap codes of
  Han's format, fillers included).

Other tensors (biases, BatchNorm parameters and buffers, ...) are stored as they are, under their
own names. The safetensors ``__metadata__`` holds one JSON string under the key ``"prunelab"``::

    {"magic": "prunelab.compact", "format_version": 1, "format": "han",
     "layers": {"fc1.weight": {"encoding": "han", "shape": [300, 784], "dtype": "float32",
                               "value_dtype": "float32", "index_bits": 5, "nnz": ...,
                               "num_entries": ..., "num_fillers": ...}, ...},
     "tensors": {"fc1.bias": {"shape": [300], "dtype": "float32"}, ...},
     "order": ["fc1.weight", "fc1.bias", ...],
     "metadata": {...the caller's dict, unchanged...}}

A ``"compressed"`` layer's entry adds ``cluster_bits``, ``codebook_size``, ``cluster_nbits``
and ``gap_nbits`` (exact bit lengths of the two streams) to the keys of a ``"han"`` one (its
``value_dtype`` is ``"float32"``, the codebook's). Every count and size is checked against the
arrays before anything is decoded, so a corrupt or hostile header is an error, not an
allocation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from prunelab.checkpoint import DIGEST_KEY, content_digest, write_safetensors_atomic
from prunelab.errors import FileFormatError, one_line, short_repr
from prunelab.export.compressed import (
    MAX_CLUSTER_BITS,
    CodebookSizeError,
    CompressedEncoded,
    decode_compressed,
    encode_compressed,
)
from prunelab.export.csr import CsrEncoded, decode_csr, encode_csr
from prunelab.export.relative_index import (
    MAX_INDEX_BITS,
    RelativeEncoded,
    decode_relative,
    encode_relative,
    packed_nbytes,
    resolve_value_dtype,
    weight_dtype_from_name,
    weight_dtype_name,
)
from prunelab.limits import check_elements, max_decoded_bytes

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CompactFormat",
    "ExportFormatError",
    "compressible_weight_names",
    "default_index_bits",
    "effective_state_dict",
    "export_model",
    "load_compact",
    "read_compact_header",
    "save_compact",
]

CompactFormat = Literal["han", "csr", "dense", "compressed"]

#: The formats :func:`save_compact` can write.
FORMATS: tuple[str, ...] = ("han", "csr", "dense", "compressed")
#: Version of the file layout written by this module; :func:`load_compact` reads versions <= it.
FORMAT_VERSION = 1
#: Key of the JSON header in the safetensors ``__metadata__`` map.
METADATA_KEY = "prunelab"
_MAGIC = "prunelab.compact"
#: Han et al.'s index widths: 5 bits for fully connected layers, 8 for convolutions. Deep
#: Compression uses the same widths for its codebooks (32 shared weights FC, 256 conv).
FC_INDEX_BITS = 5
CONV_INDEX_BITS = 8
#: Formats whose layers take a relative-index width (``index_bits``).
_INDEXED_FORMATS = ("han", "compressed")

_FIELDS: dict[str, tuple[str, ...]] = {
    "han": ("values", "indices"),
    "csr": ("values", "col_indices", "row_ptr"),
    "dense": ("values",),
    "compressed": (
        "codebook", "cluster_code_lengths", "cluster_stream", "gap_code_lengths", "gap_stream"
    ),
}

LayerInput = torch.Tensor | RelativeEncoded | CsrEncoded | CompressedEncoded


class ExportFormatError(FileFormatError):
    """A file is not a readable prunelab compact file (not safetensors, foreign, or corrupt)."""


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; use one of {list(FORMATS)}")


def default_index_bits(weight_shape: tuple[int, ...] | torch.Size) -> int:
    """Han's default index width for a weight: 5 bits for a 2-D (FC) weight, 8 otherwise (conv).

    Args:
        weight_shape: shape of the weight.

    Returns:
        ``5`` for 2-D shapes, ``8`` for all others.

    Example:
        >>> default_index_bits((300, 784)), default_index_bits((50, 20, 5, 5))
        (5, 8)
    """
    return FC_INDEX_BITS if len(weight_shape) == 2 else CONV_INDEX_BITS


def _is_compressible(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.modules.conv._ConvNd)


def effective_state_dict(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A plain, mask-free state dict: every ``X_orig``/``X_mask`` pair becomes ``X``.

    The effective tensor is computed as ``X_orig * X_mask``, the same product that
    ``torch.nn.utils.prune`` uses, so it equals the module's ``X`` attribute exactly.

    Args:
        model_or_state: a module (its ``state_dict()`` is used) or a state dict.

    Returns:
        A new dict in the original key order, with detached CPU tensors.

    Raises:
        ValueError: if the state holds ``torch.nn.utils.parametrize`` entries (remove the
            parametrizations first).

    Example:
        >>> from torch.nn.utils import prune
        >>> lin = nn.Linear(3, 2)
        >>> _ = prune.l1_unstructured(lin, "weight", amount=0.5)
        >>> sorted(effective_state_dict(lin))
        ['bias', 'weight']
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out: dict[str, Any] = {}
    for key, value in state.items():
        if ".parametrizations." in f".{key}":
            raise ValueError(
                f"state entry {key!r} comes from torch.nn.utils.parametrize; call "
                "parametrize.remove_parametrizations() before exporting"
            )
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            out[base] = (value * state[base + "_mask"]).detach().cpu()
            continue
        out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return out


def compressible_weight_names(model: nn.Module) -> dict[str, int]:
    """State-dict keys of the Linear/Conv weights, with Han's default index width for each.

    Args:
        model: any module.

    Returns:
        ``{"fc1.weight": 5, "conv1.weight": 8, ...}`` in module order (5 for Linear, 8 for conv).

    Example:
        >>> compressible_weight_names(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)))
        {'0.weight': 8, '1.weight': 5}
    """
    names: dict[str, int] = {}
    for module_name, module in model.named_modules():
        if not _is_compressible(module):
            continue
        if getattr(module, "weight", None) is None and not hasattr(module, "weight_orig"):
            continue
        key = f"{module_name}.weight" if module_name else "weight"
        names[key] = FC_INDEX_BITS if isinstance(module, nn.Linear) else CONV_INDEX_BITS
    return names


def _resolve_bits(
    layers: Mapping[str, LayerInput],
    spec: Mapping[str, int] | int | None,
    defaults: Mapping[str, int] | None,
    what: str,
) -> dict[str, int]:
    """A width for every layer given as a tensor: ``defaults`` (else 5 for 2-D, 8 otherwise),
    overridden by ``spec`` (one int, or a dict by layer name or module name)."""
    result: dict[str, int] = {}
    for name, layer in layers.items():
        if isinstance(layer, torch.Tensor):
            if defaults is not None and name in defaults:
                result[name] = defaults[name]
            else:
                result[name] = default_index_bits(tuple(layer.shape))
    if isinstance(spec, Mapping):
        aliases = {name.removesuffix(".weight"): name for name in layers}
        for key, bits in spec.items():
            target = key if key in layers else aliases.get(key)
            if target is None:
                raise ValueError(f"{what} names unknown layer {key!r}; layers are {list(layers)}")
            result[target] = bits
    elif spec is not None:
        result = dict.fromkeys(result, spec)
    return result


def _resolve_index_bits(
    layers: Mapping[str, LayerInput],
    format: str,
    index_bits: Mapping[str, int] | int | None,
    defaults: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Index width for every layer given as a tensor, or ``{}`` for formats without one."""
    if format not in _INDEXED_FORMATS:
        if index_bits is not None:
            raise ValueError(f"index_bits applies to format='han' or 'compressed' only, got "
                             f"format={format!r}")
        return {}
    return _resolve_bits(layers, index_bits, defaults, "index_bits")


def _resolve_cluster_bits(
    layers: Mapping[str, LayerInput],
    format: str,
    cluster_bits: Mapping[str, int] | int | None,
    defaults: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Codebook width for every layer given as a tensor (``"compressed"``), else ``{}``."""
    if format != "compressed":
        if cluster_bits is not None:
            raise ValueError(f"cluster_bits applies to format='compressed' only, got "
                             f"format={format!r}")
        return {}
    return _resolve_bits(layers, cluster_bits, defaults, "cluster_bits")


def _encode_layer(
    name: str,
    layer: LayerInput,
    format: str,
    bits: int | None,
    cluster_bits: int | None,
    value_dtype: str,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header entry and arrays (by field) of one layer."""
    if isinstance(layer, torch.Tensor):
        if format in _INDEXED_FORMATS and bits is None:
            # _resolve_index_bits gives every tensor layer a width
            raise ValueError(f"no index width resolved for a {format!r} layer")
        if format == "han":
            layer = encode_relative(layer, bits, value_dtype)
        elif format == "compressed":
            if cluster_bits is None:
                raise ValueError("no codebook width resolved for a 'compressed' layer")
            layer = encode_compressed(layer, bits, cluster_bits, name=name)
        elif format == "csr":
            layer = encode_csr(layer, value_dtype)
        else:
            _, torch_dtype = resolve_value_dtype(value_dtype)
            header = {
                "encoding": "dense",
                "shape": list(layer.shape),
                "dtype": weight_dtype_name(layer.dtype),
                "value_dtype": value_dtype,
                "nnz": int(torch.count_nonzero(layer)),
            }
            return header, {"values": layer.detach().cpu().to(torch_dtype).contiguous()}
    if isinstance(layer, RelativeEncoded):
        header = {
            "encoding": "han",
            "shape": list(layer.shape),
            "dtype": layer.dtype,
            "value_dtype": layer.value_dtype,
            "index_bits": layer.index_bits,
            "nnz": layer.nnz,
            "num_entries": layer.num_entries,
            "num_fillers": layer.num_fillers,
        }
        return header, {"values": layer.values, "indices": layer.packed_indices}
    if isinstance(layer, CompressedEncoded):
        header = {
            "encoding": "compressed",
            "shape": list(layer.shape),
            "dtype": layer.dtype,
            "value_dtype": "float32",
            "index_bits": layer.index_bits,
            "cluster_bits": layer.cluster_bits,
            "nnz": layer.nnz,
            "num_entries": layer.num_entries,
            "num_fillers": layer.num_fillers,
            "codebook_size": layer.codebook_size,
            "cluster_nbits": layer.cluster_nbits,
            "gap_nbits": layer.gap_nbits,
        }
        arrays = {
            "codebook": layer.codebook,
            "cluster_code_lengths": layer.cluster_code_lengths,
            "cluster_stream": layer.cluster_stream,
            "gap_code_lengths": layer.gap_code_lengths,
            "gap_stream": layer.gap_stream,
        }
        return header, arrays
    if isinstance(layer, CsrEncoded):
        header = {
            "encoding": "csr",
            "shape": list(layer.shape),
            "dtype": layer.dtype,
            "value_dtype": layer.value_dtype,
            "nnz": layer.nnz,
            "num_entries": layer.nnz,
        }
        arrays = {
            "values": layer.values,
            "col_indices": layer.col_indices,
            "row_ptr": layer.row_ptr,
        }
        return header, arrays
    raise TypeError(
        "a layer must be a torch.Tensor, RelativeEncoded, CsrEncoded or CompressedEncoded, got "
        f"{type(layer).__name__}"
    )


def save_compact(
    path: str | os.PathLike[str],
    layers: Mapping[str, LayerInput],
    *,
    format: CompactFormat = "han",
    index_bits: Mapping[str, int] | int | None = None,
    cluster_bits: Mapping[str, int] | int | None = None,
    value_dtype: str | torch.dtype = "float32",
    other_tensors: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
    order: list[str] | None = None,
) -> Path:
    """Write compressed layers plus dense tensors to one safetensors file, atomically.

    Args:
        path: destination file; written via a temporary file in the same directory, fsync'd and
            moved into place with ``os.replace`` (a reader never sees a half-written file).
        layers: layer name -> dense weight (encoded with ``format``) or an already encoded
            :class:`RelativeEncoded` / :class:`CsrEncoded` / :class:`CompressedEncoded`
            (stored in its own encoding).
        format: ``"han"`` (relative indices), ``"csr"``, ``"dense"`` or ``"compressed"``
            (Deep Compression: codebook, Huffman-coded cluster indices and relative indices;
            every layer given as a tensor must already be weight-shared).
        index_bits: ``"han"`` and ``"compressed"`` only: one width for all layers, or a dict
            by layer name (a name without its ``".weight"`` suffix is accepted too); layers not
            named get 5 bits if 2-D, 8 otherwise.
        cluster_bits: ``"compressed"`` only: a layer may have at most ``2**cluster_bits``
            distinct nonzero values; an int or a dict as ``index_bits``; default 5 bits if 2-D,
            8 otherwise (Deep Compression's 32 shared weights for FC, 256 for conv).
        value_dtype: dtype of stored values of layers given as tensors (``"compressed"``:
            ``"float32"`` only, the codebook's dtype).
        other_tensors: tensors stored as they are (biases, BatchNorm state, ...).
        metadata: a JSON-serialisable dict (model name, constructor kwargs, ...) stored unchanged
            and returned by :func:`load_compact`.
        order: key order that :func:`load_compact` returns; default layers then other tensors.

    Returns:
        The path written.

    Raises:
        ValueError: unknown format/value dtype, bad index widths, ``index_bits`` with a format
            other than ``"han"``/``"compressed"``, clashing names, or an ``order`` that does not
            list every name.
        prunelab.export.CodebookSizeError: (a ``ValueError``) ``"compressed"`` layers with more
            distinct nonzero values than their codebook holds, all named in one message.
        TypeError: a layer of an unsupported type or metadata that JSON cannot serialise.

    Example:
        >>> import tempfile, os
        >>> w = torch.zeros(4, 40); w[0, 3] = 1.0
        >>> p = save_compact(os.path.join(tempfile.mkdtemp(), "m.safetensors"), {"fc.weight": w})
        >>> torch.equal(load_compact(p)[0]["fc.weight"], w)
        True
    """
    _check_format(format)
    value_name, _ = resolve_value_dtype(value_dtype)
    if format == "compressed" and value_name != "float32":
        raise ValueError(f"format='compressed' stores float32 codebooks; value_dtype="
                         f"{value_name!r} does not apply (use 'float32')")
    other_tensors = dict(other_tensors or {})
    metadata = dict(metadata or {})
    bits_by_layer = _resolve_index_bits(layers, format, index_bits)
    cluster_by_layer = _resolve_cluster_bits(layers, format, cluster_bits)

    clash = set(layers) & set(other_tensors)
    if clash:
        raise ValueError(f"names given both as layers and other_tensors: {sorted(clash)}")
    all_names = [*layers, *other_tensors]
    if order is None:
        order = all_names
    elif sorted(order) != sorted(all_names):
        raise ValueError("order must list every layer and other tensor exactly once")

    tensors: dict[str, torch.Tensor] = {}
    layer_headers: dict[str, dict[str, Any]] = {}
    too_many: list[tuple[str, int, int]] = []
    for name, layer in layers.items():
        try:
            header, arrays = _encode_layer(name, layer, format, bits_by_layer.get(name),
                                           cluster_by_layer.get(name), value_name)
        except CodebookSizeError as exc:  # go on, to name every such layer in one error
            too_many.extend(exc.layers)
            continue
        layer_headers[name] = header
        for field, array in arrays.items():
            tensors[f"{name}/{field}"] = array
    if too_many:
        raise CodebookSizeError(too_many)
    tensor_headers: dict[str, dict[str, Any]] = {}
    for name, tensor in other_tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"other_tensors[{name!r}] must be a torch.Tensor")
        if name in tensors:
            raise ValueError(f"other tensor name {name!r} clashes with a layer array key")
        tensors[name] = tensor
        tensor_headers[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype)}

    header = {
        "magic": _MAGIC,
        "format_version": FORMAT_VERSION,
        "format": format,
        "layers": layer_headers,
        "tensors": tensor_headers,
        "order": order,
        "metadata": metadata,
    }
    try:
        header_json = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc

    # Own, contiguous CPU copies: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path = Path(path)
    write_safetensors_atomic(path, tensors, {METADATA_KEY: header_json,
                                             DIGEST_KEY: content_digest(tensors, header_json)})
    return path


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: CompactFormat = "han",
    index_bits: Mapping[str, int] | int | None = None,
    cluster_bits: Mapping[str, int] | int | None = None,
    value_dtype: str | torch.dtype = "float32",
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export a (possibly pruned) model: Linear/Conv weights compressed, the rest dense.

    Each Linear/Conv weight is the *effective* weight, ``weight_orig * weight_mask`` for a module
    pruned with ``torch.nn.utils.prune``, so the file reproduces the pruned model exactly. All
    other state (biases, BatchNorm parameters and buffers, ...) is stored dense under its usual
    state_dict name, masks resolved the same way. :func:`load_compact` then returns a plain
    state dict that ``load_state_dict`` of a fresh, unpruned model of the same class accepts.

    Args:
        model: the model.
        path: destination file (written atomically).
        format: ``"han"``, ``"csr"``, ``"dense"`` (plain tensors in ``value_dtype``) or
            ``"compressed"`` (Deep Compression; the model must be weight-shared).
        index_bits: ``"han"`` and ``"compressed"`` only; default 5 for Linear and 8 for Conv
            weights; an int for all, or a dict by weight key (``"fc1.weight"``) or module name
            (``"fc1"``).
        cluster_bits: ``"compressed"`` only: at most ``2**cluster_bits`` distinct nonzero
            values per layer; default 5 for Linear and 8 for Conv weights; an int or a dict.
        value_dtype: ``"float32"`` (lossless), ``"float16"`` or ``"bfloat16"``.
        metadata: JSON-serialisable dict stored unchanged (model name, constructor kwargs, ...).

    Returns:
        The path written.

    Raises:
        ValueError, TypeError: as :func:`save_compact` (a
            :class:`~prunelab.export.CodebookSizeError` names every layer that is not
            weight-shared enough for ``"compressed"``).

    Example:
        >>> import tempfile, os
        >>> from torch.nn.utils import prune
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> _ = prune.l1_unstructured(net[0], "weight", amount=0.5)
        >>> p = export_model(net, os.path.join(tempfile.mkdtemp(), "net.safetensors"))
        >>> state, meta = load_compact(p)
        >>> nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).load_state_dict(state)
        <All keys matched successfully>
    """
    _check_format(format)
    state = effective_state_dict(model)
    defaults = compressible_weight_names(model)
    layers = {name: state[name] for name in defaults if name in state}
    other = {k: v for k, v in state.items() if k not in layers}
    non_tensors = [k for k, v in other.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise TypeError(f"state entries that are not tensors cannot be exported: {non_tensors}")
    bits = _resolve_index_bits(layers, format, index_bits, defaults)
    clusters = _resolve_cluster_bits(layers, format, cluster_bits, defaults)
    return save_compact(
        path,
        layers,
        format=format,
        index_bits=bits or None,
        cluster_bits=clusters or None,
        value_dtype=value_dtype,
        other_tensors=other,
        metadata=metadata,
        order=list(state),
    )


def _fail(path: Path, message: str) -> ExportFormatError:
    return ExportFormatError(f"{path}: {message}")


def _parse_header(path: Path, file_metadata: Mapping[str, str] | None) -> dict[str, Any]:
    if not file_metadata or METADATA_KEY not in file_metadata:
        raise _fail(
            path,
            f"is a safetensors file but not a prunelab compact file (no {METADATA_KEY!r} "
            "entry in its __metadata__)",
        )
    try:
        header = json.loads(file_metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise _fail(path, f"the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("magic") != _MAGIC:
        raise _fail(path, f"the {METADATA_KEY!r} metadata is not a prunelab compact header")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"format_version {version} is newer than this prunelab reads ({FORMAT_VERSION}); "
            "upgrade prunelab",
        )
    for field, kind in (("layers", dict), ("tensors", dict), ("order", list), ("metadata", dict)):
        if not isinstance(header.get(field), kind):
            raise _fail(path, f"header field {field!r} is missing or not a {kind.__name__}")
    return header


def read_compact_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed JSON header of a compact file, without reading any array.

    Args:
        path: a file written by :func:`save_compact` / :func:`export_model`.

    Returns:
        The header dict (format, format_version, per-layer info, caller metadata, ...).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ExportFormatError: if it is not a safetensors file or not a prunelab compact file.

    Example:
        >>> import tempfile, os
        >>> p = save_compact(os.path.join(tempfile.mkdtemp(), "m.safetensors"),
        ...                  {"w": torch.eye(3)}, format="csr")
        >>> read_compact_header(p)["layers"]["w"]["nnz"]
        3
    """
    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return _parse_header(path, handle.metadata())
    except SafetensorError as exc:
        raise _fail(path, f"is not a readable safetensors file ({exc})") from exc


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise _fail(path, "is not a regular file")
    return path


def _layer_from_arrays(
    path: Path, name: str, info: Mapping[str, Any], arrays: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Decode one layer, turning any inconsistency into an error that names it."""
    try:
        encoding = info["encoding"]
        shape = tuple(int(s) for s in info["shape"])
        dtype = str(info["dtype"])
        value_dtype = str(info["value_dtype"])
        weight_dtype_from_name(dtype)
        _, value_torch_dtype = resolve_value_dtype(value_dtype)
        if encoding == "han":
            bits = int(info["index_bits"])
            entries = int(info["num_entries"])
            if arrays["values"].shape != (entries,):
                raise ValueError(
                    f"{entries} entries declared but 'values' has shape "
                    f"{tuple(arrays['values'].shape)}"
                )
            expected = packed_nbytes(entries, bits)
            if arrays["indices"].shape != (expected,):
                raise ValueError(
                    f"'indices' has shape {tuple(arrays['indices'].shape)}, expected ({expected},) "
                    f"for {entries} entries of {bits} bits"
                )
            dense = decode_relative(
                RelativeEncoded(
                    values=arrays["values"],
                    packed_indices=arrays["indices"],
                    num_entries=entries,
                    num_fillers=int(info["num_fillers"]),
                    shape=shape,
                    index_bits=bits,
                    value_dtype=value_dtype,
                    dtype=dtype,
                )
            )
        elif encoding == "csr":
            dense = decode_csr(
                CsrEncoded(
                    values=arrays["values"],
                    col_indices=arrays["col_indices"],
                    row_ptr=arrays["row_ptr"],
                    shape=shape,
                    value_dtype=value_dtype,
                    dtype=dtype,
                )
            )
        elif encoding == "compressed":
            dense = _compressed_from_arrays(info, shape, dtype, value_dtype, arrays)
        elif encoding == "dense":
            values = arrays["values"]
            if tuple(values.shape) != shape or values.dtype != value_torch_dtype:
                raise ValueError(
                    f"'values' is {values.dtype} {tuple(values.shape)}, expected "
                    f"{value_torch_dtype} {shape}"
                )
            dense = values.to(weight_dtype_from_name(dtype))
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        if "nnz" in info and int(torch.count_nonzero(dense)) > int(info["nnz"]):
            raise ValueError(f"more nonzeros than the {info['nnz']} declared")
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"layer {name!r} is corrupt or inconsistent: {exc}") from exc
    return dense


def _header_int(info: Mapping[str, Any], key: str, low: int, high: int) -> int:
    """An integer header field in ``[low, high]`` (no bools, floats or strings)."""
    value = info[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}={short_repr(value)} is not an integer in [{low}, {high}]")
    return value


def _compressed_from_arrays(
    info: Mapping[str, Any],
    shape: tuple[int, ...],
    dtype: str,
    value_dtype: str,
    arrays: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Decode a ``"compressed"`` layer; the header's counts must match its arrays."""
    if value_dtype != "float32":
        raise ValueError(f"value_dtype {value_dtype!r}, expected 'float32' (the codebook's)")
    codebook = arrays["codebook"]
    size = _header_int(info, "codebook_size", 0, 1 << MAX_CLUSTER_BITS)
    if tuple(codebook.shape) != (size,):
        raise ValueError(f"{size} codebook values declared but 'codebook' has shape "
                         f"{tuple(codebook.shape)}")
    streams = {}
    for field in ("cluster", "gap"):
        nbits = _header_int(info, f"{field}_nbits", 0, 1 << 62)
        stream = arrays[f"{field}_stream"]
        if tuple(stream.shape) != ((nbits + 7) // 8,):
            raise ValueError(f"'{field}_stream' has shape {tuple(stream.shape)}, expected "
                             f"({(nbits + 7) // 8},) for {nbits} bits")
        streams[field] = nbits
    entries = _header_int(info, "num_entries", 0, 1 << 62)
    fillers = _header_int(info, "num_fillers", 0, entries)
    if "nnz" in info and _header_int(info, "nnz", 0, entries) != entries - fillers:
        raise ValueError(f"nnz={info['nnz']} but {entries} entries with {fillers} fillers")
    return decode_compressed(
        CompressedEncoded(
            codebook=codebook,
            cluster_code_lengths=arrays["cluster_code_lengths"],
            cluster_stream=arrays["cluster_stream"],
            cluster_nbits=streams["cluster"],
            gap_code_lengths=arrays["gap_code_lengths"],
            gap_stream=arrays["gap_stream"],
            gap_nbits=streams["gap"],
            num_entries=entries,
            num_fillers=fillers,
            shape=shape,
            index_bits=_header_int(info, "index_bits", 1, MAX_INDEX_BITS),
            cluster_bits=_header_int(info, "cluster_bits", 1, MAX_CLUSTER_BITS),
            dtype=dtype,
        )
    )


def _check_claimed_sizes(path: Path, layers: Mapping[str, Any]) -> None:
    """Refuse a header whose layers would decode to more memory than allowed, before any
    of them is decoded (a header can claim any shape)."""
    total = 0
    for name, info in layers.items():
        if not isinstance(info, dict):
            raise _fail(path, f"layer {short_repr(name)} has no description")
        try:
            itemsize = weight_dtype_from_name(str(info.get("dtype"))).itemsize
        except (ValueError, TypeError, KeyError):
            raise _fail(path, f"layer {short_repr(name)} has unknown dtype "
                        f"{short_repr(info.get('dtype'))}") from None
        total += check_elements(info.get("shape"), f"layer {short_repr(name)}", str(path),
                                ExportFormatError) * itemsize
    limit = max_decoded_bytes()
    if total > limit:
        raise _fail(
            path,
            f"its layers claim {total / 2**30:,.1f} GiB once decoded, more than the "
            f"{limit / 2**30:,.1f} GiB allowed (PRUNELAB_MAX_DECODED_BYTES); the header is "
            "corrupt or the model too large for this machine",
        )


def load_compact(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a compact file back into a plain, dense state dict.

    Args:
        path: a file written by :func:`save_compact` / :func:`export_model`.

    Returns:
        ``(state, metadata)``: ``state`` maps every stored name to a dense CPU tensor (layers
        decoded to their original dtype, other tensors as stored) in the order they were saved;
        ``metadata`` is the caller's dict as passed to the writer (after a JSON round trip).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ExportFormatError: (a ``ValueError``) naming the path when the file is not safetensors,
            is a foreign safetensors file, has an unknown format version, or misses or has
            inconsistent arrays (truncated, corrupted; the message names the layer).

    Example:
        >>> import tempfile, os
        >>> w = torch.tensor([[0.0, 0.5], [0.0, 0.0]])
        >>> p = save_compact(os.path.join(tempfile.mkdtemp(), "m.safetensors"), {"fc.weight": w},
        ...                  index_bits=2, metadata={"model": "toy"})
        >>> state, meta = load_compact(p)
        >>> torch.equal(state["fc.weight"], w), meta
        (True, {'model': 'toy'})
    """
    path = _existing_file(path)
    try:
        return _load_compact(path)
    except ExportFormatError:
        raise
    except (TypeError, KeyError, ValueError, IndexError, AttributeError, RuntimeError,
            OverflowError, RecursionError) as exc:  # any other inconsistency of the header
        raise _fail(path, f"is corrupt or inconsistent ({type(exc).__name__}: "
                    f"{one_line(str(exc), 160)})") from None


def _load_compact(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            file_metadata = handle.metadata()
            header = _parse_header(path, file_metadata)
            keys = set(handle.keys())
            raw = {k: handle.get_tensor(k) for k in keys}  # bounded by the file's own size
            layers: dict[str, torch.Tensor] = {}
            expected_keys: set[str] = set()
            _check_claimed_sizes(path, header["layers"])
            extra = set(file_metadata or {}) - {METADATA_KEY, DIGEST_KEY}
            if extra:
                raise _fail(path, f"has unknown header entries {short_repr(sorted(extra))}; it "
                            "is corrupt or not written by prunelab")
            digest = (file_metadata or {}).get(DIGEST_KEY)
            if digest is not None and content_digest(raw, file_metadata[METADATA_KEY]) != digest:
                raise _fail(path, "fails its SHA-256 check: its arrays or header changed after "
                            "it was written (a corrupt copy or an edited file)")
            for name, info in header["layers"].items():
                encoding = info.get("encoding") if isinstance(info, dict) else None
                if encoding not in _FIELDS:
                    raise _fail(path, f"layer {name!r} has unknown encoding {short_repr(encoding)}")
                arrays: dict[str, torch.Tensor] = {}
                for field in _FIELDS[encoding]:
                    key = f"{name}/{field}"
                    if key not in keys:
                        raise _fail(path, f"layer {name!r} is missing its array {key!r}")
                    arrays[field] = raw[key]
                    expected_keys.add(key)
                layers[name] = _layer_from_arrays(path, name, info, arrays)
            others: dict[str, torch.Tensor] = {}
            for name, info in header["tensors"].items():
                if name not in keys:
                    raise _fail(path, f"tensor {name!r} is declared but missing")
                tensor = raw[name]
                if not isinstance(info, dict) or (
                    list(tensor.shape) != info.get("shape")
                    or str(tensor.dtype) != info.get("dtype")
                ):
                    raise _fail(path, f"tensor {name!r} does not match its declared shape/dtype")
                others[name] = tensor
                expected_keys.add(name)
    except SafetensorError as exc:
        raise _fail(path, f"is not a readable safetensors file ({exc})") from exc
    unexpected = keys - expected_keys
    if unexpected:
        raise _fail(path, f"holds tensors its header does not declare: {sorted(unexpected)[:5]}")
    merged = {**layers, **others}
    order = header["order"]
    if sorted(order) != sorted(merged):
        raise _fail(path, "header 'order' does not list exactly the stored names")
    return {name: merged[name] for name in order}, header["metadata"]
