import copy

# Train the odegpt model on Shakespeare under the harness contract.
#
# The harness copies model.py and train_mps.py into a folder, imports this module, calls train()
# and ranks candidates by the returned (best_vloss, elapsed_min). The fixed block below is the
# contract; everything else (the recipe) is ours to improve, each switch measured (see README).
#
# Environment variables (for tests, smoke runs and benchmarks; the harness sets none of them):
#   TRAIN_MPS_DATA_DIR   the folder holding train.bin / val.bin, or its parent holding shakespeare/
#                        (default: data/shakespeare in this file's folder, the working directory, or
#                        any folder above either: the DreamTeam repository keeps it at its root)
#   TRAIN_MPS_OUT_DIR    where the metrics JSON and the checkpoint go (default: out/ beside this file); checked
#                        before training, and the pair is replaced together or not at all (write_pair)
#   TRAIN_MPS_SEED       seed (default Recipe.seed), an integer
#   TRAIN_MPS_MAX_ITERS  shortens the run to N >= 1 iterations (tests and smoke runs only; announced loudly)
# A value that does not parse stops the run before any work, with an error naming the variable.
#
# Self-contained: stdlib, numpy, torch and the model.py beside this file (loaded from there even when
# another module named `model` was imported first); no side effects at import beyond loading it.
# Python >= 3.9, torch >= 2.3. The file starts with an import and holds no Markdown code fence, so an
# agent harness that cuts it out of an LLM reply accepts it as it is.
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def load_model_module():
    """The model.py in this file's folder, as a module. A harness that imported another `model` first
    (DreamTeam's main.py imports its own at startup, then loads each candidate's train_mps.py by path)
    would otherwise hand every candidate that module, and a candidate's edits of model.py would be
    silently ignored. Where `import model` finds this same file, it is imported as usual."""
    path = Path(__file__).resolve().parent / "model.py"

    def is_beside(origin) -> bool:
        return bool(origin) and Path(origin).resolve() == path

    loaded = sys.modules.get("model")
    if loaded is not None and is_beside(getattr(loaded, "__file__", None)):
        return loaded
    if loaded is None:
        spec = importlib.util.find_spec("model")
        if spec is not None and is_beside(spec.origin):
            return importlib.import_module("model")
    if not path.exists():
        raise ImportError(f"model.py is missing beside {Path(__file__).resolve()}: copy both files into the folder")
    name = "odegpt_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]  # one per folder
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look classes up by their module's name
    spec.loader.exec_module(module)
    return module


_model = load_model_module()
GPT, GPTConfig = _model.GPT, _model.GPTConfig

# fmt: off
# --- fixed block: the harness ranks candidates under exactly these settings; do not edit ---
batch_size = 8
block_size = 64
n_layer = 4
n_head = 4
n_embd = 32
max_iters = 10001
eval_interval = 100
device = 'mps'
ctx = nullcontext()
# --- end of fixed block ---
# fmt: on

PREPARE_HINT = "prepare the data with `make data` (or `python scripts/prepare_shakespeare.py`)"
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("constant", "cosine", "wsd")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # 2.0 and True are no counts


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_unit(v) -> bool:
    return _is_real(v) and 0 <= v < 1


