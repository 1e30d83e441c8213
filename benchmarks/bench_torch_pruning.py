"""Structured channel pruning, prunelab beside Torch-Pruning 1.6.1, on a zoo of vision models.

Each model of the zoo (torchvision and, where ``timm`` imports, a few timm models; random
weights, seed 0, eval mode) is pruned twice from the same weights, with the same amount and
criterion: 30% of the channels of every prunable group by the L1 norm of the filters, the
layer that produces the model's output (the classifier) left alone:

* ``prunelab``: ``prunelab.prune_channels(model, x, method="l1_filter", amount=0.3,
  scope="local")`` (``ignore=None``: the output layer is left alone by default);
* ``torch_pruning``: ``tp.pruner.MetaPruner(model, x,
  importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.3,
  global_pruning=False, ignored_layers=[classifier])`` then ``pruner.step()``, with the
  model-specific additions Torch-Pruning's own examples make: ``round_to=num_heads`` and
  ``model.hidden_dim`` set after pruning for torchvision's ViT (its ``prunability``
  benchmark), ``num_heads={attn.qkv: attn.num_heads}`` and ``num_heads``/``head_dim``/
  ``attn_dim`` written back into every attention module for timm's ViT
  (``examples/transformers/prune_timm_vit.py``).

A model whose output is all zero on the example input (torchvision's ViT: zero-initialised
head) first gets its classifier drawn from ``trunc_normal(std=0.02)``, for both tools, so that
comparing outputs checks something. The example input for pruning is 1x3x224x224.

Per model and tool it records: handled or the error (one line, where it was raised, the
traceback in the JSON); parameters and MACs before and after; time to prune (wall and CPU
seconds, ``--prune-threads`` 1 by default: with other jobs on a 2-core machine, two OpenMP
threads wait on each other and the time says more about the neighbours than about the tool);
whether the compact model's output has the original's shape and is finite; for prunelab whether
the compact model's output equals that of ``res.masked`` (the original with the same channels
zeroed; largest difference relative to the largest output); then CPU latency of the dense and
both compact models, interleaved rounds with a rotating order, median and minimum, at
``torch.set_num_threads(1)`` and ``(2)``: batch 1 at 224x224 and (CNNs only) batch 64 at
``--batch64-res`` (64x64 by default, to stay affordable); batch 64 is skipped for the ViT-class
models (vit, swin, maxvit), whose position embeddings or window sizes fix the resolution.

MACs are counted by one counter for every model and tool: ``torch.utils.flop_counter``
(FLOPs of aten convolutions and matrix products / 2) over one forward pass at 1x3x224x224 with
autograd on and the math attention kernel, so that ``nn.MultiheadAttention`` and
``scaled_dot_product_attention`` run as countable matrix products instead of fused kernels
the counter does not see. Element-wise work (norms, activations, softmax) is not counted.
Parameters are ``sum(p.numel() for p in model.parameters())``.

Every model runs in its own subprocess (``--model-timeout`` seconds), every tool under its own
alarm (``--tool-timeout``), so a tool that hangs or crashes costs one cell, not the run.

Torch-Pruning is a benchmark-only dependency, kept out of the project's environment::

    pip install --no-deps --target /work/tp-lib torch-pruning==1.6.1 timm

Usage (from the repository root)::

    TP_PATH=/work/tp-lib PYTHONPATH=src python benchmarks/bench_torch_pruning.py
    python benchmarks/bench_torch_pruning.py --tp-path /work/tp-lib --quick
    python benchmarks/bench_torch_pruning.py --models resnet18,timm/vit_tiny_patch16_224
    python benchmarks/bench_torch_pruning.py --render-only   # README.md from results.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

TOOLS = ("prunelab", "torch_pruning")
VARIANTS = ("dense", *TOOLS)
DEFAULT_OUT = "benchmarks/results/torch_pruning"
QUICK_MODELS = ("resnet18", "mobilenet_v2", "vit_b_16")
# Text after this line in an existing README.md is kept when the README is re-rendered.
KEEP_MARKER = "<!-- hand-written notes: kept when the README is re-rendered -->"
# Compact output equals the masked one when the largest difference is at most this fraction
# of the largest output magnitude (float32 sums in a different order, nothing more).
MATCH_RTOL = 1e-4


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo: where it comes from and how it is built."""

    name: str
    source: str  # "torchvision" or "timm"
    arch: str
    kwargs: tuple[tuple[str, object], ...] = ()
    vit_class: bool = False  # fixed 224x224 resolution: no batch-64 latency

    def build(self) -> nn.Module:
        """The model with random weights (seed 0), in eval mode."""
        torch.manual_seed(0)
        if self.source == "timm":
            timm = importlib.import_module("timm")
            model = timm.create_model(self.arch, pretrained=False, **dict(self.kwargs))
        else:
            model = torchvision.models.get_model(self.arch, weights=None, **dict(self.kwargs))
        return model.eval()


