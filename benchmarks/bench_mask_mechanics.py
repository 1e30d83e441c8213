"""Step time of the ways to enforce a pruning mask, against an unpruned model.

Mechanisms (every pruned tensor at 50% magnitude sparsity):

* ``dense``: no masks (the baseline).
* ``hooks``: (c) ``torch.nn.utils.prune``'s forward pre-hook storing ``orig * mask`` as a
  plain attribute, plus a forward hook detaching it (prunelab before this change).
* ``parametrize``: (a) ``torch.nn.utils.parametrize`` with a module returning ``x * mask``
  (what ``torch.ao.pruning`` does); tensors are renamed ``parametrizations.<name>.original``.
* ``property``: (b) prunelab now: ``<name>`` a class property ``<name>_orig * <name>_mask``.
* ``fast_old``: (c) inside the old ``masked_training``: hooks off, ``module.<name>`` is the
  parameter, ``orig *= mask`` after each step; gradients at pruned entries are *not* zero.
* ``fast``: (b) inside prunelab's ``masked_training``: as ``fast_old`` plus a hook that
  multiplies each gradient by its mask (zero gradients at pruned entries).

Models: ``build_model("lenet5")`` on 28x28 inputs (batch 64), and a small transformer
(``nn.TransformerEncoderLayer`` d_model 64, 4 heads, FFN 256, sequence 32, batch 16, mean pool,
Linear head); for it ``in_proj_weight``, ``out_proj.weight``, both FFN weights and the head are
pruned. One sample is the mean time of ``--steps`` consecutive training steps (zero_grad,
forward, cross-entropy, backward, SGD with momentum, ``after_step`` where there is one);
``fwd_bwd`` is the same up to and including backward. Both are measured as CPU time of the
computing thread (one intra-op thread: the ops and the CPU autograd engine run in the calling
thread), which time spent waiting for a shared core does not inflate, and as wall time. The
mechanisms are sampled interleaved (rotating order, ``--repeats`` rounds) so that machine
noise hits all alike; medians and minimums of the samples are reported, with the ratio of
medians to ``dense``.

Each mechanism is also checked after the timing: ``kept_grad_ok`` (every pruned tensor's
``orig`` got a nonzero gradient at kept entries: false for ``hooks`` on the transformer, whose
``out_proj`` pre-hook never runs) and ``pruned_grad_zero`` (gradient exactly zero at pruned
entries before the optimizer step).

Usage:
    python benchmarks/bench_mask_mechanics.py [--repeats 30] [--steps 10] [--threads 1]
        [--out benchmarks/results/mask_mechanics]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from prunelab.masks import masked_training, set_mask
from prunelab.models import build_model

MECHANISMS = ("dense", "hooks", "parametrize", "property", "fast_old", "fast")


class TinyTransformer(nn.Module):
    """One encoder layer on random features, mean-pooled, linear classifier."""

    def __init__(self, d_model: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def pruned_tensors(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, name) pairs each benchmark prunes."""
    if isinstance(model, TinyTransformer):
        enc = model.encoder
        return [(enc.self_attn, "in_proj_weight"), (enc.self_attn.out_proj, "weight"),
                (enc.linear1, "weight"), (enc.linear2, "weight"), (model.head, "weight")]
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def magnitude_mask(w: torch.Tensor, sparsity: float = 0.5) -> torch.Tensor:
    k = int(sparsity * w.numel())
    threshold = w.detach().abs().flatten().kthvalue(k).values
    return (w.detach().abs() > threshold).to(w.dtype)