# (field, test, what it must be): the training fields' valid values, checked when a Recipe is built
RECIPE_RULES = (
    ("seed", lambda v: _is_int(v) and 0 <= v < 2**63, "an integer in [0, 2**63)"),
    ("optimizer", lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
    ("learning_rate", lambda v: _is_real(v) and v > 0, "a finite number > 0"),
    ("muon_lr", lambda v: _is_real(v) and v > 0, "a finite number > 0"),
    ("min_lr", lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    ("schedule", lambda v: v in SCHEDULES, "one of " + ", ".join(SCHEDULES) + " (lower case)"),
    ("warmup_iters", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("decay_frac", lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("weight_decay", lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    ("beta1", _is_unit, "a number in [0, 1)"),
    ("beta2", _is_unit, "a number in [0, 1)"),
    ("grad_clip", lambda v: _is_real(v) and v >= 0, "a finite number >= 0 (0 disables clipping)"),
    ("ema_decay", _is_unit, "a number in [0, 1) (0 disables the EMA)"),
    ("select_window", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 ends with the last weights)"),
    ("ngram_distill", _is_unit, "a number in [0, 1) (0 = no teacher)"),
    ("ngram_loo", lambda v: isinstance(v, bool), "True or False"),
    ("random_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = train with steps_per_layer only)"),
    ("refine_prob", lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1] (1 = every step draws)"),
    ("fused_optimizer", lambda v: isinstance(v, bool), "True or False"),
)


@dataclass(frozen=True)
class Recipe:
    """Everything outside the fixed block that shapes training. Defaults are the canonical recipe."""

    seed: int = 0
    # model: each field's default is GPTConfig's in model.py, its one source (edit the model there); a Recipe field
    # set here overrides it for a run (benchmark specs: canonical:solver=rk4,...). The canonical's integrator is heun
    # under parallel splitting, 1 step per layer in evaluation; random_steps below draws 1 or 2 per training step,
    # so the trained weights are a flow (issue #14; issue #32 for the step counts: README).
    vocab_size: int = GPTConfig.vocab_size
    bias: bool = GPTConfig.bias
    dropout: float = GPTConfig.dropout
    solver: str = GPTConfig.solver
    steps_per_layer: int = GPTConfig.steps_per_layer
    splitting: str = GPTConfig.splitting
    zero_init_proj: bool = GPTConfig.zero_init_proj
    # output softmax over the tokens seen in train.bin only (~11.5k of 50304 on Shakespeare), the others
    # sharing their Good-Turing probability uniformly: a proper distribution over all 50304 tokens at
    # ~1/3.8 of the step's cost (scripts/bench_integrators.py; the output layer dominates it). False:
    # GPT-2's full softmax.
    shortlist: bool = True
    kinetic_energy: float = GPTConfig.kinetic_energy
    jacobian_frobenius: float = GPTConfig.jacobian_frobenius
    ngram_buckets: int = GPTConfig.ngram_buckets  # hashed bigram + trigram input embeddings; 0 = off
    token_noise: float = GPTConfig.token_noise  # data noising: probability of a blank input token; 0 = off
    head_width: int = GPTConfig.head_width  # nonlinear output features beside the tied logits; 0 = off
    # loss design (issue #16): the training loss is (1 - a) * CE(targets) + a * CE(teacher), the teacher an
    # interpolated Kneser-Ney trigram fitted on train.bin (NgramTeacher); training only, the model stays a network.
    ngram_distill: float = 0.0
    # True: the teacher leaves each position's own trigram occurrence out of its counts (NgramTeacher), so that on
    # training text it predicts as on new text
    ngram_loo: bool = False
    # continuous depth (issue #14): K > 0 trains each step under a step count drawn uniformly from steps_per_layer..K
    # (the solver and splitting unchanged); evaluation and the checkpoint keep steps_per_layer. A loss that must hold
    # under every step size cannot lean on one step size's error: the trained weights become a flow, which a finer
    # or adaptive integrator of the same fields reproduces. 0 = off (a fixed step: a smaller h alone is not enough).
    random_steps: int = 2
    # the share of training steps that draw their step count (from steps_per_layer..random_steps); the others train at
    # steps_per_layer. 1.0 = every step draws. Below 1, the finer integrator runs on a fraction of the steps only
    # (after Ott et al. 2021, "ResNet after all?"), for fewer field evaluations per step on average (step_counts).
    refine_prob: float = 1.0
    # optimizer
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    # AdamW as one kernel per parameter group (fused; foreach where this torch or device has no fused kernel). False:
    # nanoGPT's configure_optimizers, whose per-tensor loop dispatches ~10 kernels per parameter tensor on CPU and MPS
    # (270 of the 398 of a baseline training step). Same update rule, other rounding.
    fused_optimizer: bool = True
    learning_rate: float = 3e-3  # peak (AdamW groups)
    muon_lr: float = 0.02
    min_lr: float = 3e-4
    # constant | cosine | wsd. Warmup-stable-decay (the peak until the last decay_frac of the run, then linear to
    # min_lr) beat cosine with the EMA on each of 3 seeds (README, candidates table); its peak stays 3e-3 (4.5e-3
    # and 6e-3 did not beat it on 2 of 3 seeds).
    schedule: str = "wsd"
    warmup_iters: int = 200
    decay_frac: float = 0.2  # wsd: final fraction of the run spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    # > 0: evaluate (and end with) an exponential moving average of the weights; 0 disables. 0.999 (a
    # ~1000-step horizon) lowered the whole-split val loss on each of 3 seeds (README, ablation table). Bias-corrected
    # as Adam's moments are (ema_weight), so that it averages the weights trained so far, never the initial ones.
    ema_decay: float = 0.999
    # model selection: > 0 keeps the weights whose mean val loss over the last `select_window` evaluations is
    # lowest and ends train() with them (early stopping); 0 ends with the last weights. Costs a copy per new best.
    select_window: int = 0

    def __post_init__(self):
        """Reject at once what train() could not run. The model fields are GPTConfig's to judge (one set of
        rules): the config of this recipe's model is built here (without its shortlist) and discarded."""
        GPTConfig(**model_fields(self))
        for name, ok, rule in RECIPE_RULES:
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        # min_lr is the floor a decaying schedule ends at; above the peak the "decay" would be a rise (and
        # lr_at's multiplier would leave [0, 1]). The constant schedule never reads it.
        if self.schedule != "constant" and self.min_lr > self.learning_rate:
            raise ValueError(
                f"min_lr ({self.min_lr!r}) must be <= learning_rate ({self.learning_rate!r}) under "
                f"schedule={self.schedule!r}: it is the floor the schedule decays to"
            )
        if self.random_steps and self.random_steps < self.steps_per_layer:
            raise ValueError(
                f"random_steps ({self.random_steps!r}) is the largest step count drawn, from steps_per_layer "
                f"({self.steps_per_layer!r}) up: give 0 (off) or a value >= steps_per_layer"
            )
        if self.refine_prob != 1.0 and not self.random_steps:
            raise ValueError(
                "refine_prob is the share of steps that draw from random_steps, which is 0 (off): set both"
            )
        if self.ngram_loo and not self.ngram_distill:
            raise ValueError("ngram_loo=True changes the n-gram teacher, which ngram_distill=0 leaves off: set both")


def train_vocabulary(tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, float]:
    """The shortlist of a training split: the token ids it holds (ascending), and the probability left
    for all the others, Good-Turing's N1 / N (the share of tokens seen once), kept within [1/N, 1 - 1/N]
    so that neither side of the split gets probability 0 or 1."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)
    if len(counts) > vocab_size:
        raise DataError(f"token id {len(counts) - 1} >= vocab_size {vocab_size}: not GPT-2 BPE; {PREPARE_HINT}")
    n, n_once = int(counts.sum()), int((counts == 1).sum())
    if n < 2:
        raise DataError(f"a shortlist needs at least 2 training tokens, got {n}; {PREPARE_HINT}")
    return np.flatnonzero(counts), min(max(n_once, 1), n - 1) / n


def model_fields(r: Recipe) -> dict:
    """The GPTConfig fields of the recipe's model but its shortlist: the fixed block's sizes, the recipe's rest."""
    return dict(
        block_size=block_size,
        vocab_size=r.vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=r.dropout,
        bias=r.bias,
        solver=r.solver,
        steps_per_layer=r.steps_per_layer,
        splitting=r.splitting,
        kinetic_energy=r.kinetic_energy,
        jacobian_frobenius=r.jacobian_frobenius,
        zero_init_proj=r.zero_init_proj,
        ngram_buckets=r.ngram_buckets,
        token_noise=r.token_noise,
        head_width=r.head_width,
    )


def model_config(r: Recipe, vocabulary: Optional[tuple[np.ndarray, float]] = None) -> GPTConfig:
    """The model train() builds: the fixed block's sizes and the recipe's model fields. A shortlist recipe
    needs the training split's `vocabulary` (train_vocabulary); one covering every token falls back to
    the full softmax."""
    shortlist_size, unseen_mass = 0, 0.0
    if r.shortlist:
        if vocabulary is None:
            raise ValueError("Recipe.shortlist needs the training split's vocabulary: pass train_vocabulary(tokens)")
        if len(vocabulary[0]) < r.vocab_size:
            shortlist_size, unseen_mass = len(vocabulary[0]), vocabulary[1]
    return GPTConfig(**model_fields(r), shortlist_size=shortlist_size, unseen_mass=unseen_mass)


def make_model(r: Recipe, train_tokens: np.ndarray) -> GPT:
    """The recipe's model, its shortlist (if any) taken from the training tokens."""
    vocabulary = train_vocabulary(train_tokens, r.vocab_size) if r.shortlist else None
    model = GPT(model_config(r, vocabulary))
    if model.config.shortlist_size:
        model.set_shortlist(torch.from_numpy(vocabulary[0]))
    return model


def window_best(recent: deque, vloss: float, best: float, window: int) -> Optional[float]:
    """Model selection's rule: record vloss; return the mean of the last `window` evaluations when the
    window is full and the mean beats `best` (the caller then keeps the current weights), else None."""
    recent.append(vloss)
    mean = sum(recent) / len(recent)
    return mean if window > 0 and len(recent) == recent.maxlen and mean < best else None


def lr_at(step: int, total: int, r: Recipe) -> float:
    """Learning rate multiplier in [0, 1] relative to the peak, a pure function of the step."""
    if r.schedule == "constant":
        return 1.0
    if step < r.warmup_iters:
        return (step + 1) / r.warmup_iters
    floor = r.min_lr / r.learning_rate
    if r.schedule == "cosine":
        progress = min(1.0, (step - r.warmup_iters) / max(1, total - r.warmup_iters))
        return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))
    if r.schedule == "wsd":
        decay_start = total - int(r.decay_frac * total)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return floor + (1.0 - floor) * (1.0 - progress)
    raise ValueError(f"unknown schedule {r.schedule!r}; valid: {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------------------------------------
# data


class DataError(RuntimeError):
    """The training data is missing or malformed; the message names the fix."""


def data_dir_candidates() -> list:
    """Where train() looks for train.bin / val.bin, in order. TRAIN_MPS_DATA_DIR names the folder or, as
    the original train_mps.py's data path did, its parent holding shakespeare/. Otherwise data/shakespeare
    in this file's folder, in the working directory, and in each folder above them (DreamTeam keeps
    its data at the repository root and runs from src/dreamteam or from the root)."""
    env = os.environ.get("TRAIN_MPS_DATA_DIR")
    if env:
        return [Path(env), Path(env) / "shakespeare"]
    here, cwd = Path(__file__).resolve().parent, Path.cwd().resolve()
    tried = []
    for start in (here, cwd):
        for folder in (start, *start.parents):
            d = folder / "data" / "shakespeare"
            if d not in tried:
                tried.append(d)
    return tried


def find_data_dir() -> Path:
    candidates = data_dir_candidates()
    for d in candidates:
        if (d / "train.bin").is_file() and (d / "val.bin").is_file():
            return d
    tried = "\n  ".join(str(d) for d in candidates)
    raise DataError(
        f"no train.bin/val.bin found; tried:\n  {tried}\n{PREPARE_HINT}, or set TRAIN_MPS_DATA_DIR to the folder "
        "that holds them"
    )


def read_meta(data_dir: Path) -> dict:
    """The folder's meta.json (scripts/prepare_shakespeare.py writes it), or {} where there is none: the
    DreamTeam repository's data has none, and then each file is only checked on its own, as always."""
    path = data_dir / "meta.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); {PREPARE_HINT} --force") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object; {PREPARE_HINT} --force")
    return meta


def check_against_meta(path: Path, split: str, meta: dict) -> None:
    """The split's file must be the one meta.json records: its size, then its sha256 (~1 ms per 700 KB).
    prepare_shakespeare.py moves meta.json into place before the .bin files, so a run interrupted between
    two moves leaves a new meta.json beside an old file, which this refuses: the two splits are checked
    against one meta.json, so only a complete set trains."""
    n_tokens = path.stat().st_size // 2
    expected = meta.get(f"{split}_tokens")
    if expected is not None and expected != n_tokens:
        raise DataError(
            f"{path} holds {n_tokens} tokens but meta.json says {expected}: truncated or stale; {PREPARE_HINT} --force"
        )
    digest = meta.get(f"{split}_bin_sha256")
    if digest is not None and file_sha256(path) != digest:
        raise DataError(
            f"{path} is not the file meta.json records (its sha256 differs): a stale or mixed set, e.g. left by "
            f"an interrupted prepare; {PREPARE_HINT} --force"
        )


def load_split(data_dir: Path, split: str, vocab_size: int) -> np.ndarray:
    """Load a uint16 token file into RAM, validating it (and its place in the set) before any training."""
    path = data_dir / f"{split}.bin"
    if not path.exists():
        raise DataError(f"{path} is missing; {PREPARE_HINT}")
    size = path.stat().st_size
    if size % 2:
        raise DataError(f"{path} has an odd size ({size} bytes), so it is truncated; {PREPARE_HINT} --force")
    check_against_meta(path, split, read_meta(data_dir))
    tokens = np.fromfile(path, dtype=np.uint16)
    if len(tokens) < block_size + 2:
        raise DataError(f"{path} holds {len(tokens)} tokens, fewer than block_size + 2; {PREPARE_HINT}")
    top = int(tokens.max())
    if top >= vocab_size:
        raise DataError(f"{path} holds token id {top} >= vocab_size {vocab_size}: not GPT-2 BPE; {PREPARE_HINT}")
    return tokens


def get_batch(data: torch.Tensor, generator: torch.Generator):
    """Random (batch_size, block_size) windows and their next-token targets, on data's device."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator, device="cpu")
    offsets = (ix[:, None] + torch.arange(block_size)[None, :]).to(data.device)  # (B, T)
    return data[offsets], data[offsets + 1]  # contiguous, as nanoGPT's: targets.view(-1) works


@torch.no_grad()
def full_split_loss(model, data: torch.Tensor, windows_per_batch: int = 64) -> float:
    """Mean cross-entropy over non-overlapping block_size windows covering the whole split."""
    model.eval()
    n_windows = (len(data) - 1) // block_size
    total, count = 0.0, 0
    for start in range(0, n_windows, windows_per_batch):
        w = torch.arange(start, min(start + windows_per_batch, n_windows), device=data.device)
        offsets = w[:, None] * block_size + torch.arange(block_size, device=data.device)[None, :]  # (n, T)
        targets = data[offsets + 1]  # contiguous, as get_batch's
        _, loss = model(data[offsets], targets)  # mean over the chunk's targets
        total += loss.item() * targets.numel()
        count += targets.numel()
    model.train()
    return total / count


# ---------------------------------------------------------------------------------------------
# setup


ITERS_FIX = f"give a whole number of iterations >= 1 (e.g. 200), or unset it for the full {max_iters}"


def env_int(name: str, fix: str) -> Optional[int]:
    """An integer environment variable; None when unset or empty. Anything else stops the run before any
    work, naming the variable, its value and `fix`, rather than with int()'s traceback."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer: {fix}") from None


def seed_from_env(r: Recipe) -> Recipe:
    """The recipe with TRAIN_MPS_SEED's seed, if set (Recipe judges its range)."""
    seed = env_int("TRAIN_MPS_SEED", "give a whole number such as 0, or unset it")
    if seed is None:
        return r
    try:
        return replace(r, seed=seed)
    except ValueError as e:
        raise ValueError(f"TRAIN_MPS_SEED={seed}: {e}") from None


def iters_from_env() -> int:
    """max_iters, or TRAIN_MPS_MAX_ITERS's shorter (or longer) run of N >= 1 iterations."""
    n = env_int("TRAIN_MPS_MAX_ITERS", ITERS_FIX)
    if n is None:
        return max_iters
    if n < 1:
        raise ValueError(f"TRAIN_MPS_MAX_ITERS={n} is not a run: {ITERS_FIX}")
    return n


def out_dir_path() -> Path:
    return Path(os.environ.get("TRAIN_MPS_OUT_DIR") or Path(__file__).resolve().parent / "out")


def check_out_dir(out_dir: Path) -> None:
    """Fail before training, not after it, where write_pair could not write: the folder, or the nearest one
    above it that exists (where it would be created), must be a writable directory in which symlinks can be
    made (a probe file and a link to it are created and removed), and the pair's own names must not be
    folders."""
    fix = "set TRAIN_MPS_OUT_DIR to a writable folder"
    for name in (LATEST, *PAIR):
        if (out_dir / name).is_dir() and not (out_dir / name).is_symlink():
            raise IsADirectoryError(f"{out_dir / name} is a folder, where train() writes a link; {fix}")
    existing = out_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"output folder {out_dir}: {existing} is not a folder; {fix}")
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=existing)
        os.close(fd)
        os.symlink(os.path.basename(probe), probe + ".link")
        os.unlink(probe + ".link")
    except OSError as e:
        raise PermissionError(f"cannot write the outputs in {existing} ({e.strerror or e}); {fix}") from None
    finally:
        if probe is not None and os.path.exists(probe):
            os.unlink(probe)


def pick_device() -> str:
    if device == "mps" and torch.backends.mps.is_available():
        return device
    fallback = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"[train_mps] MPS is not available here; running on {fallback} instead", flush=True)
    return fallback


