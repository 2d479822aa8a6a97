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
