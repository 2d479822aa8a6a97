"""Shared plumbing for the three depth-ODE studies (solver_study, stability_report, phase_portrait).

Each study is a CLI that loads a train_mps.py checkpoint, draws fixed validation windows, computes,
writes `<out-dir>/<study>.json` atomically and draws `<out-dir>/<study>.png` from that JSON alone
(`--plot-only` redraws from the saved JSON without touching the model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts run as `python scripts/x.py` see only scripts/ on the path
    sys.path.insert(0, str(ROOT))

from levers import model_from_args  # noqa: E402
from model import GPT  # noqa: E402

DEFAULT_CKPT = ROOT / "out" / "ckpt.pt"
DEFAULT_DATA_DIR = ROOT / "data" / "shakespeare"
DEFAULT_OUT_DIR = ROOT / "results"


def layer_boundaries(gpt, x) -> list:
    """x at every layer boundary of gpt's own integrator: [x, after layer 1, ..., after layer L], each (B, T, C)."""
    states = [x]
    for block in gpt.transformer.h:
        states.append(block(states[-1]))
    return states


class StudyError(RuntimeError):
    """A missing or unusable input; the message names the command that fixes it."""


# ---------------------------------------------------------------------------------------------
# CLI


def base_parser(description: str, default_batches: int, default_batch_size: int = 8) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="train_mps.py checkpoint (make train)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding val.bin (make data)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the JSON and PNG go")
    p.add_argument("--batches", type=int, default=default_batches, help="validation batches")
    p.add_argument("--batch-size", type=int, default=default_batch_size, help="windows per batch")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of validation windows")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved JSON only")
    return p