def adamw(params, r: Recipe):
    """AdamW on `params` with nanoGPT's groups (weight decay on >= 2-D tensors only), in the fewest kernels this torch
    and device offer (Recipe.fused_optimizer): fused, else foreach, else the per-tensor loop."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": r.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    for impl in (dict(fused=True), dict(foreach=True), {}) if r.fused_optimizer else ({},):
        try:
            return torch.optim.AdamW(groups, lr=r.learning_rate, betas=(r.beta1, r.beta2), **impl)
        except (RuntimeError, TypeError, ValueError):  # no such implementation in this torch or for this device
            continue
    raise AssertionError("unreachable: the plain AdamW takes every parameter")


def make_optimizers(model: GPT, r: Recipe, device_type: str):
    """AdamW on everything (nanoGPT groups), or Muon on hidden 2-D matrices + AdamW on the rest."""
    if r.optimizer == "adamw":
        if r.fused_optimizer:
            return [adamw((p for p in model.parameters() if p.requires_grad), r)]
        return [model.configure_optimizers(r.weight_decay, r.learning_rate, (r.beta1, r.beta2), device_type)]
    if r.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise RuntimeError(
                f"optimizer='muon' needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}"
            )
        hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n]
        hidden_ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if id(p) not in hidden_ids]
        muon = torch.optim.Muon(hidden, lr=r.muon_lr, weight_decay=r.weight_decay, adjust_lr_fn="match_rms_adamw")
        return [muon, adamw(rest, r)]
    raise ValueError(f"unknown optimizer {r.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def set_lr(optimizers, base_lrs, scale: float) -> None:
    for opt, lrs in zip(optimizers, base_lrs):
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr * scale


class NgramTeacher:
    """An interpolated Kneser-Ney trigram (Chen & Goodman 1998, one absolute discount per order from counts of
    counts, D = n1 / (n1 + 2 n2)) fitted on the training tokens, used as a soft target (Recipe.ngram_distill):

        p3(w | u v) = max(c(uvw) - D3, 0) / c(uv.) + D3 N1+(uv.) / c(uv.) * p2(w | v)
        p2(w | v)   = max(N1+(.vw) - D2, 0) / N1+(.v.) + D2 N1+(v.) / N1+(.v.) * p1(w)
        p1(w)       = N1+(.w) / N1+(..)

    over the model's output rows (`token_rows`: token id -> row, the shortlist's; None: rows are token ids). The
    context of position j is xb[j - 1], xb[j] (the bigram alone at j = 0, where the window starts). Its counts are
    this split's: the teacher has seen every training target, which makes it a smoothing of the targets by their
    contexts (Xie et al. 2017 relate data noising to Kneser-Ney smoothing) rather than an independent model.

    leave_one_out=True (Recipe.ngram_loo) takes the position's own trigram occurrence (u, v, y) out of every count
    before predicting it, the discounts kept: c(uvy) and c(uv.) lose 1, and where that was the type's only
    occurrence, N1+(uv.), N1+(.vy), N1+(.v.) lose 1 (and N1+(v.), N1+(.y), N1+(..) where the bigram type (v, y)
    goes too). On training text the teacher then predicts as it would on new text (a context seen once is a
    context never seen), which is what a held-out model needs to learn from it. Positions with no u in the window
    (j = 0) keep the full counts: their trigram is not in the batch."""

    def __init__(
        self,
        tokens: np.ndarray,
        vocab_size: int,
        token_rows=None,
        n_rows: int = 0,
        on="cpu",
        leave_one_out: bool = False,
    ):
        t = np.asarray(tokens, dtype=np.int64)
        if len(t) < 3:
            raise DataError(f"the n-gram teacher needs at least 3 training tokens, got {len(t)}; {PREPARE_HINT}")
        V = self.V = vocab_size
        self.leave_one_out = leave_one_out
        rows = np.arange(V) if token_rows is None else np.asarray(token_rows, dtype=np.int64)
        self.n_rows = n_rows or V
        if int(rows[t].max()) >= self.n_rows:
            raise ValueError(f"a training token maps to a row >= n_rows {self.n_rows}: the rows must cover train.bin")
        u, v, w = np.lib.stride_tricks.sliding_window_view(t, 3).T  # every trigram of the split
        tri, tri_count = np.unique((u * V + v) * V + w, return_counts=True)  # sorted (u, v, w)
        # trigram level: contexts (u, v), their successors w and counts
        ctx3, start3 = np.unique(tri // V, return_index=True)
        ptr3 = np.append(start3, len(tri))  # context i's successors: tri[ptr3[i]:ptr3[i + 1]]
        len3 = np.diff(ptr3)  # N1+(uv.)
        total3 = np.add.reduceat(tri_count, start3)  # c(uv.)
        d3 = self.discount(tri_count)
        # bigram level, continuation counts: N1+(.vw) = the distinct u before (v, w)
        vw, n_vw = np.unique(tri % (V * V), return_counts=True)  # sorted (v, w)
        v_of, w_of = vw // V, vw % V
        d2 = self.discount(n_vw)
        s_v = np.bincount(v_of, weights=n_vw, minlength=V)  # N1+(.v.)
        succ_v = np.bincount(v_of, minlength=V)  # N1+(v.)
        # unigram level: N1+(.w) over rows, and N1+(..)
        n_w = np.bincount(rows[w_of], minlength=self.n_rows)
        as_t = lambda a, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=on)
        self.ctx3, self.ptr3 = as_t(ctx3, torch.long), as_t(ptr3, torch.long)
        self.w3 = as_t(rows[tri % V], torch.long)
        self.c3 = as_t(tri_count)  # c(uvw), in the order of w3
        self.len3, self.total3 = as_t(len3), as_t(total3)
        self.ptr2 = as_t(np.concatenate([[0], np.cumsum(succ_v)]), torch.long)
        self.w2 = as_t(rows[w_of], torch.long)
        self.n2 = as_t(n_vw)  # N1+(.vw), in the order of w2
        self.s_v, self.succ_v = as_t(s_v), as_t(succ_v)
        self.n_w, self.n_types = as_t(n_w), float(len(vw))
        self.tri, self.vw = as_t(tri, torch.long), as_t(vw, torch.long)  # sorted keys, for a position's own counts
        self.token_rows = as_t(rows, torch.long)
        self.discounts = (float(d2), float(d3))

    @staticmethod
    def discount(counts: np.ndarray) -> float:
        n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
        return n1 / (n1 + 2 * n2) if n1 + n2 else 0.5

    @staticmethod
    def _lookup(keys: torch.Tensor, counts: torch.Tensor, query: torch.Tensor):
        """The entry of each query key in the sorted `keys` (clamped) and its count, 0 where the key is absent."""
        i = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
        return i, torch.where(keys[i] == query, counts[i], torch.zeros_like(counts[i]))

    @torch.no_grad()
    def target(self, xb: torch.Tensor, yb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """xb: (b, t) inputs, yb: (b, t) their targets (needed under leave_one_out) -> the teacher's next-row
        distribution at each position, (b * t, n_rows)."""
        if self.leave_one_out and yb is None:
            raise ValueError(
                "a leave-one-out teacher needs the targets yb: each position's own occurrence is taken out"
            )
        b, t = xb.shape
        d2, d3 = self.discounts
        V = self.V
        v = xb.reshape(-1)  # (P,) the last context token of each position
        u = torch.cat([xb.new_full((b, 1), -1), xb[:, :-1]], dim=1).reshape(-1)  # (P,) -1: none in the window
        c, total = self._lookup(self.ctx3, self.total3, u * V + v)
        total = total.masked_fill(u < 0, 0.0)  # c(uv.), 0: no trigram context
        n3, s, succ, n_types = self.len3[c], self.s_v[v], self.succ_v[v], self.n_types
        if self.leave_one_out:
            y = yb.reshape(-1)
            taken = (u >= 0).float()  # 1 where the position's own trigram is taken out
            _, cy = self._lookup(self.tri, self.c3, (u * V + v) * V + y)
            taken = taken * (cy > 0).float()  # a trigram not in the counts (not training text) has nothing to take out
            _, ny = self._lookup(self.vw, self.n2, v * V + y)
            gone3 = taken * (cy == 1).float()  # the trigram type (u, v, y) goes: continuation counts lose it
            gone2 = gone3 * (ny == 1).float()  # and with it the bigram type (v, y)
            total, n3 = total - taken, n3 - gone3
            s, succ, n_types = s - gone3, succ - gone2, n_types - gone2
        seen = total > 0  # (P,) positions whose trigram context is seen
        inv3 = torch.where(seen, 1.0 / total.clamp_min(1.0), torch.zeros_like(total))
        gamma3 = torch.where(seen, d3 * n3 * inv3, torch.ones_like(total))  # weight of p2 (all of it: no context)
        has2 = s > 0
        inv2 = torch.where(has2, 1.0 / s.clamp_min(1.0), torch.zeros_like(s))
        gamma2 = torch.where(has2, d2 * succ * inv2, torch.ones_like(s))  # a v never seen: p1 alone
        out = torch.outer(gamma3 * gamma2 / n_types, self.n_w)  # (P, n_rows): the lowest order, scaled
        rows3, idx3 = self._successors(self.ptr3, c, seen)
        out.index_put_((rows3, self.w3[idx3]), (self.c3[idx3] - d3).clamp_min(0) * inv3[rows3], accumulate=True)
        rows2, idx2 = self._successors(self.ptr2, v, has2)
        p2 = (self.n2[idx2] - d2).clamp_min(0) * inv2[rows2]
        out.index_put_((rows2, self.w2[idx2]), gamma3[rows2] * p2, accumulate=True)
        if self.leave_one_out:  # y's own entries, each level's count one lower than what was added above
            fix = inv3 * ((cy - taken - d3).clamp_min(0) - (cy - d3).clamp_min(0))
            fix = fix + gamma3 * inv2 * ((ny - gone3 - d2).clamp_min(0) - (ny - d2).clamp_min(0))
            fix = fix - gamma3 * gamma2 * gone2 / n_types
            at = self.token_rows[y].clamp_max(self.n_rows - 1)  # fix is 0 where y is not in the counts (no row)
            out.index_put_((torch.arange(len(y), device=y.device), at), fix, accumulate=True)
            out.clamp_min_(0.0)  # a count taken to 0 leaves a float rounding of 0 (~1e-10) at y, either sign
        return out

    def cross_entropy(self, logp: torch.Tensor, xb: torch.Tensor, yb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """logp: (b, t, n_rows) log-probabilities of the next row; xb, yb: (b, t) the inputs and targets -> the mean
        over positions of -sum_rows teacher * logp, a scalar."""
        return -(self.target(xb, yb) * logp.reshape(-1, logp.size(-1))).sum() / xb.numel()

    @staticmethod
    def _successors(ptr: torch.Tensor, context: torch.Tensor, keep: torch.Tensor):
        """(position, entry) index pairs of every successor entry ptr[context]..ptr[context + 1] of the kept
        positions."""
        start, end = ptr[context], ptr[context + 1]
        n = torch.where(keep, end - start, torch.zeros_like(start))  # (P,)
        positions = torch.repeat_interleave(torch.arange(len(context), device=context.device), n)
        first = torch.cumsum(n, 0) - n  # where each position's run starts in the flat list
        idx = torch.arange(int(n.sum()), device=context.device) - first[positions] + start[positions]
        return positions, idx


def make_teacher(r: Recipe, model: GPT, train_tokens: np.ndarray, on) -> Optional[NgramTeacher]:
    """The recipe's n-gram teacher over the model's output rows, or None when ngram_distill is 0."""
    if r.ngram_distill == 0:
        return None
    k = model.config.shortlist_size
    model.keep_log_probs = True  # train_step reads the output rows' log-probabilities from the forward
    rows = model.token_rows.cpu().numpy() if k else None
    return NgramTeacher(train_tokens, r.vocab_size, rows, k, on, leave_one_out=r.ngram_loo)


def train_step(model: GPT, optimizers, params, xb, yb, r: Recipe, ngram_teacher: Optional[NgramTeacher] = None):
    """One optimizer step on a batch; returns the (pure cross-entropy) loss tensor. (The teacher's name is long on
    purpose: an edit of this function that calls its own distillation target `teacher` must not shadow it.)"""
    with ctx:
        _, loss = model(xb, yb)
        total_loss = loss + model.regularization_loss()
        if ngram_teacher is not None:  # the forward's log-probabilities of its output rows (the shortlist's k)
            logp, model.last_log_probs = model.last_log_probs, None  # released: the graph keeps what backward needs
            total_loss = total_loss + r.ngram_distill * (ngram_teacher.cross_entropy(logp, xb, yb) - loss)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total_loss.backward()
    if r.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
    for opt in optimizers:
        opt.step()
    return loss


def steps_stream(r: Recipe) -> random.Random:
    """The random stream of Recipe.random_steps' draws, seeded apart from the batches' and the weights'."""
    return random.Random(r.seed + 2_000_003)


