"""Shared fixtures: the repo on sys.path, tiny models, tiny synthetic .bin data, the checker, short runs."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_bins(folder: Path, n_train: int = 4000, n_val: int = 1000, vocab: int = 50257, seed: int = 0) -> Path:
    """Random uint16 token files, enough for block_size 64 windows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab, n_train).astype(np.uint16).tofile(folder / "train.bin")
    rng.integers(0, vocab, n_val).astype(np.uint16).tofile(folder / "val.bin")
    return folder


def makefile_text() -> str:
    """The Makefile with its continuation lines joined and each `NAME := value` variable (no $(shell ...)) expanded
    wherever it is referenced, so that tests read the configurations a target really runs."""
    import re

    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    simple = {m[1]: m[2].strip() for m in re.finditer(r"^(\w+)\s*:=(.*)$", text, flags=re.M) if "$(shell" not in m[2]}
    for _ in range(10):  # nested references, e.g. REFERENCE := $(EULER),...
        expanded = re.sub(r"\$\((\w+)\)", lambda m: simple.get(m[1], m[0]), text)
        if expanded == text:
            break
        text = expanded
    return text


@pytest.fixture(scope="session")
def smoke_benchmark(tmp_path_factory):
    """(out dir, data dir) of one finished smoke benchmark: baseline and canonical, seeds 0 and 1, 3 iterations, one
    thread a run, on write_bins' data. test_benchmark reads it, and test_executors compares Ray's runs with it."""
    from odegpt_eval import benchmark

    root = tmp_path_factory.mktemp("benchmark")
    data = write_bins(root / "data")
    out = root / "out"
    argv = ["--configs", "baseline", "canonical", "--seeds", "0", "1", "--max-iters", "3", "--threads", "1"]
    assert benchmark.main([*argv, "--data-dir", str(data), "--out", str(out)]) == 0
    return out, data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """write_bins' data, shared by the runner's test modules."""
    return write_bins(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def canonical_run(tmp_path_factory, tiny_data):
    """The honest run of today's files on tiny_data (MAX_ITERS iterations) that attacks and checks compare with;
    clean even under the strict clock (judge.ELAPSED_SLACK_MIN 0). test_trusted_runner and test_sandbox_attacks."""
    from runner_helpers import run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("odegpt_eval.judge.ELAPSED_SLACK_MIN", 0.0)
        r = run(tmp_path_factory.mktemp("canonical"), "canonical", data=tiny_data)
    assert r["status"] == "ok" and r["violations"] == [], (r["violations"], r.get("error"))
    return r


@pytest.fixture
def synthetic_data(tmp_path):
    return write_bins(tmp_path / "data")


def load_checker(name: str = "check_constraints"):
    """The static checker (odegpt_eval/constraints.py, the module behind scripts/check_constraints.py)."""
    return importlib.import_module("odegpt_eval.constraints")


@pytest.fixture
def run_env(request, monkeypatch, synthetic_data, tmp_path):
    """train() on the synthetic data, out/ in tmp_path, shortened to the test module's SHORT iterations."""
    monkeypatch.setenv("TRAIN_MPS_DATA_DIR", str(synthetic_data))
    monkeypatch.setenv("TRAIN_MPS_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAIN_MPS_MAX_ITERS", request.module.SHORT)
    monkeypatch.delenv("TRAIN_MPS_SEED", raising=False)
    return tmp_path / "out"