class _Detach:
    """The old prunelab forward hook: detach the cached ``orig * mask`` after the forward."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, inputs: object, output: object) -> None:
        value = module.__dict__.get(self.name)
        if torch.is_tensor(value) and value.grad_fn is not None:
            module.__dict__[self.name] = value.detach()


class _MaskParam(nn.Module):
    """``torch.nn.utils.parametrize`` masking (as ``torch.ao.pruning``'s FakeSparsity)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def _old_fast(model: nn.Module) -> Callable[[], None]:
    """The old masked_training: pre-hooks off, ``module.<name>`` is ``<name>_orig``."""
    origs, masks = [], []
    for module in model.modules():
        for k, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                del module._forward_pre_hooks[k]
                name = hook._tensor_name
                module.__dict__[name] = module._parameters[f"{name}_orig"]
                origs.append(module._parameters[f"{name}_orig"])
                masks.append(module._buffers[f"{name}_mask"])
        for k, hook in list(module._forward_hooks.items()):
            if isinstance(hook, _Detach):
                del module._forward_hooks[k]

    def after_step() -> None:
        with torch.no_grad():
            torch._foreach_mul_(origs, masks)

    return after_step


class Setup:
    """One mechanism applied to a copy of the model, with its optimizer and step."""

    def __init__(self, mechanism: str, base: nn.Module) -> None:
        self.mechanism = mechanism
        self.model = copy.deepcopy(base).train()
        self.after_step: Callable[[], None] | None = None
        self.context: AbstractContextManager[Callable[[], None]] | None = None
        pairs = pruned_tensors(self.model)
        self.origs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (raw parameter, mask)
        for module, name in pairs:
            param = module._parameters[name]
            mask = magnitude_mask(param)
            if mechanism == "dense":
                continue
            if mechanism in ("hooks", "fast_old"):
                torch_prune.custom_from_mask(module, name, mask)
                with torch.no_grad():
                    param.mul_(mask)
                module.register_forward_hook(_Detach(name))
                with torch.no_grad():  # the old set_mask's refresh of the cached attribute
                    setattr(module, name, param * module._buffers[f"{name}_mask"])
                mask = module._buffers[f"{name}_mask"]
            elif mechanism == "parametrize":
                with torch.no_grad():
                    param.mul_(mask)
                parametrize.register_parametrization(module, name, _MaskParam(mask),
                                                     unsafe=True)
                mask = getattr(module.parametrizations, name)[0].mask
            else:
                mask = set_mask(module, name, mask)
            self.origs.append((param, mask))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        if mechanism == "fast_old":
            self.after_step = _old_fast(self.model)
        if mechanism == "fast":
            self.context = masked_training(self.model, self.opt)
            self.after_step = self.context.__enter__()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One training step; wall and thread CPU seconds to the end of backward and in all."""
        w0, c0 = time.perf_counter(), time.thread_time()
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        w1, c1 = time.perf_counter(), time.thread_time()
        self.opt.step()
        if self.after_step is not None:
            self.after_step()
        w2, c2 = time.perf_counter(), time.thread_time()
        return {"cpu_step": c2 - c0, "cpu_fwd_bwd": c1 - c0,
                "wall_step": w2 - w0, "wall_fwd_bwd": w1 - w0}

    def checks(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, bool]:
        """Gradient checks of this mechanism (before the optimizer step)."""
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        kept_ok = pruned_zero = True
        for param, mask in self.origs:
            g = param.grad
            if g is None or torch.count_nonzero(g[mask != 0]) == 0:
                kept_ok = False
            elif torch.count_nonzero(g[mask == 0]) != 0:
                pruned_zero = False
        self.opt.zero_grad(set_to_none=True)
        return {"kept_grad_ok": kept_ok, "pruned_grad_zero": pruned_zero and kept_ok}

    def close(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)


def bench_model(name: str, base: nn.Module, x: torch.Tensor, y: torch.Tensor,
                repeats: int, steps: int) -> dict[str, object]:
    setups = {m: Setup(m, base) for m in MECHANISMS}
    for s in setups.values():  # warm-up: allocator, kernels, optimizer state
        for _ in range(3):
            s.step(x, y)
    metrics = ("cpu_step", "cpu_fwd_bwd", "wall_step", "wall_fwd_bwd")
    samples: dict[str, dict[str, list[float]]] = {
        m: {k: [] for k in metrics} for m in MECHANISMS
    }
    names = list(MECHANISMS)
    for r in range(repeats):
        shift = r % len(names)
        for m in names[shift:] + names[:shift]:
            times = [setups[m].step(x, y) for _ in range(steps)]
            for k in metrics:
                samples[m][k].append(sum(t[k] for t in times) / steps * 1e3)
    dense = {k: statistics.median(samples["dense"][k]) for k in metrics}
    mechanisms = {}
    for m in MECHANISMS:
        row: dict[str, object] = {}
        for k in metrics:
            med = statistics.median(samples[m][k])
            row[f"{k}_ms"] = {"median": med, "min": min(samples[m][k]),
                              "ratio_to_dense": med / dense[k]}
        if m != "dense":
            row.update(setups[m].checks(x, y))
        row["samples_cpu_step_ms"] = samples[m]["cpu_step"]
        mechanisms[m] = row
        setups[m].close()
    print(f"{name} (cpu step): " + ", ".join(
        f"{m} {mechanisms[m]['cpu_step_ms']['median']:.3f} ms "  # type: ignore[index]
        f"({mechanisms[m]['cpu_step_ms']['ratio_to_dense']:.3f}x)"  # type: ignore[index]
        for m in MECHANISMS))
    return {"input": list(x.shape), "mechanisms": mechanisms}


def markdown(result: dict[str, object], command: str) -> str:
    lines = [
        *results_header("Mask mechanics: step time of the ways to enforce a pruning mask",
                        command),
        run_line(result) + "; "
        f"{result['repeats']} interleaved samples of {result['steps']} steps each. "
        "A step is zero_grad + forward + cross-entropy + backward + SGD (momentum) step "
        "(+ after_step); fwd+bwd stops after backward. Times are median [min] ms per step; "
        "ratio = median / dense median. CPU = CPU time of the (single) computing thread, "
        "which waiting for a core shared with other jobs does not inflate; wall = elapsed "
        "time. See the docstring of "
        "`benchmarks/bench_mask_mechanics.py` for the mechanisms.",
        "",
        "On a machine shared with other jobs, medians move by a few percent from one run to "
        "the next (the mechanisms' ratios as well, within about +-3%), so differences below "
        "that are noise; the min columns are the least disturbed samples.",
        "",
    ]
    def cell(r: dict, key: str) -> str:
        v = r[f"{key}_ms"]
        return f"{v['median']:.3f} [{v['min']:.3f}] | {v['ratio_to_dense']:.3f}"

    for model, res in result["models"].items():  # type: ignore[union-attr]
        lines += [
            f"## {model} (input {res['input']})",
            "",
            "| mechanism | CPU step ms | ratio | CPU fwd+bwd ms | ratio | wall step ms | ratio "
            "| kept grads | pruned grads 0 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m, r in res["mechanisms"].items():
            lines.append(
                f"| {m} | {cell(r, 'cpu_step')} | {cell(r, 'cpu_fwd_bwd')} | "
                f"{cell(r, 'wall_step')} | {r.get('kept_grad_ok', '-')} | "
                f"{r.get('pruned_grad_zero', '-')} |"
            )
        lines.append("")
    return "\n".join(lines)


def bench_models() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """The two benchmark models with one fixed batch each (seeded): LeNet-5, a transformer."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    return {
        "lenet5": (build_model("lenet5"), torch.randn(64, 1, 28, 28, generator=g),
                   torch.randint(0, 10, (64,), generator=g)),
        "transformer": (TinyTransformer(), torch.randn(16, 32, 64, generator=g),
                        torch.randint(0, 10, (16,), generator=g)),
    }