def step_counts(r: Recipe) -> dict:
    """The distribution of a training step's step count, {steps_per_layer: probability}: uniform over
    steps_per_layer..random_steps on a share refine_prob of the steps, steps_per_layer on the others."""
    if not r.random_steps:
        return {r.steps_per_layer: 1.0}
    span = range(r.steps_per_layer, r.random_steps + 1)
    probs = {n: r.refine_prob / len(span) for n in span}
    probs[r.steps_per_layer] += 1.0 - r.refine_prob
    return probs


def draw_steps(r: Recipe, rng: random.Random) -> int:
    """One draw from step_counts(r), the step count of the next training step. Its own stream: the draws never
    perturb the batches (and with refine_prob 1 it is one randint per step, as before refine_prob existed)."""
    if not r.random_steps or (r.refine_prob < 1.0 and rng.random() >= r.refine_prob):
        return r.steps_per_layer
    return rng.randint(r.steps_per_layer, r.random_steps)


@contextmanager
def drawn_steps(model: GPT, r: Recipe, rng: random.Random):
    """Around one training step: under Recipe.random_steps the model integrates with the drawn step count (yielded),
    then with steps_per_layer again, for evaluation and the checkpoint; when off, nothing changes."""
    if not r.random_steps:
        yield r.steps_per_layer
        return
    n = draw_steps(r, rng)
    model.set_integrator(steps_per_layer=n)
    try:
        yield n
    finally:
        model.set_integrator(steps_per_layer=r.steps_per_layer)


