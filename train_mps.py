import copy

# Trains the odegpt model under the harness contract: the harness imports this file beside model.py, calls train() and
# ranks by the returned (best_vloss, elapsed_min). The fixed block is the contract; Recipe is ours (levers.py extends
# it). The harness sets none of TRAIN_MPS_DATA_DIR, TRAIN_MPS_OUT_DIR, TRAIN_MPS_SEED, TRAIN_MPS_MAX_ITERS (README).
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
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def load_model_module():
    """The model.py beside this file, even where another `model` was imported first (DreamTeam's main.py does)."""
    path = Path(__file__).resolve().parent / "model.py"
    is_beside = lambda origin: bool(origin) and Path(origin).resolve() == path
    loaded = sys.modules.get("model")
    if loaded is not None and is_beside(getattr(loaded, "__file__", None)):
        return loaded
    if loaded is None and (spec := importlib.util.find_spec("model")) is not None and is_beside(spec.origin):
        return importlib.import_module("model")
    if not path.exists():
        raise ImportError(f"model.py is missing beside {Path(__file__).resolve()}: copy both files into the folder")
    name = "odegpt_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]  # one per folder
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses and pickle look it up by name
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
SCHEDULES = ("constant", "cosine", "wsd")
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # 2.0 and True are no counts
_is_real = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
_is_unit = lambda v: _is_real(v) and 0 <= v < 1
_count, _nonneg = lambda v: _is_int(v) and v >= 0, lambda v: _is_real(v) and v >= 0

# (field, test, what it must be), checked when a Recipe is built
RECIPE_RULES = (
    ("seed", lambda v: _is_int(v) and 0 <= v < 2**63, "an integer in [0, 2**63)"),
    ("learning_rate", lambda v: _is_real(v) and v > 0, "a finite number > 0"),
    ("min_lr", _nonneg, "a finite number >= 0"),
    ("schedule", lambda v: v in SCHEDULES, "one of " + ", ".join(SCHEDULES) + " (lower case)"),
    ("warmup_iters", _count, "an integer >= 0"),
    ("decay_frac", lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("weight_decay", _nonneg, "a finite number >= 0"),
    ("beta1", _is_unit, "a number in [0, 1)"),
    ("beta2", _is_unit, "a number in [0, 1)"),
    ("grad_clip", _nonneg, "a finite number >= 0 (0 disables clipping)"),
    ("ema_decay", _is_unit, "a number in [0, 1) (0 disables the EMA)"),
    ("random_steps", _count, "an integer >= 0 (0 = train with steps_per_layer only)"),
    ("eval_steps", _count, "an integer >= 0 (0 = evaluate with steps_per_layer)"),
    ("fused_optimizer", lambda v: isinstance(v, bool), "True or False"),
)


@dataclass(frozen=True)
class Recipe:
    """Everything outside the fixed block that shapes training. Defaults are the canonical recipe."""

    seed: int = 0
    # model: defaults are GPTConfig's in model.py (edit them there); a field set here overrides it for a run
    vocab_size: int = GPTConfig.vocab_size
    bias: bool = GPTConfig.bias
    dropout: float = GPTConfig.dropout
    solver: str = GPTConfig.solver
    steps_per_layer: int = GPTConfig.steps_per_layer
    splitting: str = GPTConfig.splitting
    zero_init_proj: bool = GPTConfig.zero_init_proj
    shortlist: bool = True  # softmax over train.bin's tokens (~11.5k of 50304), the others share their Good-Turing mass
    kinetic_energy: float = GPTConfig.kinetic_energy
    jacobian_frobenius: float = GPTConfig.jacobian_frobenius
    # K > 0: each training step integrates with a step count drawn from steps_per_layer..K, so that the weights
    # become a flow, not one step size's fit (issue #14); evaluation keeps steps_per_layer (or eval_steps)
    random_steps: int = 2
    eval_steps: int = 0  # > 0: evaluation, the selected weights and the exported model integrate with this count
    fused_optimizer: bool = True  # AdamW fused (else foreach) per group; False: nanoGPT's configure_optimizers
    learning_rate: float = 3e-3  # peak
    min_lr: float = 3e-4
    schedule: str = "wsd"  # constant | cosine | wsd (peak until the last decay_frac of the run, then linear)
    warmup_iters: int = 200
    decay_frac: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.999  # > 0: evaluate and end with a bias-corrected EMA of the weights (ema_weight)

    def __post_init__(self):
        self.model_classes()[1](**model_fields(self))  # the model fields are judged by building their config
        for name, ok, rule in type(self).RULES:
            if not ok(value := getattr(self, name)):
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        if self.schedule != "constant" and self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr!r}) must be <= learning_rate ({self.learning_rate!r}): its floor")
        if self.random_steps and self.random_steps < self.steps_per_layer:
            raise ValueError(
                f"random_steps ({self.random_steps!r}) must be 0 (off) or >= steps_per_layer, the least drawn"
            )

    # seams: levers.py's LeverRecipe adds fields and rules and overrides these
    RULES = RECIPE_RULES

    def model_classes(self):
        return GPT, GPTConfig

    def optimizers(self, model, device_type: str) -> list:
        return make_optimizers(model, self, device_type)

    def extra_loss(self, model, train_tokens: np.ndarray, on):
        """A training loss term f(xb, yb, loss) that train_step adds, or None."""

    def selection(self, n_iters: int):
        """Model selection over the evaluations (observe, restore, report: levers.WindowSelection), or None."""

    def draw_steps(self, rng: random.Random) -> int:
        """The step count of the next training step (random_steps)."""
        return rng.randint(self.steps_per_layer, self.random_steps) if self.random_steps else self.steps_per_layer

    def evaluation_steps(self) -> int:
        """The step count the model evaluates with, between training steps and after training (eval_steps)."""
        return self.eval_steps or self.steps_per_layer


