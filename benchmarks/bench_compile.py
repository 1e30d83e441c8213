"""torch.compile on pruned models: graph breaks, equality with eager, compiled/eager step time.

For LeNet-5 (``build_model("lenet5")``, batch 64 of 28x28) and the small transformer of
``bench_mask_mechanics.py`` (one ``nn.TransformerEncoderLayer``, in_proj/out_proj/FFN/head
pruned), three variants:

* ``dense``: no masks;
* ``pruned``: 50% magnitude masks by ``prunelab.masks.set_mask`` (``module.weight`` is the
  property ``weight_orig * weight_mask``), a plain training loop;
* ``pruned_masked_training``: the same inside ``prunelab.masks.masked_training`` (the
  property returns ``weight_orig``, gradients are masked by a hook, ``after_step`` re-masks).

For each: ``torch._dynamo.explain`` of the training-mode forward (graph count, graph breaks
and their reasons); an eager copy and a ``torch.compile`` (default inductor backend) copy
trained side by side from the same weights for ``--check-steps`` SGD steps (largest loss
difference, and whether pruned entries stayed exactly zero in the compiled copy); then the
time of a training step (zero_grad, forward, cross-entropy, backward, SGD with momentum,
``after_step`` where there is one), eager and compiled sampled interleaved for
``--repeats`` rounds of ``--steps`` steps, as CPU time of the computing thread and as wall
time, medians and minimums, and the ratio of medians compiled/eager; last, how many graphs
the next compiled step compiles after a mask is tightened in place (``set_mask`` on a masked
tensor) and after a new mask (a bias that had none). CPU, ``--threads`` threads. Run it with
a fresh ``TORCHINDUCTOR_CACHE_DIR`` for cold compile times.

Usage:
    python benchmarks/bench_compile.py [--repeats 20] [--steps 10] [--threads 1]
        [--out benchmarks/results/compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_mask_mechanics import (
    bench_models,
    magnitude_mask,
    pruned_tensors,
    results_header,
    run_info,
    run_line,
)
from torch import nn

from prunelab.masks import iter_masks, masked_training, set_mask

VARIANTS = ("dense", "pruned", "pruned_masked_training")


class Trainer:
    """A model (eager or compiled), its optimizer and its masked_training session."""

    def __init__(self, model: nn.Module, variant: str, compiled: bool) -> None:
        self.model = model
        self.fn: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model) if compiled else model
        )
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        self.ctx: AbstractContextManager[Callable[[], None]] = (
            masked_training(model, self.opt) if variant == "pruned_masked_training"
            else nullcontext(lambda: None)
        )
        self.after_step = self.ctx.__enter__()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.fn(x), y)
        loss.backward()
        self.opt.step()
        self.after_step()
        return float(loss.detach())

    def pruned_stay_zero(self) -> bool | None:
        if not list(iter_masks(self.model)):
            return None
        return all(
            torch.count_nonzero(m._parameters[f"{n}_orig"].detach()[mask == 0]) == 0
            for _, m, n, mask in iter_masks(self.model)
        )

    def close(self) -> None:
        self.ctx.__exit__(None, None, None)


def make_variant(base: nn.Module, variant: str) -> nn.Module:
    model = copy.deepcopy(base).train()
    if variant != "dense":
        for module, name in pruned_tensors(model):
            set_mask(module, name, magnitude_mask(module._parameters[name]))
    return model


def explain(model: nn.Module, variant: str, x: torch.Tensor) -> dict[str, object]:
    torch._dynamo.reset()
    ctx = masked_training(model) if variant == "pruned_masked_training" else nullcontext()
    with ctx:
        ex = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    return {
        "graph_count": ex.graph_count,
        "graph_break_count": ex.graph_break_count,
        "break_reasons": [str(b.reason) for b in ex.break_reasons],
        "op_count": ex.op_count,
    }


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def recompiles(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Graphs compiled by a step after a mask tightened in place, then after a new mask."""
    module, name = pruned_tensors(trainer.model)[0]
    out = {}
    before = _graphs()
    set_mask(module, name, magnitude_mask(module._parameters[f"{name}_orig"], 0.75))
    trainer.step(x, y)
    out["graphs_compiled_after_mask_tightened"] = _graphs() - before
    before = _graphs()
    bias = next(m for m in trainer.model.modules()
                if isinstance(m, nn.Linear) and not hasattr(m, "bias_mask"))
    set_mask(bias, "bias", (torch.arange(bias.out_features) % 2).float())
    trainer.step(x, y)
    out["graphs_compiled_after_new_mask"] = _graphs() - before
    return out


