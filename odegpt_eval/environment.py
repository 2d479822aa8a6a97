"""The environment a benchmark records and prints first: versions, machine, load, git state, data."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from .files import sha256
from .specs import LEVERS_FILE, ROOT, SOURCE_FILES


def git_state() -> dict:
    def git(*args):
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--", *SOURCE_FILES, LEVERS_FILE)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty_sources": None}
    return {"git_commit": commit, "git_dirty_sources": bool(dirty) if dirty is not None else None}


def environment(argv: list[str], data_dir: Path, script: Path = ROOT / "scripts" / "benchmark.py") -> dict:
    """What a run of `script` with `argv` records first."""
    import numpy as np
    import torch

    env = {
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        **git_state(),
        "command": shlex.join([sys.executable, str(script), *argv]),
        "cwd": os.getcwd(),
        "data": {
            "dir": str(data_dir),
            **{
                name: {"bytes": (data_dir / name).stat().st_size, "sha256": sha256(data_dir / name)}
                for name in ("train.bin", "val.bin")
                if (data_dir / name).exists()
            },
        },
    }
    return env


def print_environment(env: dict, tag: str = "benchmark") -> None:
    print(f"[{tag}] environment", flush=True)
    for k, v in env.items():
        print(f"  {k:18} {v}", flush=True)
