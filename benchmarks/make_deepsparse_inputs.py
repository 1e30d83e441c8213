"""Write the ONNX files (and reference ``.npz`` pairs) that ``bench_deepsparse.py`` times.

Run with the project's environment (torch, prunelab and its ``onnx`` extra)::

    PYTHONPATH=src .venv/bin/python benchmarks/make_deepsparse_inputs.py --out DIR

and then time them with the separate DeepSparse virtualenv (see ``bench_deepsparse.py``)::

    /tmp/dsvenv/bin/python benchmarks/bench_deepsparse.py --models DIR --json out.json

What is written into ``DIR`` (one ``<stem>.onnx`` and ``<stem>.npz`` each):

* one single ``nn.Linear`` per FC layer of ``PAPER_LAYERS`` in ``bench_sparse_inference.py``
  (``alexnet_fc6`` ... ``vgg16_fc8``), its weight built exactly as that benchmark builds it,
  ``_masked_linear_weight(in_f, out_f, density, seed + li)`` (random mask at the paper's
  density, exact zeros), example input ``(1, in_features)``;
* the two committed pruned LeNets, ``lenet300`` and ``lenet5``
  (``benchmarks/results/han2015-lenet{300,5}/model.safetensors``), pruning made permanent,
  example input ``(1, 1, 28, 28)``.

Every file is exported with :func:`prunelab.export.export_onnx`: a single input ``input``
whose first dimension is a dynamic batch, a single output ``output``. DeepSparse 1.8 embeds
ONNX Runtime 1.15.1, which rejects the files torch 2.14's exporter writes by default (opset
20, IR version 10: "Unsupported model IR version: 10, max supported IR version: 9"), so the
files are exported at ``--opset 18`` (the exporter's lowest native opset; 17 and below go
through ONNX's version converter) and their IR version is then lowered to ``--ir-version 9``
(the graphs use nothing newer; ``onnx.checker`` checks the result). The ``.npz`` holds a
seeded batch-1 ``input`` and torch's ``output`` for it, float32, for checking other runtimes.
The dense layer files are large (VGG-16 fc6 is 25088 x 4096 float32, about 411 MB; all six
layers together about 0.73 GB): ONNX stores the pruned weights densely, zeros included.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from prunelab.export import export_onnx
from prunelab.modelfile import load_model_file
from prunelab.runtime import deepcopy_pruned, make_pruning_permanent

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_sparse_inference import PAPER_LAYERS, _masked_linear_weight  # noqa: E402

LENETS = {
    "lenet300": HERE / "results" / "han2015-lenet300" / "model.safetensors",
    "lenet5": HERE / "results" / "han2015-lenet5" / "model.safetensors",
}
LENET_INPUT = (1, 1, 28, 28)
REFERENCE_SEED = 1234  # of the .npz reference input, torch.rand (uniform [0, 1))
Built = tuple[str, nn.Module, tuple[int, ...]]  # (file stem, eval-mode model, input shape)


def layer_stem(name: str) -> str:
    """``"AlexNet fc6"`` -> ``"alexnet_fc6"``, ``"VGG-16 fc7"`` -> ``"vgg16_fc7"``."""
    net, layer = name.split()
    return f"{net.lower().replace('-', '')}_{layer.lower()}"


def paper_layer(li: int, seed: int) -> Built:
    """The ``li``-th ``PAPER_LAYERS`` entry as an eval-mode ``nn.Linear`` (masked weights)."""
    name, in_f, out_f, density, _ = PAPER_LAYERS[li]
    w, b = _masked_linear_weight(in_f, out_f, density, seed + li)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return layer_stem(name), lin.eval(), (1, in_f)


def lenet(stem: str) -> Built:
    """A committed pruned LeNet with its pruning made permanent (plain dense weights)."""
    model, _ = load_model_file(LENETS[stem])
    model = make_pruning_permanent(deepcopy_pruned(model)).eval()
    return stem, model, LENET_INPUT


def lower_ir_version(path: Path, ir_version: int) -> tuple[int, int]:
    """Rewrite ``path`` with IR version ``ir_version`` (checked, atomic); (IR, opset) in it."""
    proto = onnx.load(str(path))
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if proto.ir_version <= ir_version:
        return proto.ir_version, opset
    proto.ir_version = ir_version
    onnx.checker.check_model(proto)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return ir_version, opset


def write(
    stem: str,
    model: nn.Module,
    shape: tuple[int, ...],
    out: Path,
    *,
    seed: int,
    opset: int,
    ir_version: int,
) -> str:
    """Export ``model`` to ``out/<stem>.onnx`` and a batch-1 reference pair to ``<stem>.npz``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    with torch.no_grad():
        y = model(x)
    path = out / f"{stem}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, path, x, opset=opset)
    ir, opset = lower_ir_version(path, ir_version)
    npz = out / f"{stem}.npz"
    tmp = out / f".{stem}.tmp.npz"
    np.savez(tmp, input=x.numpy().astype(np.float32), output=y.numpy().astype(np.float32))
    tmp.replace(npz)
    w = [p for n, p in model.named_parameters() if n.endswith("weight")]
    zeros = sum(int((p == 0).sum()) for p in w) / max(1, sum(p.numel() for p in w))
    mb = path.stat().st_size / 1e6
    return (
        f"{path.name}: input {list(shape)}, weight sparsity {zeros:.1%}, {mb:.1f} MB, "
        f"opset {opset}, IR {ir}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory to write into")
    p.add_argument("--seed", type=int, default=0, help="layer-weight seed (benchmark's: 0)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (DeepSparse 1.8: <= 19)")
    p.add_argument("--ir-version", type=int, default=9, help="ONNX IR version (DeepSparse: <= 9)")
    p.add_argument(
        "--only", default="", help="comma-separated stems to write (default: all), e.g. lenet5"
    )
    args = p.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    jobs: list[tuple[str, Callable[[], Built]]] = [
        (layer_stem(ly[0]), lambda li=li: paper_layer(li, args.seed))
        for li, ly in enumerate(PAPER_LAYERS)
    ]
    jobs += [(s, lambda s=s: lenet(s)) for s in LENETS]
    known = {s for s, _ in jobs}
    if only - known:
        p.error(f"unknown stems {sorted(only - known)}; known: {sorted(known)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, build in jobs:
        if only and stem not in only:
            continue
        name, model, shape = build()
        line = write(
            name,
            model,
            shape,
            args.out,
            seed=REFERENCE_SEED,
            opset=args.opset,
            ir_version=args.ir_version,
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