def train_vocabulary(tokens: np.ndarray, vocab_size: int) -> tuple:
    """A split's token ids (ascending) and the probability left to all others: Good-Turing's N1 / N in [1/N, 1 - 1/N]."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)
    _data_check(len(counts) == vocab_size, f"token id {len(counts) - 1} >= vocab_size {vocab_size}: not GPT-2 BPE", "")
    n, n_once = int(counts.sum()), int((counts == 1).sum())
    _data_check(n >= 2, f"a shortlist needs at least 2 training tokens, got {n}", "")
    return np.flatnonzero(counts), min(max(n_once, 1), n - 1) / n


def model_fields(r: Recipe) -> dict:
    sizes = dict(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    return {**{k: getattr(r, k) for k in r.model_classes()[1].__dataclass_fields__ if hasattr(r, k)}, **sizes}


def model_config(r: Recipe, vocabulary: Optional[tuple] = None) -> GPTConfig:
    shortlist_size, unseen_mass = 0, 0.0
    if r.shortlist:
        if vocabulary is None:
            raise ValueError("Recipe.shortlist needs the training split's vocabulary: pass train_vocabulary(tokens)")
        if len(vocabulary[0]) < r.vocab_size:
            shortlist_size, unseen_mass = len(vocabulary[0]), vocabulary[1]
    return r.model_classes()[1](**model_fields(r), shortlist_size=shortlist_size, unseen_mass=unseen_mass)


def make_model(r: Recipe, train_tokens: np.ndarray) -> GPT:
    vocabulary = train_vocabulary(train_tokens, r.vocab_size) if r.shortlist else None
    model = r.model_classes()[0](model_config(r, vocabulary))
    if model.config.shortlist_size:
        model.set_shortlist(torch.from_numpy(vocabulary[0]))
    return model.set_integrator(steps_per_layer=r.evaluation_steps())


def lr_at(step: int, total: int, r: Recipe) -> float:
    """The learning rate relative to the peak, a pure function of the step."""
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
        return floor + (1.0 - floor) * (1.0 - min(1.0, (step - decay_start) / max(1, total - decay_start)))
    raise ValueError(f"unknown schedule {r.schedule!r}; valid: {', '.join(SCHEDULES)}")


class DataError(RuntimeError):
    """The training data is missing or malformed; the message names the fix."""


def _data_check(ok, problem: str, force: str = " --force") -> None:
    if not ok:
        raise DataError(f"{problem}; {PREPARE_HINT}{force}")


def data_dir_candidates() -> list:
    """TRAIN_MPS_DATA_DIR or its shakespeare/, else data/shakespeare here, in the working directory or above either."""
    if env := os.environ.get("TRAIN_MPS_DATA_DIR"):
        return [Path(env), Path(env) / "shakespeare"]
    starts = (Path(__file__).resolve().parent, Path.cwd().resolve())
    return list(dict.fromkeys(f / "data" / "shakespeare" for start in starts for f in (start, *start.parents)))


def find_data_dir() -> Path:
    candidates = data_dir_candidates()
    for d in candidates:
        if (d / "train.bin").is_file() and (d / "val.bin").is_file():
            return d
    tried = "\n  ".join(map(str, candidates))
    raise DataError(f"no train.bin/val.bin found; tried:\n  {tried}\n{PREPARE_HINT}, or set TRAIN_MPS_DATA_DIR")


def load_split(data_dir: Path, split: str, vocab_size: int) -> np.ndarray:
    """A uint16 token file, checked before any training, against meta.json too where there is one."""
    path, meta_path = data_dir / f"{split}.bin", data_dir / "meta.json"
    _data_check(path.exists(), f"{path} is missing", "")
    size = path.stat().st_size
    _data_check(size % 2 == 0, f"{path} has an odd size ({size} bytes), so it is truncated")
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path} is unreadable ({e}); {PREPARE_HINT} --force") from None
    _data_check(isinstance(meta, dict), f"{meta_path} is not a JSON object")
    n = meta.get(f"{split}_tokens")
    _data_check(n in (None, size // 2), f"{path} holds {size // 2} tokens, meta.json says {n}: truncated or stale")
    digest = meta.get(f"{split}_bin_sha256")
    _data_check(
        digest is None or digest == file_sha256(path), f"{path} is not the file meta.json records (stale, mixed)"
    )
    tokens = np.fromfile(path, dtype=np.uint16)
    _data_check(len(tokens) >= block_size + 2, f"{path} holds {len(tokens)} tokens, fewer than block_size + 2", "")
    top = int(tokens.max())
    _data_check(top < vocab_size, f"{path} holds token id {top} >= vocab_size {vocab_size}: not GPT-2 BPE", "")
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
    n_windows, total, count = (len(data) - 1) // block_size, 0.0, 0
    for start in range(0, n_windows, windows_per_batch):
        w = torch.arange(start, min(start + windows_per_batch, n_windows), device=data.device)
        offsets = w[:, None] * block_size + torch.arange(block_size, device=data.device)[None, :]  # (n, T)
        targets = data[offsets + 1]
        _, loss = model(data[offsets], targets)  # mean over the chunk's targets
        total, count = total + loss.item() * targets.numel(), count + targets.numel()
    model.train()
    return total / count


ITERS_FIX = f"give a whole number of iterations >= 1 (e.g. 200), or unset it for the full {max_iters}"


def env_int(name: str, fix: str) -> Optional[int]:
    """An integer environment variable, None when unset or empty; anything else stops the run naming `fix`."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer: {fix}") from None