def run_info(threads: int) -> dict[str, object]:
    """What a result was measured on: torch, threads, machine, load at the start."""
    return {
        "torch": torch.__version__,
        "threads": threads,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "cpus": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def results_header(title: str, command: str) -> list[str]:
    """The title of a results README and the command that produced it."""
    return [f"# {title}", "", "Produced by (from the repository root):", "", "```bash",
            command, "```", ""]


def run_line(result: dict[str, object]) -> str:
    """Where a result was measured: torch, threads, machine and load, start and end."""
    return (f"torch {result['torch']}, {result['threads']} thread(s), {result['machine']} with "
            f"{result['cpus']} CPUs (1-min load average "
            f"{result['load_average_1min_at_start']:.1f} at the start, "
            f"{result['load_average_1min_at_end']:.1f} at the end, other jobs included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/mask_mechanics")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = bench_models()
    result: dict[str, object] = {**run_info(args.threads), "repeats": args.repeats,
                                 "steps": args.steps, "models": {}}
    for name, (model, x, y) in models.items():
        result["models"][name] = bench_model(  # type: ignore[index]
            name, model, x, y, args.repeats, args.steps)
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    command = (
        "PYTHONPATH=src python benchmarks/bench_mask_mechanics.py "
        f"--repeats {args.repeats} --steps {args.steps} --threads {args.threads} --out {args.out}"
    )
    (out / "README.md").write_text(markdown(result, command) + "\n")


if __name__ == "__main__":
    main()