def make_ema(model: GPT) -> tuple[GPT, list]:
    """A frozen copy of `model` (buffers included) and its trainable parameters, for ema_update."""
    ema = copy.deepcopy(model)
    ema_params = [p for p in ema.parameters() if p.requires_grad]
    for p in ema_params:
        p.requires_grad_(False)
    return ema, ema_params


def ema_weight(step: int, decay: float) -> float:
    """The weight of step `step`'s (0, 1, ...) parameters in the EMA: Adam's bias correction, (1 - d) / (1 - d^(t+1)),
    makes the EMA the d-weighted average of the parameters of steps 0..t alone (weight 1 at step 0: the initial
    weights never count; the plain lerp's 1 - d once t >> 1 / (1 - d)). Without it, a short run's EMA stayed near
    the initial weights and every evaluation of a 101-iteration smoke run scored about the same."""
    return (1.0 - decay) / (1.0 - decay ** (step + 1))


@torch.no_grad()
def ema_update(ema_params, params, weight: float) -> None:
    torch._foreach_lerp_(ema_params, params, weight)


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the message names the likely cause and the fix."""


def check_finite(loss: float, what: str, it: int, r: Recipe) -> None:
    """Stop at a NaN or infinite loss, before anything is written. train() calls it only on losses it already
    reads on the host (each evaluation, the train loss logged beside it, the final whole-split loss), never
    with a .item() of its own: one per step would add a host sync to every MPS iteration. A non-finite loss
    poisons the weights (and the EMA) for good, so the evaluations still catch it within eval_interval."""
    if not math.isfinite(loss):
        raise DivergedError(
            f"training diverged: the {what} loss is {loss} at iteration {it}. The learning rate is probably too "
            f"high for this recipe: try a lower learning_rate (now {r.learning_rate:g}) or a grad_clip > 0 "
            f"(now {r.grad_clip:g}; 0 = off). Nothing was written."
        )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


# The output pair, replaced together or not at all. Each pair is written into a folder of its own,
# out/run-<id>/; out/metrics.json and out/ckpt.pt are fixed symlinks into out/latest, itself a symlink to the
# current run folder. Swapping the pair is one atomic rename, of out/latest, so an interruption at any point
# leaves the complete old pair or the complete new one at the documented paths (two renames, one per file,
# would leave a new metrics.json beside an old ckpt.pt if killed between them). On an exception the new
# folder is removed; a run-* folder that out/latest does not name is a killed run's leftover.
PAIR = ("metrics.json", "ckpt.pt")
LATEST = "latest"


def replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` in one atomic step: a new symlink under a temp name, renamed over `link`."""
    temp = link.with_name(f".{link.name}.{uuid.uuid4().hex}.tmp")
    os.symlink(target, temp)
    try:
        os.replace(temp, link)
    except BaseException:
        os.unlink(temp)
        raise