def seed_from_env(r: Recipe) -> Recipe:
    seed = env_int("TRAIN_MPS_SEED", "give a whole number such as 0, or unset it")
    try:
        return r if seed is None else replace(r, seed=seed)
    except ValueError as e:
        raise ValueError(f"TRAIN_MPS_SEED={seed}: {e}") from None


def iters_from_env() -> int:
    n = env_int("TRAIN_MPS_MAX_ITERS", ITERS_FIX)
    if n is None:
        return max_iters
    if n < 1:
        raise ValueError(f"TRAIN_MPS_MAX_ITERS={n} is not a run: {ITERS_FIX}")
    return n


def check_out_dir(out_dir: Path) -> None:
    """Fail before training where write_pair could not write (a writable folder where links can be made)."""
    fix = "set TRAIN_MPS_OUT_DIR to a writable folder"
    for path in (out_dir / name for name in (LATEST, *PAIR)):
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(f"{path} is a folder, where train() writes a link; {fix}")
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists() or p.parent == p)
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


def adamw(params, r: Recipe):
    """AdamW with nanoGPT's groups (decay on >= 2-D tensors), fused, else foreach, else the per-tensor loop."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": r.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    for impl in (dict(fused=True), dict(foreach=True)) if r.fused_optimizer else ():
        try:
            return torch.optim.AdamW(groups, lr=r.learning_rate, betas=(r.beta1, r.beta2), **impl)
        except (RuntimeError, TypeError, ValueError):  # no such implementation in this torch or for this device
            continue
    return torch.optim.AdamW(groups, lr=r.learning_rate, betas=(r.beta1, r.beta2))


def make_optimizers(model: GPT, r: Recipe, device_type: str):
    """AdamW on every parameter with nanoGPT's groups (levers.py adds Muon)."""
    if r.fused_optimizer:
        return [adamw((p for p in model.parameters() if p.requires_grad), r)]
    return [model.configure_optimizers(r.weight_decay, r.learning_rate, (r.beta1, r.beta2), device_type)]


