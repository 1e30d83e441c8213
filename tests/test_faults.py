"""Fault injection for ``prunelab run`` (issue 14): every interrupted run, resumed, ends
bit-identical to an uninterrupted one.

* SIGKILL at seeded-random moments, several times per run directory, then ``--resume``
  (or a fresh start, while no checkpoint exists yet) until the run exits 0;
* SIGKILL inside a checkpoint write: the temporary file is written, ``os.replace`` never
  runs;
* a full disk on the N-th write (an injected ``ENOSPC``, and a real size-limited tmpfs
  where one can be mounted in a user namespace);
* a SIGKILLed rank of a 2-rank ``torchrun`` job.

Faults go in through :data:`WRAPPER`, which patches ``prunelab.checkpoint.save_file`` (the
safetensors writer of ``write_safetensors_atomic``) and then calls ``prunelab.cli.main``.
The runs are on a 512-image MNIST subset, one thread: 2 dense epochs and 2 pruning
iterations of 1 epoch, 9 safetensors writes within ~0.5 s. A fresh interpreter spends
~7 s on each run, nearly all of it importing torch (and torch._dynamo, which torch.optim
pulls in) and tearing it down, so the runs are forked, each a process of its own that is
SIGKILLed for real, by one server process that imported everything once (~1.5 s a run;
``PRUNELAB_FAULTS_FRESH=1`` starts a fresh ``python WRAPPER ...`` for every run instead).
A plain ``python -m prunelab run``, the tmpfs run and the torchrun jobs are fresh
processes, and the first must end bit-identical to the forked reference.

The random kill moments are placed on the reference run's timeline of writes (after its
k-th write, plus a random part of the time to the next), not on bare wall time, which
would land most kills before the first epoch ends. Independent run directories go 2 at a
time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import torch
import yaml
from conftest import SMALL_MNIST_RUN

import prunelab
from prunelab.checkpoint import load_tensors
from prunelab.experiments.han import CHECKPOINT_NAME

CONFIG = {**SMALL_MNIST_RUN, "name": "faults"}

# (phase, epoch_done) of each checkpoint write: one after every epoch, one after every phase
CHECKPOINTS = [(0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
# every safetensors write of a run, in order (the wrapper's N counts these)
WRITES = [CHECKPOINT_NAME] * len(CHECKPOINTS) + ["dense_model.safetensors",
                                                 "model.safetensors"]
MODEL_FILES = ("model.safetensors", "dense_model.safetensors", CHECKPOINT_NAME)
TIMEOUT_S = 120  # one run takes seconds; a hung one fails the test instead of the suite
PARALLEL = max(1, min(2, os.cpu_count() or 1))

# `python WRAPPER MODE N LOG prunelab-args...` runs the CLI with a fault in its N-th
# safetensors write. MODE none: no fault; kill: write the temporary file, then SIGKILL
# before os.replace; enospc: write part of it, then fail as a full disk does. Every
# completed write appends "<temporary file name> <size> <time.time()>" to LOG.
# `python WRAPPER --serve` is a fork server: it imports torch and prunelab once, then for
# each JSON job line on stdin forks a child that does the same as the command above
# (its stderr to a file); it answers "start ID PID" and, once the child ended, "exit PID
# STATUS" (negative: killed by that signal). A forked run takes ~1.5 s, a fresh process
# ~7 s (importing torch, and torch._dynamo, which torch.optim pulls in, and tearing them
# down). Set PRUNELAB_FAULTS_FRESH=1 to start every run as a fresh process instead.
WRAPPER = '''\
import errno
import json
import os
import select
import signal
import sys
import time
import traceback

import prunelab.checkpoint as checkpoint
import prunelab.cli as cli


def run(mode, nth, log, argv):
    """prunelab's CLI with the fault; returns its exit status."""
    real_save_file = checkpoint.save_file
    calls = 0

    def save_file(tensors, filename, metadata=None):
        nonlocal calls
        calls += 1
        if calls == nth and mode == "enospc":
            with open(filename, "wb") as fh:
                fh.write(bytes(4096))
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(tensors, filename, metadata=metadata)
        with open(log, "a") as fh:
            fh.write(f"{os.path.basename(filename)} {os.path.getsize(filename)} "
                     f"{time.time()}\\n")
        if calls == nth and mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = save_file
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        return 1


