"""``prunelab export``: write a saved model in a compact format and print its size table, or
as an ONNX graph with its effective (masked) weights (``--format onnx``).

``--format compressed`` is Deep Compression's storage (codebooks, Huffman-coded cluster indices
and relative indices); it needs a weight-shared model, and prints the per-layer table, the
stages (pruning, weight sharing, Huffman coding) and, for the LeNets, the paper's figures beside
ours."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["parse_bits", "parse_index_bits", "register"]


def parse_bits(
    text: str | None, flag: str = "--index-bits", high: int = 16
) -> int | dict[str, int] | None:
    """Parse a width option: ``"5"`` for every layer, or ``"fc=5,conv=8,conv1=6"``.

    ``fc`` and ``conv`` set a kind; other keys name layers.

    Args:
        text: the option's value (``None``: not given).
        flag: the option's name, for messages.
        high: the widest width allowed.

    Raises:
        ValueError: not of that form, or a width outside ``1..high``.

    Example:
        >>> parse_bits("fc=4,conv=8", "--cluster-bits", 15)
        {'fc': 4, 'conv': 8}
    """
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        bits = int(text)
        if not 1 <= bits <= high:
            raise ValueError(f"{flag} {bits} is out of range; allowed: 1..{high}")
        return bits
    out: dict[str, int] = {}
    for part in text.split(","):
        key, sep, val = part.partition("=")
        if not sep or not val.strip().isdigit():
            raise ValueError(
                f"{flag} part {part!r} is not KEY=BITS; use e.g. 'fc=5,conv=8' or '5'"
            )
        bits = int(val)
        if not 1 <= bits <= high:
            raise ValueError(f"{flag} {key}={bits} is out of range; allowed: 1..{high}")
        out[key.strip()] = bits
    return out


def parse_index_bits(text: str | None) -> int | dict[str, int] | None:
    """Parse ``--index-bits``: ``"5"`` for every layer, or ``"fc=5,conv=8,conv1=6"``.

    ``fc`` and ``conv`` set a kind; other keys name layers.

    Raises:
        ValueError: not of that form, or a width outside 1..16.

    Example:
        >>> parse_index_bits("fc=4,conv=8")
        {'fc': 4, 'conv': 8}
    """
    return parse_bits(text, "--index-bits", 16)


def resolve_index_bits(
    model: object, spec: int | dict[str, int] | None, flag: str = "--index-bits"
) -> int | dict | None:
    """Expand ``fc``/``conv`` keys of a parsed width option (``--index-bits``,
    ``--cluster-bits``: both default to 5 for FC and 8 for conv) to per-layer widths."""
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
            f"{flag} names unknown layers {unknown}; layers are: {', '.join(layers)}"
        )
    del nn
    return out


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    import torch

    from ..export import effective_state_dict
    from ..export.onnx import (
        BATCH_DIM,
        check_onnx,
        export_onnx,
        input_shape_from_metadata,
        parse_input_shape,
        require_onnx,
    )
    from ..modelfile import load_any_model

    if args.index_bits is not None or args.value_dtype != "float32":
        raise ValueError("--index-bits and --value-dtype do not apply to --format onnx "
                         "(its weights are float32 dense initializers)")
    if args.cluster_bits is not None:
        raise ValueError("--cluster-bits applies to --format compressed only, not 'onnx'")
    require_onnx("onnx", "onnxscript", *(("onnxruntime",) if args.check else ()))
    model, meta = load_any_model(args.model_file, allow_import=args.allow_import)
    if args.input_shape is not None:
        shape = parse_input_shape(args.input_shape)
    else:
        shape = input_shape_from_metadata(meta)
        if shape is None:
            raise ValueError(f"{str(args.model_file)!r} does not record its input shape; "
                             "give one with --input-shape, e.g. --input-shape 1,3,224,224")
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=gen)
    out = export_onnx(model, args.out, example, opset=args.opset)
    params = {n for n, _ in model.named_parameters()}
    state = effective_state_dict(model)
    kept = [t for k, t in state.items() if k in params or f"{k}_orig" in params]
    nonzero, total = sum(int(t.count_nonzero()) for t in kept), sum(t.numel() for t in kept)
    print(f"wrote {out} ({Path(out).stat().st_size:,} bytes; opset {args.opset}; input "
          f"{'x'.join(map(str, shape))}, batch dimension {BATCH_DIM!r} dynamic; "
          f"{nonzero:,} of {total:,} parameters nonzero, pruned ones exact zeros)")
    if args.check:
        diffs = []
        for batch in (shape[0], 64):
            x = torch.randn((batch, *shape[1:]), generator=gen)
            diffs.append(check_onnx(out, model, x))
        print(f"check: max abs difference onnxruntime vs torch: {max(diffs):.3g} "
              f"(batch {shape[0]} and 64)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..export import (
        compressed_size_table,
        export_model,
        format_compressed_size_table_markdown,
        format_deep_compression_comparison,
        format_size_table_markdown,
        size_table,
    )
    from ..export.compressed import MAX_CLUSTER_BITS
    from ..modelfile import load_any_model

    if args.format == "onnx":
        return _cmd_export_onnx(args)
    for flag, value in (("--input-shape", args.input_shape), ("--check", args.check or None)):
        if value is not None:
            raise ValueError(f"{flag} applies to --format onnx only, not {args.format!r}")
    if args.format != "compressed" and args.cluster_bits is not None:
        raise ValueError(f"--cluster-bits applies to --format compressed only, not "
                         f"{args.format!r}")
    if args.format == "compressed" and args.value_dtype != "float32":
        raise ValueError("--value-dtype does not apply to --format compressed (its codebooks "
                         "are float32)")
    if args.format not in ("han", "compressed") and args.index_bits is not None:
        raise ValueError(f"--index-bits applies to --format han and compressed only, not "
                         f"{args.format!r}")
    model, meta = load_any_model(args.model_file, allow_import=args.allow_import)
    bits = resolve_index_bits(model, parse_index_bits(args.index_bits))
    clusters = resolve_index_bits(
        model, parse_bits(args.cluster_bits, "--cluster-bits", MAX_CLUSTER_BITS), "--cluster-bits"
    )
    info = {"kind": "export", "model": meta["model"], "dataset": meta.get("dataset", {}),
            "source": str(args.model_file)}
    out = export_model(model, args.out, format=args.format, index_bits=bits,
                       cluster_bits=clusters, value_dtype=args.value_dtype, metadata=info)
    console = Console()
    if args.format == "compressed":
        table = compressed_size_table(model, index_bits=bits, cluster_bits=clusters)
        text = format_compressed_size_table_markdown(table)
        comparison = format_deep_compression_comparison(table, str(meta["model"].get("name")))
        if comparison is not None:
            text += "\n" + comparison
    else:
        rows = size_table(model, args.format, index_bits=bits, value_dtype=args.value_dtype)
        text = format_size_table_markdown(rows)
    # Markdown to paste as it is: no wrapping at the terminal's width, no markup
    console.print(text, soft_wrap=True, markup=False)
    size = Path(out).stat().st_size
    console.print(f"wrote {out} ({size:,} bytes on disk, header included)", soft_wrap=True,
                  markup=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``prunelab`` command."""
    p = sub.add_parser(
        "export",
        help="write a model in a compact format (han, csr, dense, compressed) or as ONNX",
        description="Export a saved model: Han's relative-index format (5-bit FC / 8-bit conv "
        "indices by default), CSR with int32 indices, dense, or compressed (Deep Compression: "
        "a float32 codebook per layer, Huffman-coded codebook indices and relative indices; "
        "the model must be weight-shared, at most 2**cluster-bits distinct values per layer); "
        "`prunelab evaluate` loads the "
        "result and gives the same test error. --format onnx writes an ONNX graph (torch's "
        "dynamo exporter) with the masks folded into dense weights and a dynamic batch size; "
        "it needs `pip install 'prunelab[onnx]'`.",
    )
    p.add_argument("model_file", help="model file (model.safetensors)")
    p.add_argument("--format", choices=("han", "csr", "dense", "compressed", "onnx"),
                   default="han")
    p.add_argument("--index-bits", help="han and compressed: relative-index width, '5' or "
                   "'fc=5,conv=8' (the default) or per layer 'fc1=4'")
    p.add_argument("--cluster-bits", help="compressed only: at most 2**BITS distinct values "
                   "(codebook entries) per layer, '5' or 'fc=5,conv=8' (the default, as in Deep "
                   "Compression) or per layer 'fc1=4'")
    p.add_argument("--value-dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--out", required=True, help="output file (.safetensors; .onnx for onnx)")
    p.add_argument("--input-shape", help="onnx only: example input shape, batch first, e.g. "
                   "'1,1,28,28' (default: from the model file's dataset)")
    from ..export.onnx import DEFAULT_OPSET

    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"onnx only: ONNX opset version (default {DEFAULT_OPSET})")
    p.add_argument("--check", action="store_true", help="onnx only: run the file with "
                   "onnxruntime at batch 1 and 64 and print the max abs difference from torch")
    from . import add_allow_import

    add_allow_import(p)
    p.set_defaults(func=_cmd_export)
