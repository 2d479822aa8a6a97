"""Shared fixtures: the repo on sys.path, tiny models, tiny synthetic .bin data."""

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


@pytest.fixture
def synthetic_data(tmp_path):
    return write_bins(tmp_path / "data")