def set_lr(optimizers, base_lrs, scale: float) -> None:
    for opt, lrs in zip(optimizers, base_lrs):
        for g, lr in zip(opt.param_groups, lrs):
            g["lr"] = lr * scale


def train_step(model: GPT, optimizers, params, xb, yb, r: Recipe, extra_loss=None):
    """One optimizer step on a batch; returns the cross-entropy. extra_loss(xb, yb, loss): Recipe.extra_loss's."""
    with ctx:
        _, loss = model(xb, yb)
        total_loss = loss + model.regularization_loss()
        if extra_loss is not None:
            total_loss = total_loss + extra_loss(xb, yb, loss)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total_loss.backward()
    if r.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
    for opt in optimizers:
        opt.step()
    return loss


def steps_stream(r: Recipe) -> random.Random:
    return random.Random(r.seed + 2_000_003)


@contextmanager
def drawn_steps(model: GPT, r: Recipe, rng: random.Random):
    """Around a training step: the model integrates with r.draw_steps' count, then evaluation's again."""
    if not r.random_steps and not r.eval_steps:
        yield r.steps_per_layer
        return
    model.set_integrator(steps_per_layer=(n := r.draw_steps(rng)))
    try:
        yield n
    finally:
        model.set_integrator(steps_per_layer=r.evaluation_steps())


def make_ema(model: GPT) -> tuple:
    """A frozen copy of `model` (buffers included) and its parameters, for ema_update."""
    ema = copy.deepcopy(model)
    ema_params = [p.requires_grad_(False) for p in ema.parameters() if p.requires_grad]
    return ema, ema_params


def ema_weight(step: int, decay: float) -> float:
    """Step `step`'s weight in the EMA, bias-corrected as Adam's moments: an average of steps 0..step alone."""
    return (1.0 - decay) / (1.0 - decay ** (step + 1))


@torch.no_grad()
def ema_update(ema_params, params, weight: float) -> None:
    torch._foreach_lerp_(ema_params, params, weight)


class DivergedError(RuntimeError):
    """A non-finite loss; the message names the likely cause and the fix."""