def _tv(arch: str, vit_class: bool = False, **kwargs: object) -> ModelSpec:
    return ModelSpec(arch, "torchvision", arch, tuple(kwargs.items()), vit_class)


def _timm(arch: str, vit_class: bool = False) -> ModelSpec:
    return ModelSpec(f"timm/{arch}", "timm", arch, (), vit_class)


ZOO: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _tv("resnet18"),
    _tv("resnet50"),
    _tv("resnext50_32x4d"),
    _tv("wide_resnet50_2"),
    _tv("mobilenet_v2"),
    _tv("mobilenet_v3_small"),
    _tv("efficientnet_b0"),
    _tv("regnet_y_400mf"),
    _tv("shufflenet_v2_x1_0"),
    _tv("densenet121"),
    _tv("googlenet", aux_logits=False, init_weights=False),
    _tv("convnext_tiny"),
    _tv("vit_b_16", vit_class=True),
    _tv("swin_t", vit_class=True),
    _tv("maxvit_t", vit_class=True),
    _timm("resnet18"),
    _timm("efficientnet_b0"),
    _timm("vit_tiny_patch16_224", vit_class=True),
)}


# ----------------------------------------------------------------------------------------
# Optional imports


def add_tp_path(tp_path: str | None) -> None:
    """Put the folder holding torch_pruning (and timm) first on ``sys.path``."""
    if tp_path and tp_path not in sys.path:
        sys.path.insert(0, tp_path)


def import_torch_pruning() -> types.ModuleType:
    """``torch_pruning``, or exit with one line saying how to install it."""
    try:
        return importlib.import_module("torch_pruning")
    except ImportError as e:
        raise SystemExit(
            f"bench_torch_pruning: cannot import torch_pruning ({e}); install it outside the "
            "project venv with `pip install --no-deps --target /work/tp-lib "
            "torch-pruning==1.6.1` and pass --tp-path /work/tp-lib (or set TP_PATH)") from None


def timm_available() -> bool:
    """Whether timm imports (from ``--tp-path`` or the environment)."""
    try:
        importlib.import_module("timm")
    except ImportError:
        return False
    return True


