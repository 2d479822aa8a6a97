"""The executor seam (odegpt_eval/executors.py) on a real Ray instance: a head started by this module on loopback
with 2 CPUs (`ray start --head --block` in its own process group), killed with its group at the end.

Shortened benchmarks on tiny data: the same trusted figures under `ray` as under `local` for the same seeds and
threads; a run whose Ray worker is killed is recorded as lost while the others complete; --resume keeps runs
whichever executor wrote them; and a candidate on a worker cannot read the held-out tokens (an attack).

Ray is an optional extra ([cluster]): without it these tests skip, except under `make test`, which installs it and
sets ODEGPT_REQUIRE_RAY=1 so that CI cannot skip them.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from runner_helpers import processes_with, source

if os.environ.get("ODEGPT_REQUIRE_RAY"):
    import ray  # noqa: F401  (make test installs the [cluster] extra: a missing Ray fails here)
else:
    pytest.importorskip("ray", reason="Ray is the optional [cluster] extra (make test installs it)")

from odegpt_eval import benchmark  # noqa: E402
from odegpt_eval.runs import run_dir  # noqa: E402

MAX_ITERS = 3
CONFIGS = ("baseline", "canonical")
SEEDS = ("0", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The head's address; the head and every process it started are killed afterwards."""
    import ray

    port = free_port()
    temp = Path(f"/tmp/ray-odegpt-{os.getpid()}")  # short: Ray's sockets live there (107-byte limit)
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}"]
        + ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false"]
        + ["--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=200000000"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            ray.shutdown()
            break
        except Exception:
            if time.monotonic() > deadline or head.poll() is not None:
                raise
            time.sleep(1.0)
    yield address
    os.killpg(head.pid, signal.SIGKILL)
    head.wait()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(smoke_benchmark):
    return smoke_benchmark[1]


def argv(data, out, *extra):
    return ["--configs", *CONFIGS, "--seeds", *SEEDS, "--max-iters", str(MAX_ITERS), "--data-dir", str(data)] + [
        "--out",
        str(out),
        "--threads",
        "1",
        *extra,
    ]


def load(out) -> dict:
    return json.loads((out / "benchmark.json").read_text())


@pytest.fixture(scope="module")
def both(cluster, smoke_benchmark, tmp_path_factory):
    """The same shortened benchmark (2 configurations x 2 seeds, one thread a run) under each executor: conftest's
    smoke benchmark ran under `local`."""
    local, data = smoke_benchmark
    ray_out = tmp_path_factory.mktemp("executors") / "ray"
    assert benchmark.main(argv(data, ray_out, "--executor", "ray", "--ray-address", cluster)) == 0
    return local, ray_out


FIGURES = ("trusted_test_loss", "trusted_candidate_val_loss", "trusted_batch_floor", "best_vloss", "val_loss_full")


def test_ray_gives_the_trusted_figures_of_local_runs(both):
    local, ray_out = (load(d) for d in both)
    assert ray_out["settings"]["executor"]["name"] == "ray" and ray_out["settings"]["executor"]["cpus"] == 2
    assert ray_out["settings"]["executor"]["worker_sandbox"] == "bubblewrap"  # auto resolved here: required there
    by_key = {(r["config"], r["seed"]): r for r in local["runs"]}
    assert len(ray_out["runs"]) == len(by_key) == 4
    for r in ray_out["runs"]:
        mine = by_key[(r["config"], r["seed"])]
        assert r["status"] == "ok" and r["violations"] == [] and r["executor"]["name"] == "ray"
        assert mine["executor"]["name"] == "local" and r["sandbox"]["name"] == "bubblewrap" == mine["sandbox"]["name"]
        assert {m: r[m] for m in FIGURES} == {m: mine[m] for m in FIGURES}  # to the last bit
        assert r["optimizer_steps"] == mine["optimizer_steps"] == MAX_ITERS
        assert r["thread_env"] == mine["thread_env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # what the worker's run wrote came back to the driver's run folder
        rdir = Path(both[1]) / Path(r["log"]).parent
        assert (rdir / "out" / "ckpt.pt").is_file() and "SHORT run" in (rdir / "train.log").read_text()


def test_resume_keeps_runs_whichever_executor_wrote_them(both, cluster, data, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(both[0], out)  # written by `local`
    shutil.rmtree(run_dir(out, "canonical", 1))
    assert benchmark.main(argv(data, out, "--resume", "--executor", "ray", "--ray-address", cluster)) == 0
    assert capsys.readouterr().out.count("skipped, finished earlier") == 3
    executors = {(r["config"], r["seed"]): r["executor"]["name"] for r in load(out)["runs"]}
    assert executors == {
        ("baseline", 0): "local",
        ("canonical", 0): "local",
        ("baseline", 1): "local",
        ("canonical", 1): "ray",
    }
    back = tmp_path / "back"  # and local resumes what ray wrote
    shutil.copytree(both[1], back)
    assert benchmark.main(argv(data, back, "--resume")) == 0
    assert capsys.readouterr().out.count("skipped, finished earlier") == 4


def test_a_worker_without_the_drivers_sandbox_runs_nothing_and_names_the_fix(monkeypatch, tmp_path):
    """The task a worker runs, called here as Ray would call it, on a machine where bwrap is missing: the candidate
    never starts (it would run unconfined), and the run's error says what to install."""
    from odegpt_eval import executors
    from odegpt_eval import sandbox as sb

    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.setattr(sb.sys, "platform", "linux")
    fields = {"folder": str(tmp_path / "f"), "run_folder": str(tmp_path / "r"), "overrides": None, "env": {}}
    result = executors.train_on_worker({**fields, "timeout_s": 60.0}, {}, "bubblewrap")
    assert set(result) == {"error", "host"} and "apt-get install bubblewrap" in result["error"]
    assert not (tmp_path / "r").exists()  # nothing was laid out, nothing ran


HANG_MARKER = "617.25"
HANG = (
    "    data_dir = find_data_dir()\n",
    f'    import subprocess\n\n    subprocess.Popen(["sleep", "{HANG_MARKER}"])\n    time.sleep(600)\n'
    "    data_dir = find_data_dir()\n",
)


def ray_worker_of(pid: int) -> int | None:
    """The Ray worker process above a process (its parent chain up to a `ray::` process title)."""
    while pid > 1:
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None
        if cmdline.startswith("ray::"):
            return pid
        pid = ppid
    return None


def test_a_run_whose_worker_dies_is_recorded_and_the_others_finish(cluster, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("odegpt_eval.benchmark.check_train_mps", lambda source, filename: [])  # the hang: not tested
    hang = tmp_path / "hang"
    hang.mkdir()
    text = source("train_mps.py")
    assert text.count(HANG[0]) == 1
    (hang / "train_mps.py").write_text(text.replace(*HANG))
    (hang / "model.py").write_text(source("model.py"))
    killed = []

    def kill_its_worker():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            for pid in processes_with(f"sleep {HANG_MARKER}"):
                worker = ray_worker_of(pid)
                if worker:
                    os.kill(worker, signal.SIGKILL)
                    killed.append(worker)
            time.sleep(0.5)

    killer = threading.Thread(target=kill_its_worker, daemon=True)
    killer.start()
    out = tmp_path / "out"
    args = ["--configs", str(hang), "canonical", "--seeds", "0", "--max-iters", str(MAX_ITERS), "--threads", "1"]
    args += ["--data-dir", str(data), "--out", str(out), "--executor", "ray", "--ray-address", cluster]
    assert benchmark.main(args) == 1  # a run did not finish
    killer.join(timeout=5)
    assert killed, "the hanging run's Ray worker was never found"
    runs = {r["config"]: r for r in load(out)["runs"]}
    lost = runs[str(hang)]
    assert lost["status"] == "lost" and "the run was lost where it ran (ray" in lost["error"]
    assert runs["canonical"]["status"] == "ok" and runs["canonical"]["violations"] == []
    assert processes_with(f"sleep {HANG_MARKER}") == []  # the sandbox died with its worker
    assert "--resume" in capsys.readouterr().out  # and --resume runs it again


SNOOP = """\
    import json as _json, os as _os
    _found = {}
    for _p in PATHS:
        try:
            _found[_p] = sorted(_os.listdir(_p)) if _os.path.isdir(_p) else _os.path.getsize(_p)
        except OSError as _e:
            _found[_p] = type(_e).__name__
    _mine = _os.path.join(_os.environ["TRAIN_MPS_DATA_DIR"], "val.bin")
    _found["own_val_bytes"] = _os.path.getsize(_mine)
    with open(_os.path.join(_os.environ["TRAIN_MPS_OUT_DIR"], "found.json"), "w") as _f:
        _json.dump(_found, _f)
"""
FIRST_LINE = "    t0 = time.time()  # first line, as in the original train_mps.py: loading the data counts\n"


def test_a_candidate_on_a_worker_cannot_read_the_held_out_tokens(cluster, data, tmp_path, monkeypatch):
    """The worker holds the candidate's half of val only (the driver ships no more), and its sandbox shows nothing
    of the driver's data folder or run records."""
    monkeypatch.setattr("odegpt_eval.benchmark.check_train_mps", lambda source, filename: [])
    out = tmp_path / "out"
    snoop = tmp_path / "snoop"
    snoop.mkdir()
    rdir = run_dir(out, str(snoop), 0)
    paths = [str(data / "val.bin"), str(data), str(rdir), str(out)]
    text = source("train_mps.py")
    (snoop / "train_mps.py").write_text(text.replace(FIRST_LINE, FIRST_LINE + SNOOP.replace("PATHS", repr(paths))))
    (snoop / "model.py").write_text(source("model.py"))
    args = ["--configs", str(snoop), "--seeds", "0", "--max-iters", str(MAX_ITERS), "--threads", "1"]
    args += ["--data-dir", str(data), "--out", str(out), "--executor", "ray", "--ray-address", cluster]
    assert benchmark.main(args) == 0
    found = json.loads((rdir / "out" / "found.json").read_text())  # came back from the worker
    (r,) = load(out)["runs"]
    assert found[str(data / "val.bin")] == found[str(data)] == "FileNotFoundError"
    assert found[str(rdir)] == ["data", "out"] and found[str(out)] == ["runs", "sources"]
    assert found["own_val_bytes"] == 2 * r["heldout"]["candidate_val_tokens"] < (data / "val.bin").stat().st_size
    assert r["violations"] == [] and r["executor"]["name"] == "ray"