def bench_variant(base: nn.Module, variant: str, x: torch.Tensor, y: torch.Tensor,
                  args: argparse.Namespace) -> dict[str, object]:
    model = make_variant(base, variant)
    result: dict[str, object] = {"explain": explain(model, variant, x)}
    eager = Trainer(model, variant, compiled=False)
    compiled = Trainer(copy.deepcopy(model), variant, compiled=True)
    t0 = time.perf_counter()
    first = compiled.step(x, y)  # compiles forward and backward
    result["compile_s"] = time.perf_counter() - t0
    losses = [(eager.step(x, y), first)]
    losses += [(eager.step(x, y), compiled.step(x, y)) for _ in range(args.check_steps - 1)]
    result["losses_eager_compiled"] = losses
    result["max_loss_diff"] = max(abs(a - b) for a, b in losses)
    result["pruned_stay_zero_compiled"] = compiled.pruned_stay_zero()
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("eager_cpu", "compiled_cpu", "eager", "compiled")}
    trainers = {"eager": eager, "compiled": compiled}
    for r in range(args.repeats):
        for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(args.steps):
                trainers[name].step(x, y)
            samples[f"{name}_cpu"].append((time.thread_time() - c0) / args.steps * 1e3)
            samples[name].append((time.perf_counter() - w0) / args.steps * 1e3)
    for name, s in samples.items():
        result[f"{name}_step_ms"] = {"median": statistics.median(s), "min": min(s)}
    for suffix in ("", "_cpu"):
        result[f"compiled_over_eager{suffix}"] = (
            statistics.median(samples[f"compiled{suffix}"])
            / statistics.median(samples[f"eager{suffix}"])
        )
    if variant != "dense":
        result.update(recompiles(compiled, x, y))
    eager.close()
    compiled.close()
    torch._dynamo.reset()
    ex = result["explain"]
    print(f"{variant}: graphs {ex['graph_count']}, breaks {ex['graph_break_count']}, "  # type: ignore[index]
          f"compile {result['compile_s']:.1f} s, max loss diff {result['max_loss_diff']:.2e}, "
          f"compiled/eager {result['compiled_over_eager_cpu']:.3f} (CPU time)")
    return result


def markdown(result: dict[str, object], command: str) -> str:
    lines = [
        *results_header("torch.compile on pruned models", command),
        run_line(result) + ", "
        f"default inductor backend; {result['repeats']} interleaved samples of "
        f"{result['steps']} steps. A step is zero_grad + forward + cross-entropy + backward + "
        "SGD (momentum) step (+ after_step). Times are median [min] ms per step of CPU time "
        "of the computing thread (ratios of medians; the wall-time ratio too). Compile s is "
        "the first compiled step; the command starts from an empty inductor cache, so later "
        "variants reuse kernels compiled for earlier ones. The transformer is slower "
        "compiled than eager on this CPU, dense as well as pruned. See the docstring of "
        "`benchmarks/bench_compile.py`.",
        "",
    ]
    for model, variants in result["models"].items():  # type: ignore[union-attr]
        lines += [
            f"## {model}",
            "",
            "| variant | graphs | breaks | compile s | max loss diff (eager vs compiled, "
            f"{result['check_steps']} steps) | pruned stay 0 | eager CPU ms | compiled CPU ms | "
            "compiled/eager CPU | compiled/eager wall |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v, r in variants.items():
            ex = r["explain"]
            ec, cc = r["eager_cpu_step_ms"], r["compiled_cpu_step_ms"]
            zero = r["pruned_stay_zero_compiled"]
            lines.append(
                f"| {v} | {ex['graph_count']} | {ex['graph_break_count']} | "
                f"{r['compile_s']:.1f} | {r['max_loss_diff']:.2e} | "
                f"{'-' if zero is None else zero} | "
                f"{ec['median']:.3f} [{ec['min']:.3f}] | {cc['median']:.3f} [{cc['min']:.3f}] | "
                f"{r['compiled_over_eager_cpu']:.3f} | {r['compiled_over_eager']:.3f} |"
            )
        lines += ["", "Graphs compiled by the next step after a mask change: " + "; ".join(
            f"{v}: {r['graphs_compiled_after_mask_tightened']} after a mask tightened in "
            f"place, {r['graphs_compiled_after_new_mask']} after a new mask (a bias)"
            for v, r in variants.items() if "graphs_compiled_after_new_mask" in r) + "."]
        reasons = sorted({s for r in variants.values() for s in r["explain"]["break_reasons"]})
        lines += ["", "Graph break reasons: " + ("; ".join(reasons) if reasons else "none."), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = bench_models()
    result: dict[str, object] = {**run_info(args.threads), "repeats": args.repeats,
                                 "steps": args.steps, "check_steps": args.check_steps,
                                 "models": {}}
    for name, (base, x, y) in models.items():
        print(name)
        result["models"][name] = {  # type: ignore[index]
            v: bench_variant(base, v, x, y, args) for v in VARIANTS
        }
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    command = (
        "TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) PYTHONPATH=src python benchmarks/bench_compile.py "
        f"--repeats {args.repeats} --steps {args.steps} --check-steps {args.check_steps} "
        f"--threads {args.threads} --out {args.out}"
    )
    (out / "README.md").write_text(markdown(result, command) + "\n")


if __name__ == "__main__":
    main()