def dist_version(name: str) -> str | None:
    """The installed version of a distribution, from its metadata (None if absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------
# Measurements


def count_params(model: nn.Module) -> int:
    """Number of parameters (every tensor in ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass: aten conv/matmul FLOPs / 2.

    Autograd on (an input that requires grad) turns off ``nn.MultiheadAttention``'s fused
    inference path, and the math SDPA backend decomposes attention into ``bmm``; the counter
    sees neither fused kernel.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output without autograd (the first tensor if it returns several)."""
    with torch.no_grad():
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected a tensor")
    return out


def latency_ms(models: dict[str, nn.Module], x: torch.Tensor, threads: int,
               repeats: int) -> tuple[dict[str, dict[str, float]], float]:
    """Median and minimum ms of one forward pass per model, rounds interleaved.

    One warm-up pass each, then ``repeats`` rounds; each round runs every model once, in an
    order rotated by one per round so that no model always follows the same neighbour. Also
    returns the cores the process had: its CPU time over the wall time of the rounds (close
    to ``threads`` on an idle machine; lower when other jobs took the cores).
    """
    torch.set_num_threads(threads)
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for n in names:
            models[n](x)
        for r in range(repeats):
            for i in range(len(names)):
                n = names[(i + r) % len(names)]
                t0 = time.perf_counter()
                models[n](x)
                samples[n].append((time.perf_counter() - t0) * 1e3)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    stats = {n: {"median_ms": statistics.median(s), "min_ms": min(s)} for n, s in samples.items()}
    return stats, cores


class ToolTimeoutError(Exception):
    """A tool ran past ``--tool-timeout``."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ToolTimeoutError in the main thread after ``seconds`` (SIGALRM; POSIX only)."""
    def on_alarm(signum: int, frame: object) -> None:
        raise ToolTimeoutError(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def error_record(stage: str, e: BaseException) -> dict[str, object]:
    """One line for the table, where it was raised, and the traceback for the JSON."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    frames = traceback.extract_tb(e.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" \
        if frames else ""
    tools = [f"{f.filename.split('site-packages/')[-1].split('/src/')[-1]}:{f.lineno} in "
             f"{f.name}" for f in frames
             if any(k in f.filename for k in ("prunelab", "torch_pruning"))
             and Path(f.filename).name != Path(__file__).name]
    if isinstance(e, ToolTimeoutError) and tools:
        where = f"{tools[-1].rsplit('/', 1)[-1]}, where the alarm found it"
    return {"stage": stage, "error": f"{type(e).__name__}: {first}"[:400], "where": where,
            "tool_frames": tools[-12:],
            "traceback": "".join(traceback.format_exception(e))[-6000:]}


# ----------------------------------------------------------------------------------------
# The two tools


def classifier(model: nn.Module) -> nn.Linear:
    """The layer that produces the logits: the last ``nn.Linear`` of the zoo's models."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear")
    return linears[-1]


def prune_torch_pruning(tp: types.ModuleType, model: nn.Module, x: torch.Tensor,
                        amount: float) -> tuple[nn.Module, dict[str, object]]:
    """Prune ``model`` in place with Torch-Pruning; returns it and the extra settings used."""
    vit_cls = torchvision.models.VisionTransformer
    timm_attention: type | None = None
    if type(model).__module__.startswith("timm."):  # timm is imported: it built the model
        timm_attention = importlib.import_module("timm.layers").Attention
    settings: dict[str, object] = {}
    round_to: int | None = None
    num_heads: dict[nn.Module, int] = {}
    if isinstance(model, vit_cls):
        # nn.MultiheadAttention: embed_dim must stay a multiple of num_heads.
        round_to = model.encoder.layers[0].num_heads
        settings["round_to"] = round_to
    if timm_attention is not None:
        num_heads = {m.qkv: m.num_heads for m in model.modules()
                     if isinstance(m, timm_attention)}
        if num_heads:
            settings["num_heads"] = "{attn.qkv: attn.num_heads}"
    # Fresh dicts: MetaPruner's defaults for these are shared mutable dicts it writes into.
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=amount,
        global_pruning=False, ignored_layers=[classifier(model)], round_to=round_to,
        num_heads=num_heads, in_channel_groups={}, out_channel_groups={})
    pruner.step()
    if isinstance(model, vit_cls):
        model.hidden_dim = model.conv_proj.out_channels
        settings["after"] = "model.hidden_dim = model.conv_proj.out_channels"
    if num_heads and timm_attention is not None:
        for m in model.modules():
            if isinstance(m, timm_attention):
                m.num_heads = pruner.num_heads[m.qkv]
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
                m.attn_dim = m.num_heads * m.head_dim
        settings["after"] = "attn.num_heads/head_dim/attn_dim from pruner.num_heads"
    return model, settings


def prune_prunelab(model: nn.Module, x: torch.Tensor, amount: float) -> Any:
    """``prunelab.prune_channels`` with the benchmark's settings (its result object)."""
    prunelab = importlib.import_module("prunelab")
    prune_channels: Callable[..., Any] | None = getattr(prunelab, "prune_channels", None)
    if prune_channels is None:
        raise RuntimeError("prunelab.prune_channels does not exist in this checkout")
    # ignore left at its default (the output layers are left alone): the spelled-out
    # ignore=None of the announced signature raises TypeError in this version.
    return prune_channels(model, x, method="l1_filter", amount=amount, scope="local",
                          min_channels=1, round_to=None, check=True)


# ----------------------------------------------------------------------------------------
# One model (in a worker process)


@dataclass
class ToolOutcome:
    """What one tool did to one model."""

    handled: bool = False
    failure: dict[str, object] | None = None
    prune_s: float | None = None
    prune_cpu_s: float | None = None
    params: int | None = None
    macs: int | None = None
    output_shape_ok: bool | None = None
    output_finite: bool | None = None
    masked_max_rel_diff: float | None = None
    matches_masked: bool | None = None
    settings: dict[str, object] = field(default_factory=dict)
    report: dict[str, object] = field(default_factory=dict)


def check_compact(outcome: ToolOutcome, model: nn.Module, x: torch.Tensor,
                  reference_shape: torch.Size) -> torch.Tensor | None:
    """Fill in output shape/finiteness, params and MACs of a compact model."""
    try:
        y = forward(model, x)
    except Exception as e:
        outcome.failure = error_record("forward of the compact model", e)
        return None
    outcome.output_shape_ok = tuple(y.shape) == tuple(reference_shape)
    outcome.output_finite = bool(torch.isfinite(y).all())
    outcome.params = count_params(model)
    try:
        outcome.macs = count_macs(model, x)
    except Exception as e:
        outcome.failure = error_record("MAC count of the compact model", e)
        return None
    if not outcome.output_shape_ok:
        outcome.failure = {"stage": "output", "error": f"output shape {tuple(y.shape)}, "
                           f"original {tuple(reference_shape)}", "where": ""}
    elif not outcome.output_finite:
        outcome.failure = {"stage": "output", "error": "output has NaN or inf", "where": ""}
    return y


def summarize_report(res: Any) -> dict[str, object]:
    """prunelab's own summary (``res.to_dict()`` without the per-group list) and group counts."""
    try:
        d = dict(res.to_dict())
        groups = d.pop("groups", [])
        d["groups"] = len(groups)
        d["groups_pruned"] = sum(1 for g in groups if g.get("removed"))
        d["groups_with_notes"] = sorted({g["note"] for g in groups if g.get("note")})
        return d
    except Exception as e:
        return {"to_dict_error": f"{type(e).__name__}: {e}"}


def run_tool(tool: str, original: nn.Module, x: torch.Tensor, y0: torch.Tensor,
             args: argparse.Namespace) -> tuple[ToolOutcome, nn.Module | None]:
    """Prune a copy of ``original`` with one tool and check the compact model."""
    outcome = ToolOutcome()
    model = copy.deepcopy(original)
    torch.set_num_threads(args.prune_threads)
    tp = import_torch_pruning() if tool == "torch_pruning" else None
    importlib.import_module("prunelab")
    try:
        with time_limit(args.tool_timeout):
            t0, c0 = time.perf_counter(), time.process_time()
            if tp is not None:
                compact, outcome.settings = prune_torch_pruning(tp, model, x, args.amount)
                res = None
            else:
                res = prune_prunelab(model, x, args.amount)
                compact = res.model
            outcome.prune_s = time.perf_counter() - t0
            outcome.prune_cpu_s = time.process_time() - c0
    except (Exception, ToolTimeoutError) as e:
        outcome.failure = error_record("prune", e)
        return outcome, None
    compact.eval()
    y = check_compact(outcome, compact, x, y0.shape)
    if y is not None and res is not None:
        outcome.report = summarize_report(res)
        try:
            ym = forward(res.masked.eval(), x)
            if not bool(ym.any()):
                raise ValueError("res.masked returns all zeros: the comparison checks nothing")
            diff = float((y - ym).abs().max()) if y.shape == ym.shape else math.inf
            outcome.masked_max_rel_diff = diff / float(ym.abs().max())
            outcome.matches_masked = outcome.masked_max_rel_diff <= MATCH_RTOL
            if not outcome.matches_masked and outcome.failure is None:
                outcome.failure = {"stage": "output", "where": "", "error":
                                   f"compact output differs from res.masked: max rel diff "
                                   f"{outcome.masked_max_rel_diff:.2e}"}
        except Exception as e:
            outcome.failure = error_record("forward of res.masked", e)
    outcome.handled = outcome.failure is None
    return outcome, compact if outcome.handled else None


def run_model(spec: ModelSpec, args: argparse.Namespace) -> dict[str, object]:
    """Prune one model with both tools, check, count and time; a JSON-ready record."""
    torch.set_num_threads(args.prune_threads)
    record: dict[str, object] = {"model": spec.name, "source": spec.source,
                                 "load_average_1min_at_start": os.getloadavg()[0]}
    try:
        original = spec.build()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        y0 = forward(original, x)
        if not bool(y0.any()):
            # torchvision's ViT initialises its head to zero: every output is 0 and no
            # comparison of outputs would check anything. Both tools get the same head.
            head = classifier(original)
            with torch.no_grad():
                nn.init.trunc_normal_(head.weight, std=0.02,
                                      generator=torch.Generator().manual_seed(0))
            record["classifier_reinitialised"] = "zero-initialised: trunc_normal(std=0.02)"
            y0 = forward(original, x)
        record["params"] = count_params(original)
        record["macs"] = count_macs(original, x)
    except Exception as e:
        record["failure"] = error_record("build", e)
        return record
    compact: dict[str, nn.Module] = {"dense": original}
    tools: dict[str, object] = {}
    for tool in TOOLS:
        outcome, model = run_tool(tool, original, x, y0, args)
        tools[tool] = outcome.__dict__
        if model is not None:
            compact[tool] = model
    record["tools"] = tools
    settings: list[tuple[int, int]] = [] if args.no_latency else [(1, 224)]
    if not spec.vit_class and not args.no_batch64:
        settings.append((64, args.batch64_res))
    lat: list[dict[str, object]] = []
    for batch, res in settings:
        xb = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(2))
        for threads in args.threads:
            cores: float | None = None
            try:
                times, cores = latency_ms(compact, xb, threads, args.repeats)
            except Exception as e:
                times = {"error": error_record("latency", e)["error"]}
            lat.append({"batch": batch, "resolution": res, "threads": threads, "ms": times,
                        "cores_used": cores})
    record["latency"] = lat
    return record


