"""One run under the trusted runner: prepared by the driver, trained by an executor (executors.py) in a sandbox,
scored and recorded by the driver. The training phase is the seam: it needs the candidate's folder, its data folder
(the candidate's half of val) and a writable out/, and nothing held out."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from . import sandbox as sandboxes
from . import scoring, signing, training
from .files import atomic_write_bytes, atomic_write_json, load_record, sha256, slug, tail
from .judge import VLOSS_SLACK, judge_run
from .layout import prepare_candidate
from .scoring import batch_floor, evaluations
from .specs import FIXED, Config, source_files
from .splits import heldout_halves

FULL_TIMEOUT_MIN = 240.0  # a full run takes 10 to 40 min on a 2-core CPU


# Process groups of the training subprocesses running now (pgid), killed on a timeout or an interrupt.
LIVE_GROUPS: set[int] = set()


LIVE_LOCK = threading.Lock()


# ast.parse is not thread-safe on CPython 3.11.7 and older 3.12s (gh-106905: "AST constructor recursion depth
# mismatch" when two threads parse at once, seen in CI with --jobs 2); the runs' preparation parses the candidate
# (layout, adaptation), so it takes this lock. It is quick: file copies and one parse.
PREPARE_LOCK = threading.Lock()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_groups() -> int:
    with LIVE_LOCK:
        groups = list(LIVE_GROUPS)
    for g in groups:
        kill_group(g)
    return len(groups)


def default_timeout_min(max_iters) -> float:
    """4 hours for a full run; a shortened run gets its share of that, plus 5 minutes for imports and scoring."""
    if max_iters is None:
        return FULL_TIMEOUT_MIN
    return 5.0 + FULL_TIMEOUT_MIN * max_iters / FIXED["max_iters"]


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / slug(label) / f"seed{seed}"


def run_identity(config: Config, seed: int, max_iters, data_dir: Path) -> dict:
    """What a finished run must match for --resume to keep it."""
    return {
        "config": config.label,
        "seed": seed,
        "recipe_overrides": config.overrides,
        "max_iters": max_iters,
        "data_dir": str(data_dir),
    }


def finished(record: dict | None) -> bool:
    return bool(record) and record.get("status") == "ok"


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_run(jobs: int) -> dict[str, str]:
    """The thread settings of each run when `jobs` run at once: the cores shared out evenly, unless the
    environment already sets them (then they are kept as they are)."""
    if jobs <= 1 or any(k in os.environ for k in THREAD_VARS):
        return {}
    n = str(max(1, (os.cpu_count() or 1) // jobs))
    return {k: n for k in THREAD_VARS}


PASS_ENV = (*THREAD_VARS, "CUDA_VISIBLE_DEVICES")  # the only variables of the runner's that reach a sandbox


@functools.cache
def default_sandbox() -> sandboxes.Sandbox:
    """The sandbox runs get when none is named (execute_run called directly, as the tests do): `auto`, said loudly
    where it is none."""
    box, why = sandboxes.choose("auto")
    if why:
        print(f"!!! [benchmark] NO SANDBOX: {why}; the runs' figures are marked untrusted !!!", flush=True)
    return box


def run_env(seed: int, rdir: Path, data: str, threads: dict[str, str] | None, max_iters) -> dict[str, str]:
    """The training child's whole environment: the sandbox's base, the thread and device variables, the harness's."""
    env = {**sandboxes.base_env(), **{k: os.environ[k] for k in PASS_ENV if k in os.environ}, **(threads or {})}
    env.update(TRAIN_MPS_SEED=str(seed), TRAIN_MPS_OUT_DIR=str(rdir / "out"), TRAIN_MPS_DATA_DIR=data)
    if max_iters is not None:
        env["TRAIN_MPS_MAX_ITERS"] = str(max_iters)
    return env


