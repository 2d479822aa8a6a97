"""The time of a shortened generation under both executors on this machine: the same benchmark (configurations x
seeds, shortened, one thread a run) run by `--executor local --jobs N` and by `--executor ray` on a Ray head started
here on loopback with N CPUs (killed with its process group afterwards); the wall time of each command and whether
their trusted figures agree to the last bit.

Prints the environment first; writes JSON (default results/bench_executors.json). The benchmarks' own folders go
to --work (default: a temporary folder, removed).

    python scripts/bench_executors.py --data-dir data/tinyshakespeare --max-iters 100 --seeds 0 1 \
        --configs baseline canonical canonical:optimizer=muon canonical:ema_decay=0.0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from odegpt_eval import benchmark  # noqa: E402
from odegpt_eval.files import atomic_write_json  # noqa: E402

FIGURES = ("trusted_test_loss", "trusted_candidate_val_loss", "best_vloss", "val_loss_full")


def start_head(cpus: int, temp: Path) -> tuple[subprocess.Popen, str]:
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}"]
        + ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false"]
        + ["--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=200000000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    for _ in range(120):
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            ray.shutdown()
            return head, address
        except Exception:
            time.sleep(1.0)
    raise SystemExit("the Ray head did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["baseline", "canonical"])
    p.add_argument("--seeds", nargs="+", default=["0", "1"])
    p.add_argument("--max-iters", type=int, default=100)
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tinyshakespeare")
    p.add_argument("--jobs", type=int, default=2, help="local runs at once, and the Ray head's CPUs")
    p.add_argument("--work", type=Path, help="where the two benchmarks' folders go (default: temporary)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_executors.json")
    a = p.parse_args(argv)
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "ray": __import__("ray").__version__,
    }
    print(json.dumps(env, indent=1), flush=True)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-executors-"))
    common = ["--configs", *a.configs, "--seeds", *a.seeds, "--max-iters", str(a.max_iters), "--threads", "1"]
    common += ["--data-dir", str(a.data_dir.resolve())]
    result = {"environment": env, "command": common, "jobs": a.jobs}
    head, address = start_head(a.jobs, Path(f"/tmp/ray-bench-{os.getpid()}"))
    try:
        for name, extra in (
            ("local", ["--jobs", str(a.jobs)]),
            ("ray", ["--executor", "ray", "--ray-address", address]),
        ):
            t = time.perf_counter()
            status = benchmark.main([*common, "--out", str(work / name), *extra])
            result[name] = {"wall_min": (time.perf_counter() - t) / 60.0, "exit": status}
            print(f"[bench_executors] {name}: {result[name]}", flush=True)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    runs = {
        n: {(r["config"], r["seed"]): r for r in json.loads((work / n / "benchmark.json").read_text())["runs"]}
        for n in ("local", "ray")
    }
    result["runs"] = len(runs["local"])
    result["same_figures"] = all(
        {m: r.get(m) for m in FIGURES} == {m: runs["ray"][k].get(m) for m in FIGURES} for k, r in runs["local"].items()
    )
    result["median_run_wall_min"] = {
        n: sorted(r["wall_min"] for r in rs.values())[len(rs) // 2] for n, rs in runs.items()
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=1), flush=True)
    if a.work is None:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