# ----------------------------------------------------------------------------------------
# The driver


def machine_info(threads: list[int]) -> dict[str, object]:
    """CPU, versions and load, for the README's machine line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "latency_threads": threads,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": dist_version("torch-pruning"), "timm": dist_version("timm"),
            "python": platform.python_version(), "prunelab_commit": commit,
            "load_average_1min_at_start": os.getloadavg()[0]}


def worker_argv(args: argparse.Namespace, name: str, out: str) -> list[str]:
    """The command line of the subprocess that measures one model."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-out", out,
            "--amount", str(args.amount), "--repeats", str(args.repeats),
            "--batch64-res", str(args.batch64_res), "--tool-timeout", str(args.tool_timeout),
            "--prune-threads", str(args.prune_threads),
            "--memory-limit-gb", str(args.memory_limit_gb),
            "--threads", ",".join(map(str, args.threads))]
    if args.tp_path:
        argv += ["--tp-path", args.tp_path]
    if args.no_batch64:
        argv.append("--no-batch64")
    if args.no_latency:
        argv.append("--no-latency")
    return argv


def run_all(args: argparse.Namespace, command: str) -> dict[str, object]:
    """Every selected model in its own subprocess; the results object."""
    result: dict[str, object] = {
        **machine_info(args.threads), "command": command, "amount": args.amount,
        "repeats": args.repeats, "batch64_resolution": None if args.no_batch64
        else args.batch64_res, "prune_threads": args.prune_threads, "models": {}}
    has_timm = timm_available()
    started = time.perf_counter()
    for name in args.models:
        spec = ZOO[name]
        if spec.source == "timm" and not has_timm:
            result["models"][name] = {"model": name, "source": "timm", "failure": {  # type: ignore[index]
                "stage": "build", "error": "timm not importable", "where": ""}}
            continue
        print(f"[{time.perf_counter() - started:6.0f} s] {name}", flush=True)
        t_model = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "record.json")
            try:
                proc = subprocess.run(worker_argv(args, name, out), timeout=args.model_timeout,
                                      capture_output=True, text=True, check=False)
                if Path(out).exists():
                    record = json.loads(Path(out).read_text())
                else:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
                    record = {"model": name, "source": spec.source, "failure": {
                        "stage": "worker", "error": f"exit {proc.returncode}: {tail[0]}"[:400],
                        "where": ""}}
            except subprocess.TimeoutExpired:
                record = {"model": name, "source": spec.source, "failure": {
                    "stage": "worker", "error": f"no result after {args.model_timeout} s",
                    "where": ""}}
        record["wall_s"] = time.perf_counter() - t_model
        result["models"][name] = record  # type: ignore[index]
        for tool in TOOLS:
            t = record.get("tools", {}).get(tool, {})
            status = "ok" if t.get("handled") else (t.get("failure") or {}).get("error", "-")
            print(f"    {tool}: {status}", flush=True)
    result["wall_s"] = time.perf_counter() - started
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    return result