def score_threads(env: dict[str, str]) -> int:
    """The scoring child's threads: the run's OMP_NUM_THREADS where it has one, else every core (as torch does)."""
    try:
        return max(1, int(env.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def trusted_scoring(box: sandboxes.Sandbox, ev: dict, folder: Path, rdir: Path, heldout: dict, threads: int) -> dict:
    """The runner's figures of the exported model (scoring.score in the sandbox): the held-out test loss, the
    candidate's-half loss and batch floor, the audit, and the scoring's time and budget."""
    import numpy as np

    info = ev["return"].get("model") or {}
    weights = rdir / "model.pt"
    atomic_write_bytes(weights, ev["payload"])
    test, mine = heldout_halves(heldout)
    out: dict = {}
    try:
        scored = scoring.score(
            box,
            folder / "model.py",
            weights,
            str(info.get("module") or "model"),
            str(info.get("device") or "cpu"),
            threads,
            {"test": test, "candidate_val": mine},
            FIXED["block_size"],
            rdir / "score.log",
        )
    except scoring.ScoringError as e:
        return {"test_loss": None, "scoring_error": str(e)}
    losses = scored["losses"]
    out["test_loss"] = float(losses["test"].mean())
    out["candidate_val_loss"] = float(losses["candidate_val"].mean())
    if heldout.get("evaluations") and np.isfinite(losses["candidate_val"]).all():
        out["batch_floor"] = batch_floor(losses["candidate_val"], heldout["evaluations"])
    if not math.isfinite(out["test_loss"]):
        out["test_loss"] = str(out["test_loss"])
    out.update(
        scoring_s=scored["scoring_s"],
        scoring_budget_s=scored["budget_s"],
        scoring_calls=scored["calls"],
        scoring_forked=scored["forked"],
        audit=scored["audit"],
    )
    return out


def findings(run: training.TrainingRun, ev: dict, scored: dict, box: sandboxes.Sandbox) -> dict:
    """What the runner saves beside a run (returned.json) and judges it by: the candidate's return and the hooks'
    findings as evidence, the runner's own figures (`trusted`), the channel's problems and the sandbox."""
    ret = ev.get("return") or {}
    at = ev["at_s"]
    charged = max(0.0, scored.get("scoring_s", 0.0) - scored.get("scoring_budget_s", math.inf))
    trusted = {
        "elapsed_min": (run.sandbox_s + charged) / 60.0,
        "sandbox_min": run.sandbox_s / 60.0,
        "scoring_charged_s": charged,
        "import_s": at["call"] - at["import"] if "call" in at and "import" in at else None,
        "train_span_min": (at["return"] - at["call"]) / 60.0 if "return" in at and "call" in at else None,
        "train_min": ev.get("child_train_min"),
        **scored,
    }
    if trusted["train_span_min"] is not None:
        trusted["outside_train_min"] = run.sandbox_s / 60.0 - trusted["train_span_min"]
    monitor = dict(ret.get("monitor") or {})
    monitor.pop("last_step_clock", None)
    return {
        "returned": ret.get("returned"),
        "returned_repr": ret.get("returned_repr"),
        "module_file": ret.get("module_file"),
        "trusted": trusted,
        "monitor": monitor,
        "evidence": {
            "frames": ev["frames"],
            "at_s": at,
            "problems": ev["problems"],
            "model": ret.get("model"),
            "export_error": ret.get("export_error"),
        },
        "sandbox": box.describe(),
    }


@dataclasses.dataclass
class TrainJob:
    """What a run's training phase needs, and nothing held out: the candidate's folder, the run's folder (the working
    directory; its data/ holds the candidate's data, read-only, and its out/ is the candidate's writable folder), the
    child's arguments and environment, and the timeout. Paths are the driver's; an executor that trains elsewhere
    ships the files and shows them at these paths (executors.py)."""

    folder: str
    run_folder: str
    overrides: dict | None
    env: dict[str, str]
    timeout_s: float

    @property
    def data(self) -> str:
        return str(Path(self.run_folder) / "data")

    @property
    def out(self) -> str:
        return str(Path(self.run_folder) / "out")

    def threads(self) -> int:
        return score_threads(self.env)


@dataclasses.dataclass
class TrainOutcome:
    """What an executor brings back from a training phase: the run (None when it never ran to an end: `lost` says
    why, a dead worker say), where it ran, and under which sandbox."""

    run: training.TrainingRun | None
    sandbox: dict
    host: str
    executor: str
    lost: str | None = None


def training_argv(job: TrainJob, children: Path) -> list[str]:
    """The training child's command line: the interpreter running this process, isolated from the environment."""
    argv = [sys.executable, "-E", "-s", "-B", str(children / "train_child.py"), job.folder]
    return [*argv, json.dumps(job.overrides), "{fd}"]


def confinement(job: TrainJob, children: Path, placed: tuple = ()) -> sandboxes.Confinement:
    """What the training child sees: its folder and data read-only, its out/ writable, the children and Python."""
    return sandboxes.Confinement(
        read_only=(job.folder, job.data, str(children), *sandboxes.python_paths()),
        writable=(job.out,),
        cwd=job.run_folder,
        env=tuple(job.env.items()),
        placed=placed,
    )


def local_training(job: TrainJob, box: sandboxes.Sandbox, started=lambda pgid: None, ended=lambda pgid: None):
    """The training phase on this machine, in the run's own folder: the `local` executor's, and a Ray worker's once
    it has the files. Its output goes to the run's train.log."""
    with open(Path(job.run_folder) / "train.log", "w") as log:
        run = training.run_training(
            box,
            training_argv(job, sandboxes.CHILDREN),
            confinement(job, sandboxes.CHILDREN),
            log,
            job.timeout_s,
            started,
            ended,
        )
    return TrainOutcome(run, box.describe(), platform.node(), "local")


def execute_run(
    config: Config,
    seed: int,
    index: int,
    out: Path,
    data_dir: Path,
    max_iters,
    threads: dict[str, str] | None = None,
    timeout_min: float | None = None,
    slack: float = VLOSS_SLACK,
    stopping: threading.Event | None = None,
    sandbox: sandboxes.Sandbox | None = None,
    expected_sources: dict[str, str] | None = None,
    trainer=None,
) -> dict:
    """One run under the trusted runner, its record returned (also saved, signed, as run.json). The driver prepares
    it (the runner-made data folder, the adapted copy of an original-layout candidate), `trainer` runs its training
    phase (the training child in a sandbox, its own process group and PID namespace; default: local_training here,
    else an executor's, executors.py), and the driver scores the exported model in a sandbox of its own
    (scoring.score: the held-out half never leaves the driver), judges and records it.

    `threads`: thread variables for the sandbox (threads_per_run); `timeout_min`: default
    default_timeout_min(max_iters); on a timeout the whole sandbox is killed. `stopping`: the calling benchmark's
    interrupt flag: once set, the run does not start, or a run whose sandbox was killed is recorded as interrupted
    (one flag per benchmark() call, so an interrupted benchmark leaves no state behind for the next one in the same
    process). `sandbox`: the driver's (scoring, and local training), default default_sandbox(). `expected_sources`:
    the sha256 of the configuration's saved copy when the benchmark started; a copy that differs now is not run
    (the run fails, saying so). `trainer(job, started, ended) -> TrainOutcome`."""
    stopping = threading.Event() if stopping is None else stopping
    box = default_sandbox() if sandbox is None else sandbox
    rdir = run_dir(out, config.label, seed)
    if rdir.exists():  # leftovers of a failed or interrupted attempt
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    source = out / "sources" / config.snapshot
    snapshot_sha = {f: sha256(source / f) for f in source_files(config)}
    changed = {f: h for f, h in (expected_sources or {}).items() if snapshot_sha.get(f) != h}
    with PREPARE_LOCK:
        folder, heldout, layout, adaptations = prepare_candidate(source, rdir, data_dir, max_iters)
    (rdir / "out").mkdir()
    timeout_min = default_timeout_min(max_iters) if timeout_min is None else timeout_min
    expected_iters = FIXED["max_iters"] if max_iters is None else max_iters
    heldout["evaluations"] = evaluations(expected_iters)
    env = run_env(seed, rdir, heldout["candidate_data_dir"], threads, max_iters)
    job = TrainJob(str(folder), str(rdir), config.overrides, env, 60.0 * timeout_min)
    log_path = rdir / "train.log"
    started = datetime.now().isoformat(timespec="milliseconds")

    def running(pgid: int) -> None:
        with LIVE_LOCK:
            LIVE_GROUPS.add(pgid)  # start_new_session: the sandbox leads its own group, pgid = pid
        atomic_write_json(rdir / "running.json", {"pid": pgid, "pgid": pgid, "started_at": started})

    def done(pgid: int) -> None:
        with LIVE_LOCK:
            LIVE_GROUPS.discard(pgid)

    trainer = trainer or functools.partial(local_training, box=box)
    outcome, run, ev, status = None, None, {}, None
    t0 = time.perf_counter()
    if changed:
        log_path.write_text(f"[benchmark] the saved copy {source} changed since the benchmark started: {changed}\n")
    elif stopping.is_set():
        status = "interrupted"
        log_path.write_text("")
    else:
        outcome = trainer(job, started=running, ended=done)
        run = outcome.run
        status = "lost" if outcome.lost else run.status
        if stopping.is_set() and status in (None, "lost") and (run is None or run.returncode != 0):
            status = "interrupted"
        ev = training.evidence(run) if run is not None else {}
    trained_under = dict(outcome.sandbox) if outcome else box.describe()
    trained_under["trusted"] = bool(trained_under.get("trusted")) and box.trusted  # and the driver's, for scoring
    returned = None
    if run is not None and status is None and run.returncode == 0 and "return" in ev:
        scored = {}
        if ev.get("payload"):
            scored = trusted_scoring(box, ev, folder, rdir, heldout, score_threads(env))
        returned = findings(run, ev, scored, box)
        returned["sandbox"] = trained_under
        atomic_write_json(rdir / "returned.json", returned)
    wall_s = time.perf_counter() - t0
    record = {
        **run_identity(config, seed, max_iters, data_dir),
        "order_index": index,
        "status": status or "failed",
        "returncode": None if run is None else run.returncode,
        "started_at": started,
        "finished_at": datetime.now().isoformat(timespec="milliseconds"),
        "wall_s": wall_s,
        "wall_min": wall_s / 60.0,
        "timeout_min": timeout_min,
        "source_dir": str(source),
        "sources_sha256": snapshot_sha,
        "log": str(log_path.relative_to(out)),
        "thread_env": {k: env[k] for k in THREAD_VARS if k in env},
        "pgid": None if run is None else run.pgid,
        "heldout": heldout,
        "layout": layout,
        "adaptations": adaptations,
        "expected_iters": expected_iters,
        "sandbox": trained_under,
        "executor": {"name": outcome.executor, "host": outcome.host} if outcome else None,
        "violations": [],
        "warnings": [],
    }
    metrics = load_record(rdir / "out" / "metrics.json")
    record["metrics"] = metrics
    if changed:
        record["error"] = f"the saved copy {source} changed since the benchmark started ({', '.join(changed)}): not run"
    elif status == "timeout":
        record["violations"].append(f"timeout: still running after {timeout_min:g} min; its sandbox was killed")
        record["error"] = tail(log_path)
    elif status == "lost" or (status == "interrupted" and outcome and outcome.lost):
        record["error"] = f"the run was lost where it ran ({outcome.executor} on {outcome.host}): {outcome.lost}"
    elif returned is not None:
        record["status"] = "ok"
        judge_run(record, returned, expected_iters, layout, slack)
        record["val_loss_full"] = (metrics or {}).get("val_loss_full")  # the candidate's own, from its metrics.json
        if not str(returned.get("module_file") or "").startswith(str(folder)):
            record["warnings"].append(f"train_mps was imported from {returned.get('module_file')}, not {folder}")
        if metrics is None:
            record["warnings"].append(
                "no metrics.json in TRAIN_MPS_OUT_DIR: no whole-split val; the curve is what train.log prints"
            )
        elif metrics.get("seed") != seed:
            record["warnings"].append(f"metrics.json says seed {metrics.get('seed')}, not {seed}")
        if record.get("scored_module", "").startswith("trained ("):
            record["warnings"].append(f"scored the trained model: {record['scored_module']}")
        if not trained_under["trusted"]:
            record["warnings"].append(
                f"no sandbox ({trained_under.get('name')}): the candidate could read and write what the runner can"
            )
    else:
        record["error"] = tail(log_path)
    (rdir / "running.json").unlink(missing_ok=True)
    atomic_write_json(rdir / "run.json", signing.sign(record, signing.key(out)))
    return record