def cli(main: Callable) -> None:
    """Run main(); a StudyError becomes a one-line message and exit status 2, not a traceback."""
    try:
        main()
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def environment() -> dict:
    import matplotlib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def print_environment(study: str) -> dict:
    env = environment()
    print(f"[{study}] " + " | ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    return env


class Progress:
    """One line per item with elapsed time and an ETA; loops here are minutes, not hours."""

    def __init__(self, study: str, total: int):
        self.study, self.total, self.done, self.t0 = study, total, 0, time.time()

    def step(self, what: str) -> None:
        self.done += 1
        el = time.time() - self.t0
        eta = el / self.done * (self.total - self.done)
        print(f"[{self.study}] {self.done:3d}/{self.total} {what} | {el:6.1f}s elapsed, ~{eta:5.1f}s left", flush=True)


# ---------------------------------------------------------------------------------------------
# inputs


def load_checkpoint(path: Path) -> tuple[GPT, dict]:
    """The trained model in eval mode with gradients off, and the checkpoint's metadata."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"checkpoint {path} not found; train one with `make train` (or pass --ckpt PATH)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise StudyError(f"{path} is not a train_mps.py checkpoint (no 'model'/'model_args'); rerun `make train`")
    model = model_from_args(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    model.requires_grad_(False)
    metrics = ckpt.get("metrics", {}) or {}
    info = {
        "path": str(path),
        "model_args": ckpt["model_args"],
        "iters": ckpt.get("iter_num", metrics.get("iters")),
        "val_loss_full": metrics.get("val_loss_full"),
        "best_vloss": metrics.get("best_vloss"),
        "data_dir": metrics.get("data_dir"),
        "seed": metrics.get("seed"),
        "recipe": metrics.get("recipe"),
        "fixed": metrics.get("fixed"),
    }
    return model, info


def load_val_tokens(data_dir: Path, vocab_size: int) -> np.ndarray:
    return load_tokens(data_dir, "val", vocab_size)


def load_tokens(data_dir: Path, split: str, vocab_size: int) -> np.ndarray:
    """A prepared split's uint16 token ids; a missing, empty or foreign file names `make data`."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise StudyError(f"{path} not found; prepare the data with `make data` (or pass --data-dir)")
    tokens = np.fromfile(path, dtype=np.uint16)
    if len(tokens) == 0 or int(tokens.max()) >= vocab_size:
        raise StudyError(f"{path} is empty or holds ids >= vocab_size {vocab_size}; rebuild it with `make data`")
    return tokens


def val_batches(tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int, seed: int):
    """Fixed random (batch_size, block_size) windows and their next-token targets, as a list of pairs."""
    if len(tokens) < block_size + 2:
        raise StudyError(f"val.bin holds {len(tokens)} tokens, fewer than block_size + 2 = {block_size + 2}")
    data = torch.from_numpy(tokens.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=gen)
        chunk = data[ix[:, None] + torch.arange(block_size + 1)[None, :]]  # (B, T+1)
        out.append((chunk[:, :-1], chunk[:, 1:]))
    return out


def setup(study: str, args) -> tuple[GPT, dict, list, dict]:
    """Threads, environment line, checkpoint and validation batches: the common preamble of a run."""
    torch.set_num_threads(args.threads)
    env = print_environment(study)
    model, info = load_checkpoint(args.ckpt)
    c = model.config
    print(
        f"[{study}] checkpoint {args.ckpt}: {c.n_layer} layers, C={c.n_embd}, trained as "
        f"{c.solver}/{c.splitting}x{c.steps_per_layer}, iters {info['iters']}, val_loss_full {info['val_loss_full']}",
        flush=True,
    )
    batches = []  # --batches 0: a study that reads the splits itself (loss_breakdown covers all of val)
    if args.batches > 0:
        tokens = load_val_tokens(args.data_dir, c.vocab_size)
        batches = val_batches(tokens, args.batches, args.batch_size, c.block_size, args.seed)
    return model, info, batches, env


def run_record(args, env: dict, info: dict, t0: float) -> dict:
    """What makes a results file self-describing: arguments, environment, checkpoint, wall time."""
    return {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": env,
        "checkpoint": info,
        "wall_s": round(time.time() - t0, 2),
    }


# ---------------------------------------------------------------------------------------------
# outputs


def _atomic_write(path: Path, write: Callable) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(o):
    """NaN/inf become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def write_json(path: Path, results: dict) -> None:
    text = json.dumps(_jsonable(results), indent=1, allow_nan=False)
    _atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: Path, study: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise StudyError(f"{path} not found; run `python scripts/{study}.py` first (without --plot-only)")
    return json.loads(path.read_text())


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (studies run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis) -> None:
    """Plain numbers (8, 16, 32) instead of 2x10^1 on a log axis that spans under a few decades."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(NullFormatter())


def finish(study: str, args, results: dict, plot: Callable) -> dict:
    json_path = Path(args.out_dir) / f"{study}.json"
    png_path = Path(args.out_dir) / f"{study}.png"
    write_json(json_path, results)
    results = read_json(json_path, study)  # the plot sees exactly what --plot-only would see
    plot(results, png_path)
    print(f"[{study}] wrote {json_path} and {png_path} ({results['run']['wall_s']:.1f}s)", flush=True)
    return results


def plot_only(study: str, args, plot: Callable) -> dict:
    results = read_json(Path(args.out_dir) / f"{study}.json", study)
    png_path = Path(args.out_dir) / f"{study}.png"
    plot(results, png_path)
    print(f"[{study}] redrew {png_path} from the saved JSON", flush=True)
    return results


def complex_list(z) -> list:
    """Complex numbers as [re, im] pairs (JSON has no complex type)."""
    z = np.asarray(z, dtype=complex).ravel()
    return [[float(v.real), float(v.imag)] for v in z]


def complex_array(pairs) -> np.ndarray:
    a = np.asarray(pairs, dtype=float).reshape(-1, 2)
    return a[:, 0] + 1j * a[:, 1]


def study_main(study: str, args, run: Callable, plot: Callable) -> dict:
    """A study's whole CLI run: redraw from the saved JSON (--plot-only), or compute, save and draw."""
    if args.plot_only:
        return plot_only(study, args, plot)
    return finish(study, args, run(args), plot)