def check_finite(loss: float, what: str, it: int, r: Recipe) -> None:
    if not math.isfinite(loss):
        fix = f"a lower learning_rate (now {r.learning_rate:g}) or a grad_clip > 0 (now {r.grad_clip:g})"
        raise DivergedError(
            f"training diverged: the {what} loss is {loss} at iteration {it}; try {fix}. Nothing was written."
        )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


# The output pair, replaced together or not at all: each run writes out/run-<id>/; out/metrics.json and out/ckpt.pt
# are fixed links into out/latest, a link to the current run folder, swapped by one atomic rename.
PAIR = ("metrics.json", "ckpt.pt")
LATEST = "latest"


def replace_symlink(link: Path, target: str) -> None:
    temp = link.with_name(f".{link.name}.{uuid.uuid4().hex}.tmp")
    os.symlink(target, temp)
    try:
        os.replace(temp, link)
    except BaseException:
        os.unlink(temp)
        raise


def current_run(out_dir: Path) -> Path:
    """The run folder out/latest names; an older train_mps.py's plain pair is first copied into one, made links."""
    if not (out_dir / LATEST).is_symlink():
        legacy = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
        try:
            for name in PAIR:
                if (out_dir / name).is_file():
                    shutil.copy2(out_dir / name, legacy / name)
            replace_symlink(out_dir / LATEST, legacy.name)
        except BaseException:
            shutil.rmtree(legacy, ignore_errors=True)
            raise
    for name in PAIR:
        if not ((out_dir / name).is_symlink() and os.readlink(out_dir / name) == f"{LATEST}/{name}"):
            replace_symlink(out_dir / name, f"{LATEST}/{name}")
    return out_dir / os.readlink(out_dir / LATEST)


