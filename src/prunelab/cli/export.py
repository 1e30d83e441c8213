"""``prunelab export``: write a saved model in a compact format and print its size table."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["parse_index_bits", "register"]


def parse_index_bits(text: str | None) -> int | dict[str, int] | None:
    """Parse ``--index-bits``: ``"5"`` for every layer, or ``"fc=5,conv=8,conv1=6"``.

    ``fc`` and ``conv`` set a kind; other keys name layers.

    Raises:
        ValueError: not of that form, or a width outside 1..16.

    Example:
        >>> parse_index_bits("fc=4,conv=8")
        {'fc': 4, 'conv': 8}
    """
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        bits = int(text)
        if not 1 <= bits <= 16:
            raise ValueError(f"--index-bits {bits} is out of range; allowed: 1..16")
        return bits
    out: dict[str, int] = {}
    for part in text.split(","):
        key, sep, val = part.partition("=")
        if not sep or not val.strip().isdigit():
            raise ValueError(
                f"--index-bits part {part!r} is not KEY=BITS; use e.g. 'fc=5,conv=8' or '5'"
            )
        bits = int(val)
        if not 1 <= bits <= 16:
            raise ValueError(f"--index-bits {key}={bits} is out of range; allowed: 1..16")
        out[key.strip()] = bits
    return out


def resolve_index_bits(model: object, spec: int | dict[str, int] | None) -> int | dict | None:
    """Expand ``fc``/``conv`` keys of a parsed ``--index-bits`` to per-layer widths."""
    if spec is None or isinstance(spec, int):
        return spec
    from torch import nn

    from ..selection import CONV_TYPES, LINEAR_TYPES

    layers = {n: m for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES + CONV_TYPES)}
    out: dict[str, int] = {}
    for name, module in layers.items():
        kind = "conv" if isinstance(module, CONV_TYPES) else "fc"
        default = 8 if kind == "conv" else 5
        out[name] = spec.get(name, spec.get(kind, default))
    unknown = [k for k in spec if k not in ("fc", "conv") and k not in layers]
    if unknown:
        raise ValueError(
            f"--index-bits names unknown layers {unknown}; layers are: {', '.join(layers)}"
        )
    del nn
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..export import export_model, format_size_table_markdown, size_table
    from ..modelfile import load_any_model

    model, meta = load_any_model(args.model_file, allow_import=args.allow_import)
    bits = resolve_index_bits(model, parse_index_bits(args.index_bits))
    if args.format != "han" and bits is not None:
        raise ValueError(f"--index-bits applies to --format han only, not {args.format!r}")
    info = {"kind": "export", "model": meta["model"], "dataset": meta.get("dataset", {}),
            "source": str(args.model_file)}
    out = export_model(model, args.out, format=args.format, index_bits=bits,
                       value_dtype=args.value_dtype, metadata=info)
    rows = size_table(model, args.format, index_bits=bits, value_dtype=args.value_dtype)
    console = Console()
    console.print(format_size_table_markdown(rows))
    size = Path(out).stat().st_size
    console.print(f"wrote {out} ({size:,} bytes on disk, header included)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``prunelab`` command."""
    p = sub.add_parser(
        "export", help="write a model in a compact format (han, csr, dense)",
        description="Export a saved model: Han's relative-index format (5-bit FC / 8-bit conv "
        "indices by default), CSR with int32 indices, or dense. `prunelab evaluate` loads the "
        "result and gives the same test error.",
    )
    p.add_argument("model_file", help="model file (model.safetensors)")
    p.add_argument("--format", choices=("han", "csr", "dense"), default="han")
    p.add_argument("--index-bits", help="han only: '5' or 'fc=5,conv=8' or per layer 'fc1=4'")
    p.add_argument("--value-dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    from . import add_allow_import

    add_allow_import(p)
    p.set_defaults(func=_cmd_export)