def write_synced(path: Path, write) -> None:
    with open(path, "xb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the swap can make it visible


def current_run(out_dir: Path) -> Path:
    """The run folder out/latest names. The first time in a folder an older train_mps.py wrote (plain
    metrics.json and ckpt.pt files), copies them into a run folder and turns them into the fixed links: every
    step keeps the old pair's bytes at the same paths."""
    latest = out_dir / LATEST
    if not latest.is_symlink():
        legacy = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
        try:
            for name in PAIR:
                if (out_dir / name).is_file():
                    shutil.copy2(out_dir / name, legacy / name)
            replace_symlink(latest, legacy.name)
        except BaseException:
            shutil.rmtree(legacy, ignore_errors=True)
            raise
    for name in PAIR:
        link, target = out_dir / name, f"{LATEST}/{name}"
        if not (link.is_symlink() and os.readlink(link) == target):
            replace_symlink(link, target)
    return out_dir / os.readlink(latest)


def write_pair(out_dir: Path, metrics: dict, ckpt: dict) -> None:
    """Write out/metrics.json and out/ckpt.pt as one pair (see PAIR above)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
    try:
        write_synced(new / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=1).encode()))
        write_synced(new / "ckpt.pt", lambda f: torch.save(ckpt, f))
        old = current_run(out_dir)
        replace_symlink(out_dir / LATEST, new.name)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if old.parent.resolve() == out_dir.resolve() and old.name.startswith("run-"):  # never a folder elsewhere
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# training


def train(recipe: Recipe = None):
    t0 = time.time()  # first line, as in the original train_mps.py: loading the data counts
    # everything that could stop the run is checked here, before any work: settings, output folder, data
    r = seed_from_env(recipe or Recipe())
    n_iters = iters_from_env()
    if n_iters != max_iters:
        print(
            f"!!! [train_mps] TRAIN_MPS_MAX_ITERS={n_iters}: a SHORT run instead of the fixed {max_iters} "
            f"iterations, for tests and smoke runs only !!!",
            file=sys.stderr,
            flush=True,
        )

    out_dir = out_dir_path()
    check_out_dir(out_dir)
    data_dir = find_data_dir()
    train_np = load_split(data_dir, "train", r.vocab_size)
    val_np = load_split(data_dir, "val", r.vocab_size)

    dev = pick_device()
    torch.manual_seed(r.seed)
    train_data = torch.from_numpy(train_np.astype(np.int64)).to(dev)
    val_data = torch.from_numpy(val_np.astype(np.int64)).to(dev)
    # separate streams: the evaluation batches never perturb the training batches
    train_gen = torch.Generator().manual_seed(r.seed)
    eval_gen = torch.Generator().manual_seed(r.seed + 1_000_003)
    steps_rng = steps_stream(r)

    model = make_model(r, train_np).to(dev)
    config = model.config
    optimizers = make_optimizers(model, r, dev)
    base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
    params = [p for p in model.parameters() if p.requires_grad]
    ema, ema_params = make_ema(model) if r.ema_decay > 0 else (None, None)
    eval_model = ema if ema is not None else model
    ngram_teacher = make_teacher(r, model, train_np, dev)

    print(
        f"[train_mps] {n_iters} iters on {dev}, seed {r.seed}, {model.get_num_params() / 1e6:.2f}M params, "
        f"{config.solver}/{config.splitting}x{config.steps_per_layer}, NFE {model.nfe()}, data {data_dir}",
        flush=True,
    )
    best_vloss = float("inf")
    last_train_loss = float("nan")
    history = []
    recent = deque(maxlen=max(1, r.select_window))
    best_sel, best_sel_iter, best_state = float("inf"), None, None
    t_last = time.time()
    for it in range(n_iters):
        if it % eval_interval == 0:
            eval_model.eval()
            with torch.no_grad(), ctx:
                xv, yv = get_batch(val_data, eval_gen)
                _, vloss_t = eval_model(xv, yv)
            eval_model.train()
            vloss = vloss_t.item()
            check_finite(vloss, "val", it, r)
            best_vloss = min(best_vloss, vloss)
            sel = window_best(recent, vloss, best_sel, r.select_window)
            if sel is not None:
                best_sel, best_sel_iter = sel, it
                best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
            ms = 1000 * (time.time() - t_last) / (eval_interval if it else 1)
            t_last = time.time()
            history.append({"iter": it, "val_loss": vloss, "train_loss": last_train_loss})
            print(
                f"iter {it:5d} | train {last_train_loss:.4f} | val {vloss:.4f} | best {best_vloss:.4f} | "
                f"lr x{lr_at(it, n_iters, r):.3f} | {ms:.1f} ms/iter",
                flush=True,
            )

        set_lr(optimizers, base_lrs, lr_at(it, n_iters, r))
        xb, yb = get_batch(train_data, train_gen)
        with drawn_steps(model, r, steps_rng):
            loss = train_step(model, optimizers, params, xb, yb, r, ngram_teacher)
        if ema is not None:
            ema_update(ema_params, params, ema_weight(it, r.ema_decay))
        if it % eval_interval == eval_interval - 1 or it == n_iters - 1:
            last_train_loss = loss.item()  # the train loss logged beside the next evaluation
            check_finite(last_train_loss, "train", it, r)

    last_state = None
    if best_state is not None:  # end with the selected weights (inside the clock: it is part of training)
        last_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
        eval_model.load_state_dict(best_state)
    if dev == "mps":
        torch.mps.synchronize()
    elapsed_min = (time.time() - t0) / 60.0

    # --- reporting: after the clock stops; none of it changes the return value ---
    val_full = full_split_loss(eval_model, val_data)
    check_finite(val_full, "whole-split val", n_iters, r)
    val_full_last = val_full
    if last_state is not None:  # what the last weights would have given, for the ablation
        eval_model.load_state_dict(last_state)
        val_full_last = full_split_loss(eval_model, val_data)
        eval_model.load_state_dict(best_state)
    here = Path(__file__).resolve().parent
    metrics = {
        "best_vloss": best_vloss,
        "elapsed_min": elapsed_min,
        "val_loss_full": val_full,
        "val_loss_full_last_weights": val_full_last,
        "selected_iter": best_sel_iter if best_state is not None else n_iters,
        "seed": r.seed,
        "iters": n_iters,
        "device": dev,
        "nfe": model.nfe(),
        "recipe": asdict(r),
        "model_config": asdict(config),
        "fixed": {"batch_size": batch_size, "block_size": block_size, "max_iters": max_iters},
        "history": history,
        "data_dir": str(data_dir),
        "sources_sha256": {f: file_sha256(here / f) for f in ("model.py", "train_mps.py")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    ckpt = {
        "model": eval_model.state_dict(),
        "model_args": asdict(config),
        "iter_num": metrics["selected_iter"],
        "metrics": metrics,
    }
    write_pair(out_dir, metrics, ckpt)
    print(
        f"[train_mps] best_vloss {best_vloss:.4f} | whole-split val {val_full:.4f} "
        f"(weights of iter {metrics['selected_iter']}; last weights {val_full_last:.4f}) | seed {r.seed} | "
        f"{elapsed_min:.2f} min\n[train_mps] wrote {out_dir / 'metrics.json'} and {out_dir / 'ckpt.pt'}",
        flush=True,
    )
    if n_iters != max_iters:
        print(
            f"!!! [train_mps] a SHORT run ({n_iters} of {max_iters} iterations): its best_vloss {best_vloss:.4f} is a "
            f"smoke test's, not a result to rank; unset TRAIN_MPS_MAX_ITERS for the real run !!!",
            file=sys.stderr,
            flush=True,
        )
    return best_vloss, elapsed_min


if __name__ == "__main__":
    train()