def child(job):
    devnull = os.open(os.devnull, os.O_RDWR)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    sys.stdin, sys.stdout = open(os.devnull), open(os.devnull, "w")
    sys.stderr = open(2, "w", closefd=False)
    status = run(job["mode"], job["nth"], job["log"], job["argv"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve():
    import torch
    import torch._dynamo  # noqa: F401
    import prunelab.experiments.runner  # noqa: F401
    import prunelab.paper  # noqa: F401
    import rich.console  # noqa: F401

    cli.build_parser(cli._extra_commands())  # imports the subcommand modules
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    print("ready", flush=True)
    children, pending, stdin_open = set(), b"", True
    while stdin_open or children:
        if stdin_open and select.select([0], [], [], 0.002)[0]:
            chunk = os.read(0, 65536)
            stdin_open = bool(chunk)
            pending += chunk
            while b"\\n" in pending:
                line, pending = pending.split(b"\\n", 1)
                job = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    child(job)
                children.add(pid)
                print(f"start {job['id']} {pid}", flush=True)
        elif not stdin_open:
            time.sleep(0.002)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if sys.argv[1] == "--serve":
    serve()
else:
    status = run(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # skips ~2 s of interpreter teardown (torch._dynamo)
'''

T = TypeVar("T")
R = TypeVar("R")


# ------------------------------------------------------------------------- running runs
class Run(Protocol):
    """A started ``prunelab run``: a forked child of the server or a fresh process."""

    pid: int

    def poll(self) -> int | None: ...
    def wait(self, timeout: float) -> int: ...
    def stderr(self) -> str: ...


@dataclass
class FreshRun:
    popen: subprocess.Popen
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.err.read_text()


@dataclass
class ForkedRun:
    server: ForkServer
    pid: int
    err: Path

    def poll(self) -> int | None:
        with self.server.cond:
            return self.server.exits.get(self.pid)

    def wait(self, timeout: float) -> int:
        s = self.server
        with s.cond:
            if not s.cond.wait_for(lambda: self.pid in s.exits or s.closed, timeout):
                raise subprocess.TimeoutExpired(f"forked run {self.pid}", timeout)
            assert self.pid in s.exits, "the fork server ended"
            return s.exits[self.pid]

    def stderr(self) -> str:
        return self.err.read_text()


class ForkServer:
    """``python WRAPPER --serve`` and the thread that reads its answers."""

    def __init__(self, wrapper: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(wrapper), "--serve"], env=_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.cond = threading.Condition()
        self.ready = self.closed = False
        self.pids: dict[int, int] = {}
        self.exits: dict[int, int] = {}
        self.ids = itertools.count()
        threading.Thread(target=self._read, daemon=True).start()
        with self.cond:
            self.cond.wait_for(lambda: self.ready or self.closed, TIMEOUT_S)
        assert self.ready, "the fork server did not start"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            words = line.split()
            with self.cond:
                if words[0] == "ready":
                    self.ready = True
                elif words[0] == "start":
                    self.pids[int(words[1])] = int(words[2])
                elif words[0] == "exit":
                    self.exits[int(words[1])] = int(words[2])
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def start(self, job: dict[str, Any]) -> int:
        """Fork a child for ``job``; its pid."""
        assert self.proc.stdin is not None
        with self.cond:
            job_id = next(self.ids)
            self.proc.stdin.write(json.dumps({**job, "id": job_id}) + "\n")
            self.proc.stdin.flush()
            self.cond.wait_for(lambda: job_id in self.pids or self.closed, TIMEOUT_S)
            assert job_id in self.pids, "the fork server did not fork"
            return self.pids[job_id]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_SERVER: ForkServer | None = None
_SERVER_LOCK = threading.Lock()


def _server(directory: Path) -> ForkServer | None:
    """The fork server, started on first use (None with PRUNELAB_FAULTS_FRESH set)."""
    global _SERVER
    if os.environ.get("PRUNELAB_FAULTS_FRESH"):
        return None
    with _SERVER_LOCK:
        if _SERVER is None:
            wrapper = directory / "fork_server.py"
            wrapper.write_text(WRAPPER)
            _SERVER = ForkServer(wrapper)
        return _SERVER


@pytest.fixture(scope="module", autouse=True)
def _close_fork_server() -> Iterator[None]:
    global _SERVER
    yield
    if _SERVER is not None:
        _SERVER.close()
        _SERVER = None


def _start(cfg: Path, out: Path, log: Path, fault: tuple[str, int] = ("none", 0)) -> Run:
    """``prunelab run`` with ``fault`` (``--resume`` if there is a checkpoint), forked by
    the server or, without one, as a fresh ``python WRAPPER ...`` process."""
    argv = _run_args(cfg, out)
    fd, name = tempfile.mkstemp(prefix=f"{out.name}-", suffix=".stderr", dir=cfg.parent)
    os.close(fd)
    err = Path(name)
    server = _server(cfg.parent)
    if server is not None:
        pid = server.start({"mode": fault[0], "nth": fault[1], "log": str(log),
                            "argv": argv, "stderr": str(err)})
        return ForkedRun(server, pid, err)
    wrapper = cfg.parent / "faulty_prunelab.py"
    if not wrapper.exists():
        wrapper.write_text(WRAPPER)
    cmd = [sys.executable, str(wrapper), fault[0], str(fault[1]), str(log), *argv]
    with err.open("w") as fh:
        popen = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=fh)
    return FreshRun(popen, err)


def _kill(run: Run) -> None:
    if run.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)


def _wait(run: Run, timeout: float = TIMEOUT_S) -> int:
    """Its exit status; a run still going after ``timeout`` is killed and fails the test."""
    try:
        return run.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(run)
        raise


def _finish(cfg: Path, out: Path) -> None:
    """Run (resuming when there is a checkpoint) to the end; it must exit 0."""
    run = _start(cfg, out, out.parent / f"{out.name}-finish-writes.log")
    assert _wait(run) == 0, run.stderr()


# ----------------------------------------------------------------------------- helpers
def _parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(fn, items))


def _env() -> dict[str, str]:
    """One thread, unbuffered, and the prunelab under test first on the path."""
    src = str(Path(prunelab.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _write_config(directory: Path, cfg: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg or CONFIG))
    return path


def _has_checkpoint(out: Path) -> bool:
    return (out / CHECKPOINT_NAME).exists()


def _run_args(cfg: Path, out: Path) -> list[str]:
    """``run`` arguments; ``--resume`` only once a checkpoint exists: before the first
    one there is nothing to resume, and the run directory is started afresh."""
    args = ["run", str(cfg), "--out", str(out), "--quiet", "--no-report"]
    return [*args, "--resume"] if _has_checkpoint(out) else args


def _ck_state(out: Path) -> tuple[int, int] | None:
    """(phase, epoch_done) of the run directory's checkpoint (it must load); None without."""
    if not _has_checkpoint(out):
        return None
    _, meta = load_tensors(out / CHECKPOINT_NAME)
    return int(meta["phase"]), int(meta["epoch_done"])


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def _assert_same_run(ref: Path, got: Path) -> None:
    """Model files and the final checkpoint bit-identical (tensors and metadata, epoch
    times aside), the same summary (times and the resumed flag aside), the same log."""
    for name in MODEL_FILES:
        want, want_meta = load_tensors(ref / name)
        have, have_meta = load_tensors(got / name)
        assert have.keys() == want.keys(), name
        for k in want:
            assert have[k].dtype == want[k].dtype and torch.equal(have[k], want[k]), (name, k)
        if "history" in want_meta:
            assert _untimed(have_meta.pop("history")) == _untimed(want_meta.pop("history"))
        assert have_meta == want_meta, name
    drop = ("time_s", "resumed")
    want_s = json.loads((ref / "summary.json").read_text())
    have_s = json.loads((got / "summary.json").read_text())
    assert have_s["test_error_dense"] == want_s["test_error_dense"]
    assert have_s["test_error_pruned"] == want_s["test_error_pruned"]
    assert have_s["params_nonzero"] == want_s["params_nonzero"]
    assert {k: v for k, v in have_s.items() if k not in drop} == {
        k: v for k, v in want_s.items() if k not in drop}
    logs = [_untimed([json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()])
            for d in (ref, got)]
    assert logs[1] == logs[0]


def _read_writes(log: Path) -> list[tuple[str, int, float]]:
    """(final file name, size, time) of each completed write in a wrapper's log (of its
    whole lines: a running one may be writing the next)."""
    writes = []
    for line in log.read_text().split("\n")[:-1] if log.exists() else []:
        tmp, size, when = line.split()
        m = re.fullmatch(r"\.(.+\.safetensors)\.[^.]+\.tmp", tmp)
        assert m, tmp
        writes.append((m.group(1), int(size), float(when)))
    return writes


@dataclass
class Reference:
    """The uninterrupted run: its directory, wall time, and every safetensors write as
    (final file name, size in bytes, seconds from the start)."""

    out: Path
    wall_s: float
    writes: list[tuple[str, int, float]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run (through the wrapper, without a fault, to log its writes)."""
    base = tmp_path_factory.mktemp("reference")
    cfg = _write_config(base)
    out, log = base / "run", base / "writes.log"
    _server(base)  # started first: its imports are no part of the run's timeline
    t0 = time.time()
    run = _start(cfg, out, log)
    status = _wait(run)
    wall = time.time() - t0
    assert status == 0, run.stderr()
    return Reference(out, wall, [(n, s, t - t0) for n, s, t in _read_writes(log)])


def test_write_order(reference: Reference) -> None:
    """The N of the fault tests below counts these writes."""
    assert [name for name, _, _ in reference.writes] == WRITES
    assert _ck_state(reference.out) == CHECKPOINTS[-1]
    _, meta = load_tensors(reference.out / CHECKPOINT_NAME)
    assert len(meta["history"]) == 4


# --------------------------------------------------- 1. SIGKILL at random moments, repeatedly
@dataclass
class Kill:
    after_writes: int  # the kill was sent delay_s after this process's write number ...
    delay_s: float  # ... (0: after its start)
    resumed: bool  # the killed process was a --resume
    outcome: str  # "killed" or "finished" (it ended before the signal)
    state: tuple[int, int] | None  # (phase, epoch_done) of the checkpoint left behind

    def __str__(self) -> str:
        return (f"{'resume' if self.resumed else 'start'} killed {self.delay_s:.3f}s after "
                f"its write {self.after_writes}: {self.outcome}, checkpoint {self.state}")


def _writes_done(state: tuple[int, int] | None) -> int:
    """How many of a run's writes (:data:`WRITES`) a resume from ``state`` skips."""
    return 0 if state is None else CHECKPOINTS.index(state) + 1


def _kill_after(cfg: Path, out: Path, moment: tuple[int, float, float]) -> Kill:
    """Start (or resume) a run and SIGKILL it at ``moment`` (k, delay, startup delay):
    ``delay`` s after the run's k-th write (0: after its start), counted over the writes
    of a whole run; a resume that is past that write gets the kill ``startup delay`` s
    after its start. A run that ends first is left alone."""
    state = _ck_state(out)
    k, delay, startup = moment
    after_writes = max(k - _writes_done(state), 0)
    if k and not after_writes:
        delay = startup
    log = out.parent / f"{out.name}-writes.log"
    log.unlink(missing_ok=True)
    run = _start(cfg, out, log)
    deadline = time.monotonic() + TIMEOUT_S
    while after_writes and run.poll() is None and len(_read_writes(log)) < after_writes:
        if time.monotonic() > deadline:
            _kill(run)
            pytest.fail("run hangs")
        time.sleep(0.002)
    try:
        status = run.wait(delay)
    except subprocess.TimeoutExpired:
        _kill(run)
        status = _wait(run)
    outcome = "killed" if status == -signal.SIGKILL else "finished"
    assert outcome == "killed" or status == 0, run.stderr()
    return Kill(after_writes, delay, state is not None, outcome, _ck_state(out))


def _kill_moment(reference: Reference, u: float, startup: float) -> tuple[int, float, float]:
    """The moment ``u`` s into the reference run as (writes before it, seconds since,
    ``startup``: the delay for a resume already past it)."""
    times = [t for _, _, t in reference.writes]
    k = sum(t <= u for t in times)
    return k, u - (times[k - 1] if k else 0.0), startup


def _kill_plan(reference: Reference, rng: random.Random, dirs: int,
               kills: int) -> list[list[tuple]]:
    """Per run directory, the moments (see :func:`_kill_after`) of its ``kills`` kills: the first of
    its run, the next ones of its resumes. The moments are placed on the reference's
    timeline: one before its first checkpoint (the first kill of directory 0, so its next
    start is a fresh one), most of the others stratified from just before its first write
    to its last, a few between its last write and halfway to its exit; dealt at random."""
    times = [t for _, _, t in reference.writes]
    gap = (times[-1] - times[0]) / (len(times) - 1)
    lo, hi = times[0] - gap, times[-1] + 0.5 * (reference.wall_s - times[-1])
    n = dirs * kills - 1
    tail = max(1, n // 6)
    spread = [lo + (times[-1] - lo) * (i + rng.random()) / (n - tail) for i in range(n - tail)]
    spread += [rng.uniform(times[-1], hi) for _ in range(tail)]
    rng.shuffle(spread)
    moments = [_kill_moment(reference, u, rng.uniform(0.3, 0.9) * times[0])
               for u in [rng.uniform(0.3, 0.9) * times[0], *spread]]
    return [moments[kills * d:kills * (d + 1)] for d in range(dirs)]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(
    reference: Reference, tmp_path: Path
) -> None:
    """5 run directories, 15 seeded-random SIGKILLs: in each, the run is killed, then its
    resume (or, before any checkpoint, its fresh start) twice more, then it is run to the
    end; every one ends bit-identical to the reference."""
    plan = _kill_plan(reference, random.Random(0), 5, 3)
    cfg = _write_config(tmp_path)

    def trial(i: int) -> list[Kill]:
        out = tmp_path / f"run{i}"
        kills: list[Kill] = []
        for moment in plan[i]:
            kills.append(_kill_after(cfg, out, moment))
            if kills[-1].outcome == "finished":
                break
        if kills[-1].outcome == "killed":
            _finish(cfg, out)
        _assert_same_run(reference.out, out)
        return kills

    report = _parallel(trial, range(len(plan)))
    text = "\n".join(f"run{i}: " + "; ".join(map(str, kills)) for i, kills in enumerate(report))
    print(text)
    mid = {k.state for kills in report for k in kills if k.outcome == "killed"} - {
        None, CHECKPOINTS[-1]}
    assert len(mid) >= 2, "kills did not land in different epochs:\n" + text


# -------------------------------- 2. SIGKILL inside a write; 3. a full disk on a write
# Each chain runs its steps one after another in one run directory (each step a process
# with a fault in its N-th write, started fresh while there is no checkpoint, else
# resumed), then finishes the run; a step's N counts that process's own writes.
KILL_CHAIN = [1, 3, 5, 2, 2]  # first checkpoint; a phase's last; the final one; the 2 models
ENOSPC_CHAIN = [4, 5]  # a retraining epoch's checkpoint; then the dense model file


@dataclass
class Step:
    """What one faulted process left in the run directory."""

    nth: int
    target: str  # the file whose write was faulted
    before: tuple[int, int] | None  # checkpoint (phase, epoch_done) when the process started
    expected: tuple[int, int] | None  # the checkpoint its completed writes leave
    returncode: int
    stderr: str
    files: list[str]
    state: tuple[int, int] | None  # the checkpoint it left (it loaded)


@dataclass
class Chain:
    out: Path
    steps: list[Step]
    temp_after_finish: list[str]


def _remaining_writes(state: tuple[int, int] | None) -> list[tuple[str, tuple | None]]:
    """(file, checkpoint state it holds) of each write left for a run from ``state``."""
    ck = [(CHECKPOINT_NAME, s) for s in CHECKPOINTS]
    models = [(name, None) for name in WRITES[len(CHECKPOINTS):]]
    return (ck + models)[0 if state is None else CHECKPOINTS.index(state) + 1:]


def _chain(base: Path, mode: str, chain: list[int]) -> Chain:
    cfg = _write_config(base)
    out = base / "run"
    steps = []
    for nth in chain:
        before = _ck_state(out) if out.exists() else None
        left = _remaining_writes(before)
        done = [s for name, s in left[:nth - 1] if name == CHECKPOINT_NAME]
        run = _start(cfg, out, base / "writes.log", (mode, nth))
        status = _wait(run)
        steps.append(Step(nth, left[nth - 1][0], before, done[-1] if done else before,
                          status, run.stderr(),
                          sorted(p.name for p in out.iterdir()), _ck_state(out)))
    _finish(cfg, out)
    return Chain(out, steps, _temp_files(out))


@dataclass
class TmpfsRun:
    returncode: int
    stderr: str
    copy: Path  # the run directory, copied off the full filesystem, then finished
    state: tuple[int, int] | None
    temp_files: list[str]


def _tmpfs_run(base: Path, first_checkpoint_size: int) -> TmpfsRun | str:
    """A run on a tmpfs of 1.5 first checkpoints: the second checkpoint write (old and new
    file side by side) runs out of space. Mounted in a user + mount namespace, so no root
    is needed where unprivileged user namespaces are allowed. Returns why not, if not."""
    if shutil.which("unshare") is None:
        return "no unshare(1) to mount a size-limited tmpfs without root"
    mnt = base / "mnt"
    mnt.mkdir(parents=True)
    ns = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    probe = subprocess.run([*ns, f"mount -t tmpfs -o size=64k tmpfs '{mnt}'"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode:
        return f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"
    size = -(-int(1.5 * first_checkpoint_size) // 4096) * 4096
    cfg = _write_config(base)
    copy = base / "copy"
    script = (
        f"mount -t tmpfs -o size={size} tmpfs '{mnt}' || exit 97\n"
        f"'{sys.executable}' -m prunelab run '{cfg}' --out '{mnt}/run' --quiet --no-report "
        f"2> '{base}/stderr'\n"
        f"echo $? > '{base}/rc'\n"
        f"cp -a '{mnt}/run' '{copy}'\n"
    )
    r = subprocess.run([*ns, script], env=_env(), capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    state, temp = _ck_state(copy), _temp_files(copy)
    _finish(cfg, copy)
    return TmpfsRun(int((base / "rc").read_text()), (base / "stderr").read_text(), copy,
                    state, temp)


def _fresh_run(base: Path) -> Path:
    """A plain ``python -m prunelab run`` in a fresh interpreter, no wrapper."""
    out = base / "run"
    r = subprocess.run([sys.executable, "-m", "prunelab", *_run_args(_write_config(base), out)],
                       env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def faults(reference: Reference,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two chains, the tmpfs run and a plain run, 2 at a time."""

    def job(name: str) -> Chain | TmpfsRun | Path | str:
        base = tmp_path_factory.mktemp(name)
        if name == "tmpfs":
            return _tmpfs_run(base, reference.writes[0][1])
        if name == "fresh":
            return _fresh_run(base)
        return _chain(base, name, KILL_CHAIN if name == "kill" else ENOSPC_CHAIN)

    names = ["kill", "enospc", "tmpfs", "fresh"]
    return dict(zip(names, _parallel(job, names), strict=True))


def test_kill_during_writes_then_resume(faults: dict, reference: Reference) -> None:
    """SIGKILL between writing a file's temporary copy and moving it into place, 5 times
    in one run directory: the first checkpoint (nothing before it: the next start is a
    fresh one), a phase's last checkpoint, the final checkpoint, the dense model file, the
    model file. Each time the previous checkpoint is intact; the run ends bit-identical."""
    chain: Chain = faults["kill"]
    expected_targets = [CHECKPOINT_NAME] * 3 + ["dense_model.safetensors", "model.safetensors"]
    assert [s.target for s in chain.steps] == expected_targets
    for s in chain.steps:
        assert s.returncode == -signal.SIGKILL, s.stderr
        # the cut-short write left its temporary file, and not the file itself
        assert any(n.startswith(f".{s.target}.") and n.endswith(".tmp") for n in s.files), s
        assert s.target == CHECKPOINT_NAME or s.target not in s.files, s
        assert s.state == s.expected, s  # the last good checkpoint, and it loads
    assert [s.state for s in chain.steps] == [None, (0, 2), (2, 1), (3, 0), (3, 0)]
    _assert_same_run(reference.out, chain.out)


def test_leftover_temp_files_removed_on_next_start(faults: dict) -> None:
    """Fails until leftover temporary files are cleaned at the next start of a run
    directory (main's change for issue 14): today every killed write's .tmp file stays.
    Each step's start must have removed those of the steps before it."""
    chain: Chain = faults["kill"]
    for prev, s in zip(chain.steps, chain.steps[1:], strict=False):
        left = sorted(n for n in prev.files if n.endswith(".tmp"))
        assert not set(left) & set(s.files), (prev.nth, s.nth, s.files)
    assert chain.temp_after_finish == []


def _assert_one_line_space_error(returncode: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("prunelab: error:"), stderr
    assert "space" in lines[0].lower(), stderr


def test_full_disk_is_a_one_line_error(faults: dict) -> None:
    """Fails until main maps OSError from writes to exit 2 with one line (today: a
    traceback, exit 1): a checkpoint write, then a model file write."""
    for s in faults["enospc"].steps:
        _assert_one_line_space_error(s.returncode, s.stderr)


def test_full_disk_keeps_last_checkpoint_and_resumes(faults: dict,
                                                     reference: Reference) -> None:
    chain: Chain = faults["enospc"]
    assert [s.target for s in chain.steps] == [CHECKPOINT_NAME, "dense_model.safetensors"]
    for s in chain.steps:
        assert s.returncode not in (0, -signal.SIGKILL), s.stderr
        assert not [n for n in s.files if n.endswith(".tmp")], s.files  # removed on error
        assert s.state == s.expected, s
        assert "summary.json" not in s.files
        assert s.target == CHECKPOINT_NAME or s.target not in s.files, s.files
    assert [s.state for s in chain.steps] == [(1, 0), (3, 0)]
    _assert_same_run(reference.out, chain.out)


def _tmpfs(faults: dict) -> TmpfsRun:
    r = faults["tmpfs"]
    if isinstance(r, str):
        pytest.skip(r)
    return r


def test_real_full_disk_is_a_one_line_error(faults: dict) -> None:
    """Fails until main maps a failed write to exit 2 with one line. On a real full disk
    safetensors raises its own SafetensorError ("I/O error: No space left on device (os
    error 28)"), not an OSError."""
    r = _tmpfs(faults)
    _assert_one_line_space_error(r.returncode, r.stderr)


def test_real_full_disk_keeps_last_checkpoint_and_resumes(faults: dict,
                                                          reference: Reference) -> None:
    r = _tmpfs(faults)
    assert r.returncode != 0, r.stderr
    assert r.temp_files == []
    assert r.state == CHECKPOINTS[0]
    _assert_same_run(reference.out, r.copy)


def test_fresh_process_equals_the_forked_reference(faults: dict,
                                                   reference: Reference) -> None:
    """The fork server changes nothing: a plain ``python -m prunelab run`` in a fresh
    interpreter ends bit-identical to the forked reference run."""
    _assert_same_run(reference.out, faults["fresh"])


# ---------------------------------------------------------- 4. a killed rank of 2 ranks
def _torchrun(cfg: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "--max_restarts", "0", "-m", "prunelab", *_run_args(cfg, out)]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _workers(pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes of torchrun ``pid``."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for entry in env:
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = int(stat.parent.name)
    return ranks


def _stop(job: subprocess.Popen) -> None:
    """Kill a torchrun job still going, its workers (each in its own session) first."""
    if job.poll() is None:
        for pid in _workers(job.pid).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.kill()
        job.communicate()


def _communicate(job: subprocess.Popen, timeout: float) -> str:
    try:
        return job.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        _stop(job)
        raise


@pytest.mark.slow
def test_killed_rank_then_two_rank_resume_is_bit_identical(tmp_path: Path) -> None:
    """SIGKILL rank 0 (the writer) of a 2-rank job right after its first checkpoint; the
    job ends non-zero within 120 s and a 2-rank --resume ends bit-identical to an
    uninterrupted 2-rank run. (tests/test_torchrun.py kills the other rank and checks only
    that the run resumes.)"""
    cfg = _write_config(tmp_path, {**CONFIG, "train": {**CONFIG["train"], "epochs": 4}})
    ref, out = tmp_path / "ref", tmp_path / "run"
    ref_job, job = _torchrun(cfg, ref), _torchrun(cfg, out)  # side by side
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not _has_checkpoint(out):
            assert job.poll() is None, _communicate(job, TIMEOUT_S)
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.005)
        workers = _workers(job.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[0], signal.SIGKILL)
        t0 = time.monotonic()
        log = _communicate(job, TIMEOUT_S)
        assert job.returncode != 0, log
        assert time.monotonic() - t0 < TIMEOUT_S
        assert not (out / "summary.json").exists()
        _, meta = load_tensors(out / CHECKPOINT_NAME)
        assert meta["world_size"] == 2 and len(meta["history"]) < 6
        log = _communicate(ref_job, 2 * TIMEOUT_S)
        assert ref_job.returncode == 0, log
    finally:
        _stop(job)
        _stop(ref_job)
    resume = _torchrun(cfg, out)
    log = _communicate(resume, 2 * TIMEOUT_S)
    assert resume.returncode == 0, log
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
    _assert_same_run(ref, out)
