"""Where runs' training phases run: the executor seam. The driver prepares each run, scores it and records it
(runs.execute_run); an executor only runs its training phase, the training child in a sandbox, and brings back what
the child said and wrote.

  local   this machine, in the run's own folder, `--jobs` at a time (a thread per run waits on its sandbox). The
          default.
  ray     a Ray cluster (`--executor ray --ray-address auto|HOST:PORT`): each (configuration, seed) is a Ray task that
          asks for the run's threads in CPUs (and `--gpus-per-run` GPUs on CUDA workers). The driver ships the
          candidate's two files and its data folder (train.bin, its half of val; never the held-out half, which
          stays on the driver with the scoring) through Ray's object store; the worker lays them out in a folder of
          its own and runs the same training child, under the same sandbox (chosen on the worker: bubblewrap shows
          the files at the driver's paths, so the run is the one a local run would be) with the same timeout and
          process-group kill; the child's frames, train.log and out/ come back to the driver, which writes them. A
          worker that dies mid-run gives a record that says so (status `lost`, retried by --resume); the other runs go
          on. Workers run the sandbox the driver resolved: where the driver has bubblewrap, a worker without it (or
          where it cannot start) does not run the candidate unconfined; the run is lost with the reason and the fix.
          Ray is an optional extra (`pip install -e '.[cluster]'`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path

from . import sandbox as sandboxes
from . import training
from .files import atomic_write_bytes
from .runs import TrainJob, TrainOutcome, confinement, kill_all_groups, local_training, training_argv
from .specs import BenchmarkError

EXECUTORS = ("local", "ray")
PACKAGE = Path(__file__).resolve().parent
RAY_HINT = "pip install -e '.[cluster]' (or make setup EXTRAS=dev,data,plots,jax,cluster)"


class LocalExecutor:
    """Training phases on this machine (runs.local_training), each in its own sandbox and process group."""

    name = "local"

    def __init__(self, sandbox: sandboxes.Sandbox):
        self.sandbox = sandbox

    def describe(self) -> dict:
        return {"name": self.name, "host": platform.node()}

    def trainer(self, job: TrainJob, started=lambda pgid: None, ended=lambda pgid: None) -> TrainOutcome:
        return local_training(job, self.sandbox, started, ended)

    def cancel_all(self) -> int:
        return kill_all_groups()

    def close(self) -> None:
        pass


def folder_files(folder: Path) -> dict[str, Path]:
    """Every regular file under a folder, by its path."""
    return {str(p): p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def pack_out(out: Path) -> dict[str, tuple[str, bytes | str]]:
    """A run's out/ as it was left: files as bytes, links as their targets (train_mps writes metrics.json and
    ckpt.pt as links through `latest`), by their path under out/."""
    packed: dict[str, tuple[str, bytes | str]] = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if p.is_symlink():
            packed[rel] = ("link", os.readlink(p))
        elif p.is_file():
            packed[rel] = ("file", p.read_bytes())
    return packed


def unpack_out(packed: dict, out: Path) -> None:
    for rel, (kind, value) in packed.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "link":
            if path.is_symlink() or path.exists():
                path.unlink()
            os.symlink(value, path)
        else:
            atomic_write_bytes(path, value)


def train_on_worker(fields: dict, files: dict, sandbox_name: str) -> dict:
    """The Ray task: lay out the run's files, run its training phase, return what came of it. Files are shown to
    the sandbox at the driver's paths (bubblewrap binds this worker's copies there); without a sandbox they are
    written at those paths on this worker."""
    import ray

    files = {path: ray.get(data) if isinstance(data, ray.ObjectRef) else data for path, data in files.items()}
    job = TrainJob(**fields)
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPU Ray gave this task
        job.env = {**job.env, "CUDA_VISIBLE_DEVICES": os.environ["CUDA_VISIBLE_DEVICES"]}
    try:
        box, why = sandboxes.choose(sandbox_name)
    except sandboxes.SandboxError as e:
        return {"error": f"no {sandbox_name} sandbox on this worker: {e}", "host": platform.node()}
    local = tempfile.mkdtemp(prefix="odegpt-run-")
    try:
        root = Path(local) if box.trusted else Path("/")
        for path, data in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for d in (job.out, job.folder, job.data):
            (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        placed = tuple((d, str(root / d.lstrip("/"))) for d in (job.folder, job.data, job.out)) if box.trusted else ()
        log_path = Path(local) / "train.log"
        with open(log_path, "w") as log:
            run = training.run_training(
                box,
                training_argv(job, sandboxes.CHILDREN),
                confinement(job, sandboxes.CHILDREN, placed),
                log,
                job.timeout_s,
            )
        return {
            "run": run,
            "log": log_path.read_bytes(),
            "out": pack_out(root / job.out.lstrip("/")),
            "sandbox": {**box.describe(), **({"why": why} if why else {})},
            "host": platform.node(),
        }
    finally:
        shutil.rmtree(local, ignore_errors=True)


class RayExecutor:
    """Training phases as Ray tasks on a cluster's workers (train_on_worker)."""

    name = "ray"

    def __init__(self, address: str, sandbox_name: str, gpus_per_run: float = 0.0):
        """sandbox_name: what every worker must run candidates under (sandbox.choose's name): the driver's own."""
        try:
            import ray
        except ImportError:
            raise BenchmarkError(f"--executor ray needs Ray, which is not installed: {RAY_HINT}") from None
        self.ray = ray
        self.address, self.sandbox_name, self.gpus = address, sandbox_name, gpus_per_run
        try:  # the package travels to every worker: a worker needs the Python environment, not this checkout
            ray.init(
                address=address,
                runtime_env={"py_modules": [str(PACKAGE)]},
                logging_level="ERROR",
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BenchmarkError(
                f"cannot reach a Ray cluster at {address!r} ({e}): start one (`ray start --head`) or name it with "
                "--ray-address HOST:PORT"
            ) from None
        self.remote = ray.remote(max_retries=0)(train_on_worker)
        self.inflight: set = set()
        self.lock = threading.Lock()
        self.shared: dict[str, object] = {}  # sha256 -> ObjectRef of a data file many runs share (train.bin)

    def describe(self) -> dict:
        resources = self.ray.cluster_resources()
        return {
            "name": self.name,
            "address": self.address,
            "cpus": resources.get("CPU"),
            "gpus": resources.get("GPU"),
            "worker_sandbox": self.sandbox_name,
        }

    def ship(self, path: Path):
        """A file's bytes for a task: files over 1 MB (train.bin) once per benchmark through the object store."""
        data = path.read_bytes()
        if len(data) < 1 << 20:
            return data
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            if digest not in self.shared:
                self.shared[digest] = self.ray.put(data)
            return self.shared[digest]

    def trainer(self, job: TrainJob, started=lambda pgid: None, ended=lambda pgid: None) -> TrainOutcome:
        ray = self.ray
        files = {p: self.ship(f) for folder in (job.folder, job.data) for p, f in folder_files(Path(folder)).items()}
        fields = {k: getattr(job, k) for k in ("folder", "run_folder", "overrides", "env", "timeout_s")}
        options = {"num_cpus": job.threads(), "num_gpus": self.gpus}
        ref = self.remote.options(**options).remote(fields, files, self.sandbox_name)
        with self.lock:
            self.inflight.add(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:  # the worker died, its node left, the task was cancelled
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return TrainOutcome(
                None, {"name": "unknown", "trusted": False}, "unknown", self.name, f"{type(e).__name__}: {reason}"
            )
        finally:
            with self.lock:
                self.inflight.discard(ref)
        if "error" in result:
            unknown = {"name": "unknown", "trusted": False}
            return TrainOutcome(None, unknown, result.get("host", "unknown"), self.name, result["error"])
        atomic_write_bytes(Path(job.run_folder) / "train.log", result["log"])
        unpack_out(result["out"], Path(job.out))
        return TrainOutcome(result["run"], result["sandbox"], result["host"], self.name)

    def cancel_all(self) -> int:
        with self.lock:
            refs = list(self.inflight)
        for ref in refs:
            self.ray.cancel(ref, force=True)
        return len(refs)

    def close(self) -> None:
        self.ray.shutdown()


def make(name: str, sandbox: sandboxes.Sandbox, address: str = "auto", gpus_per_run: float = 0.0):
    """The executor `name`, whose runs train under `sandbox`, the one the driver resolved (on Ray, by its name on
    every worker: `auto` resolved to bubblewrap here requires bubblewrap there)."""
    if name == "local":
        return LocalExecutor(sandbox)
    if name == "ray":
        return RayExecutor(address, sandbox.name, gpus_per_run)
    raise BenchmarkError(f"unknown executor {name!r}; one of {', '.join(EXECUTORS)}")