# ----------------------------------------------------------------------------------------
# The README


def _m(n: object, unit: float) -> str:
    return f"{n / unit:.2f}" if isinstance(n, (int, float)) else "-"


def _kept(after: object, before: object) -> str:
    if isinstance(after, (int, float)) and isinstance(before, (int, float)) and before:
        return f"{after / before:.0%}"
    return "-"


def _cell(t: dict[str, Any]) -> str:
    if t.get("handled"):
        return "ok"
    failure = t.get("failure") or {}
    return "**fails**: " + str(failure.get("error", "?")).replace("|", "\\|")


def pruning_table(result: dict[str, Any]) -> list[str]:
    """Rows of the pruning table: one per model and tool."""
    rows = ["| model | tool | result | params M (kept) | MACs G (kept) | prune s | "
            "output finite | = res.masked (max rel diff) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, rec in result["models"].items():
        if "tools" not in rec:
            err = str(rec.get("failure", {}).get("error", "?")).replace("|", "\\|")
            rows.append(f"| {name} | both | not run: {err} | | | | | |")
            continue
        p0, m0 = rec.get("params"), rec.get("macs")
        for tool in TOOLS:
            t = rec["tools"][tool]
            params = f"{_m(p0, 1e6)} -> {_m(t.get('params'), 1e6)} " \
                     f"({_kept(t.get('params'), p0)})" if t.get("params") else _m(p0, 1e6)
            macs = f"{_m(m0, 1e9)} -> {_m(t.get('macs'), 1e9)} ({_kept(t.get('macs'), m0)})" \
                if t.get("macs") else _m(m0, 1e9)
            prune_s = f"{t['prune_s']:.2f}" if t.get("prune_s") is not None else "-"
            finite = {True: "yes", False: "no", None: "-"}[t.get("output_finite")]
            if tool == "prunelab" and t.get("masked_max_rel_diff") is not None:
                match = ("yes" if t.get("matches_masked") else "**no**") + \
                        f" ({t['masked_max_rel_diff']:.1e})"
            else:
                match = "n/a" if tool == "torch_pruning" else "-"
            rows.append(f"| {name} | {tool} | {_cell(t)} | {params} | {macs} | {prune_s} | "
                        f"{finite} | {match} |")
    return rows


def latency_table(result: dict[str, Any]) -> list[str]:
    """Rows of the latency table: one per model, batch and thread count."""
    rows = ["| model | batch x res | threads | cores had | dense ms | prunelab ms | "
            "Torch-Pruning ms | dense/prunelab | dense/TP |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, rec in result["models"].items():
        for lat in rec.get("latency", []):
            ms = lat["ms"]
            if "error" in ms:
                rows.append(f"| {name} | {lat['batch']} x {lat['resolution']} | "
                            f"{lat['threads']} | | {ms['error']} | | | | |")
                continue

            def cell(v: str, ms: dict[str, Any] = ms) -> str:
                return f"{ms[v]['median_ms']:.1f} [{ms[v]['min_ms']:.1f}]" if v in ms else "-"

            def ratio(v: str, ms: dict[str, Any] = ms) -> str:
                return f"{ms['dense']['median_ms'] / ms[v]['median_ms']:.2f}x" \
                    if v in ms else "-"

            cores = lat.get("cores_used")
            had = "-" if cores is None else f"{cores:.2f}" + (
                " **(shared)**" if cores < 0.85 * lat["threads"] else "")
            rows.append(f"| {name} | {lat['batch']} x {lat['resolution']} | {lat['threads']} | "
                        f"{had} | {cell('dense')} | {cell('prunelab')} | {cell('torch_pruning')} | "
                        f"{ratio('prunelab')} | {ratio('torch_pruning')} |")
    return rows


def failures(result: dict[str, Any]) -> list[str]:
    """One bullet per failure, with where it was raised."""
    lines = []
    for name, rec in result["models"].items():
        for tool in TOOLS:
            f = rec.get("tools", {}).get(tool, {}).get("failure")
            if f:
                at = str(f.get("where", ""))
                if at.startswith(Path(__file__).name):  # records from before the frame filter
                    frames = [t for t in f.get("tool_frames", []) if Path(__file__).name not in t]
                    at = f"{frames[-1].rsplit('/', 1)[-1]}, where the alarm found it" \
                        if frames else at
                where = f" (`{at}`)" if at else ""
                lines.append(f"- {name}, {tool}, {f['stage']}: `{f['error']}`{where}")
    return lines or ["- none"]


def render_readme(result: dict[str, Any], old: str | None) -> str:
    """README.md for the results folder; text after KEEP_MARKER in ``old`` is kept."""
    handled = {t: sum(1 for r in result["models"].values()
                      if r.get("tools", {}).get(t, {}).get("handled")) for t in TOOLS}
    n = len(result["models"])
    b64 = result["batch64_resolution"]
    zero_heads = [n for n, r in result["models"].items() if r.get("classifier_reinitialised")]
    reinit = (f" The zero-initialised classifier of {', '.join(zero_heads)} (all outputs 0: "
              "no output comparison would check anything) is drawn from trunc_normal(std=0.02) "
              "first; both tools get that model.") if zero_heads else ""
    lines = [
        "# Structured pruning: prunelab beside Torch-Pruning", "",
        "Produced by (from the repository root):", "", "```bash", result["command"], "```", "",
        f"Machine: {result['cpu']}, {result['cpus']} CPUs; latency at "
        f"{' and '.join(map(str, result['latency_threads']))} thread(s), pruning at "
        f"{result['prune_threads']}; torch {result['torch']}, torchvision "
        f"{result['torchvision']}, Torch-Pruning {result['torch_pruning']}, timm "
        f"{result['timm']}, Python {result['python']}, prunelab at {result['prunelab_commit']}; "
        f"1-min load average {result['load_average_1min_at_start']:.1f} at the start, "
        f"{result['load_average_1min_at_end']:.1f} at the end; the run took "
        f"{result['wall_s'] / 60:.1f} min.", "",
        f"Each model pruned by {result['amount']:.0%} of the channels of every group, L1 "
        "filter norm, local (the same fraction per group), classifier left alone; random "
        "weights (seed 0), eval mode, example input 1x3x224x224. Handled: prunelab "
        f"{handled['prunelab']}/{n}, Torch-Pruning {handled['torch_pruning']}/{n}. How each "
        "tool is called, and what is measured: the docstring of "
        "`benchmarks/bench_torch_pruning.py`." + reinit, "",
        "## Pruning", "",
        "Params and MACs: before -> after (fraction kept). MACs: `torch.utils.flop_counter` "
        "(conv and matrix products, attention included, element-wise work not) at 1x3x224x224, "
        "the same counter for both tools. Prune s: wall time of the call at "
        f"{result['prune_threads']} thread(s) (prunelab with "
        "`check=True`: its own check included). `= res.masked`: prunelab's compact output "
        f"against its masked copy (max abs diff / max abs output, match at <= {MATCH_RTOL:g}); "
        "Torch-Pruning has no masked counterpart, so only that its model runs, with the "
        "original's output shape and a finite output.", "",
        *pruning_table(result), "",
        "## Latency", "",
        f"Median [min] ms of one forward pass (`torch.no_grad`), {result['repeats']} "
        "interleaved rounds after one warm-up, rotating order. Batch 1 at 224x224; batch 64 at "
        + (f"{b64}x{b64} for the CNNs only, to keep the run affordable" if b64 else
           "(not run)") + "; the ViT-class models (vit_b_16, swin_t, maxvit_t, "
        "timm/vit_tiny_patch16_224) only at batch 1. A tool that failed has no column. "
        "Cores had: the process's CPU time over the wall time of that row's rounds; "
        "**(shared)** marks rows below 85% of the threads asked for, where other jobs on the "
        "machine took cores and the times (2 threads above all: OpenMP threads wait for each "
        "other) say little about the models.", "",
        *latency_table(result), "",
        "## Failures", "",
        *failures(result), "",
        KEEP_MARKER, "",
    ]
    if old and KEEP_MARKER in old:
        kept = old.split(KEEP_MARKER, 1)[1].lstrip("\n")
        lines.append(kept.rstrip("\n"))
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; ``--worker`` is internal (the subprocess for one model)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None,
                    help="comma-separated, from: " + ", ".join(ZOO) + " (default: all; "
                    f"with --quick: {', '.join(QUICK_MODELS)})")
    ap.add_argument("--quick", action="store_true",
                    help="three models, 3 rounds, no batch 64: a smoke test of minutes")
    ap.add_argument("--tp-path", default=os.environ.get("TP_PATH"),
                    help="folder holding torch_pruning (and timm); default: $TP_PATH")
    ap.add_argument("--amount", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=None, help="latency rounds (default 7)")
    ap.add_argument("--threads", default="1,2", help="latency thread counts")
    ap.add_argument("--prune-threads", type=int, default=1,
                    help="threads while pruning (1: robust to other jobs on the machine)")
    ap.add_argument("--batch64-res", type=int, default=64)
    ap.add_argument("--no-batch64", action="store_true")
    ap.add_argument("--no-latency", action="store_true", help="prune and check only")
    ap.add_argument("--tool-timeout", type=int, default=120, help="seconds per tool and model")
    ap.add_argument("--model-timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--memory-limit-gb", type=float, default=8.0,
                    help="data-segment limit of each model's subprocess")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--render-only", action="store_true",
                    help="write README.md from an existing results.json and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0.0 <= args.amount < 1.0:
        ap.error(f"--amount={args.amount} should be a float in [0, 1)")
    args.threads = [int(t) for t in str(args.threads).split(",")]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.quick or args.no_latency:
        args.no_batch64 = True
    names = args.models.split(",") if args.models else \
        list(QUICK_MODELS if args.quick else ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(ZOO)}")
    args.models = names
    return args


def reproduce_command(argv: list[str]) -> str:
    """The command line for the README, with ``--tp-path`` written as ``TP_PATH=``."""
    rest: list[str] = []
    tp_path = os.environ.get("TP_PATH", "/work/tp-lib")
    it = iter(argv)
    for a in it:
        if a == "--tp-path":
            tp_path = next(it, tp_path)
        elif a.startswith("--tp-path="):
            tp_path = a.split("=", 1)[1]
        else:
            rest.append(a)
    return " ".join([f"TP_PATH={tp_path} PYTHONPATH=src python benchmarks/bench_torch_pruning.py",
                     *rest]).strip()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with --worker, one model of it)."""
    args = parse_args(argv)
    add_tp_path(args.tp_path)
    if args.worker:
        # A tool that runs out of memory raises MemoryError here instead of calling in the
        # kernel's OOM killer on the whole machine (RLIMIT_DATA: heap and private mappings).
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        record = run_model(ZOO[args.worker], args)
        Path(args.worker_out).write_text(json.dumps(record, indent=1, default=str))
        return
    out = Path(args.out)
    readme = out / "README.md"
    if args.render_only:
        result = json.loads((out / "results.json").read_text())
        readme.write_text(render_readme(result, readme.read_text() if readme.exists() else None))
        return
    import_torch_pruning()  # fail in one line before any model is built
    result = run_all(args, reproduce_command(argv if argv is not None else sys.argv[1:]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    readme.write_text(render_readme(result, readme.read_text() if readme.exists() else None))
    print(f"wrote {out / 'results.json'} and {readme}")


if __name__ == "__main__":
    main()