def write_pair(out_dir: Path, metrics: dict, ckpt: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
    writers = (lambda f: f.write(json.dumps(metrics, indent=1).encode()), lambda f: torch.save(ckpt, f))
    try:
        for name, write in zip(PAIR, writers):
            with open(new / name, "xb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the swap can make it visible
        old = current_run(out_dir)
        replace_symlink(out_dir / LATEST, new.name)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if old.parent.resolve() == out_dir.resolve() and old.name.startswith("run-"):  # never a folder elsewhere
        shutil.rmtree(old, ignore_errors=True)


def train(recipe: Recipe = None):
    t0 = time.time()  # first line, as in the original train_mps.py: loading the data counts
    # everything that could stop the run is checked here, before any work: settings, output folder, data
    r = seed_from_env(recipe or Recipe())
    n_iters = iters_from_env()
    short = f"!!! [train_mps] TRAIN_MPS_MAX_ITERS={n_iters}: a SHORT run instead of the fixed {max_iters} iterations"
    if n_iters != max_iters:
        print(f"{short}, for tests and smoke runs only !!!", file=sys.stderr, flush=True)
    out_dir = Path(os.environ.get("TRAIN_MPS_OUT_DIR") or Path(__file__).resolve().parent / "out")
    check_out_dir(out_dir)
    data_dir = find_data_dir()
    train_np = load_split(data_dir, "train", r.vocab_size)
    val_np = load_split(data_dir, "val", r.vocab_size)

    dev = device if device == "mps" and torch.backends.mps.is_available() else None
    if dev is None:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"[train_mps] MPS is not available here; running on {dev} instead", flush=True)
    torch.manual_seed(r.seed)
    train_data = torch.from_numpy(train_np.astype(np.int64)).to(dev)
    val_data = torch.from_numpy(val_np.astype(np.int64)).to(dev)
    # separate streams: the evaluation batches and the step counts never perturb the training batches
    train_gen, eval_gen = torch.Generator().manual_seed(r.seed), torch.Generator().manual_seed(r.seed + 1_000_003)
    steps_rng = steps_stream(r)

    model = make_model(r, train_np).to(dev)
    config, optimizers = model.config, r.optimizers(model, dev)
    base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
    params = [p for p in model.parameters() if p.requires_grad]
    ema, ema_params = make_ema(model) if r.ema_decay > 0 else (None, None)
    eval_model = ema if ema is not None else model
    extra_loss, selection = r.extra_loss(model, train_np, dev), r.selection(n_iters)
    c = f"{model.get_num_params() / 1e6:.2f}M params, {config.solver}/{config.splitting}x{config.steps_per_layer}"
    print(f"[train_mps] {n_iters} iters on {dev}, seed {r.seed}, {c}, NFE {model.nfe()}, data {data_dir}", flush=True)
    best_vloss = float("inf")
    last_train_loss, history, t_last = float("nan"), [], time.time()
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
            if selection is not None:
                selection.observe(it, vloss, eval_model)
            ms, t_last = 1000 * (time.time() - t_last) / (eval_interval if it else 1), time.time()
            history.append({"iter": it, "val_loss": vloss, "train_loss": last_train_loss})
            print(
                f"iter {it:5d} | train {last_train_loss:.4f} | val {vloss:.4f} | best {best_vloss:.4f} | "
                f"lr x{lr_at(it, n_iters, r):.3f} | {ms:.1f} ms/iter",
                flush=True,
            )

        set_lr(optimizers, base_lrs, lr_at(it, n_iters, r))
        xb, yb = get_batch(train_data, train_gen)
        with drawn_steps(model, r, steps_rng):
            loss = train_step(model, optimizers, params, xb, yb, r, extra_loss)
        if ema is not None:
            ema_update(ema_params, params, ema_weight(it, r.ema_decay))
        if it % eval_interval == eval_interval - 1 or it == n_iters - 1:
            last_train_loss = loss.item()  # the train loss logged beside the next evaluation
            check_finite(last_train_loss, "train", it, r)

    if selection is not None:
        selection.restore(eval_model)  # inside the clock: it is part of training
    if dev == "mps":
        torch.mps.synchronize()
    elapsed_min = (time.time() - t0) / 60.0

    # --- reporting: after the clock stops; none of it changes the return value ---
    val_full = full_split_loss(eval_model, val_data)
    check_finite(val_full, "whole-split val", n_iters, r)
    sel = {"val_loss_full_last_weights": val_full, "selected_iter": n_iters}
    if selection is not None:
        sel = selection.report(eval_model, lambda: full_split_loss(eval_model, val_data), val_full)
    here = Path(__file__).resolve().parent
    sources = {f: file_sha256(here / f) for f in ("model.py", "train_mps.py")}
    metrics = dict(best_vloss=best_vloss, elapsed_min=elapsed_min, val_loss_full=val_full, **sel, seed=r.seed)
    metrics.update(iters=n_iters, device=dev, nfe=model.nfe(), recipe=asdict(r), model_config=asdict(config))
    metrics["fixed"] = {"batch_size": batch_size, "block_size": block_size, "max_iters": max_iters}
    metrics["history"] = history
    metrics.update(data_dir=str(data_dir), sources_sha256=sources)
    metrics["versions"] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    ckpt = dict(model=eval_model.state_dict(), model_args=asdict(config), iter_num=sel["selected_iter"])
    write_pair(out_dir, metrics, {**ckpt, "metrics": metrics})
    at = f"weights of iter {sel['selected_iter']}; last weights {sel['val_loss_full_last_weights']:.4f}"
    print(f"[train_mps] best_vloss {best_vloss:.4f} | whole-split val {val_full:.4f} ({at}) | {elapsed_min:.2f} min")
    print(f"[train_mps] wrote {out_dir / 'metrics.json'} and {out_dir / 'ckpt.pt'}", flush=True)
    if n_iters != max_iters:
        print(f"{short}: best_vloss {best_vloss:.4f} is a smoke test's, not a result to rank !!!", file=sys.stderr)
    return best_vloss, elapsed_min


if __name__ == "__main__":
    train()
