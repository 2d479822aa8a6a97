"""Interpolated modified Kneser-Ney n-gram models: a count-based reference for the GPT's whole-split
validation loss, on the same tokens, over the same windows, in the same nats.

The smoothing is Chen & Goodman (1998), "An Empirical Study of Smoothing Techniques for Language
Modeling", section 3 (modified Kneser-Ney, interpolated). For an order-k estimate with history h
(k - 1 tokens) and next token w:

    p_k(w | h) = (c(h w) - D(c(h w))) / c(h) + gamma(h) p_{k-1}(w | h[1:])          if c(h) > 0
    p_k(w | h) = p_{k-1}(w | h[1:])                                                  if c(h) = 0
    gamma(h)   = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / c(h)

with c(h) = sum_w c(h w), N_r(h .) the number of distinct w with c(h w) = r (>= 3 for N3+), and
D(c) = D1, D2, D3+ for c = 1, 2, >= 3 (D(0) = 0). The highest order uses raw counts; every lower order
replaces c(g) by the continuation count N1+(. g), the number of distinct tokens seen just before g.
The discounts of each order come from that order's counts of counts (raw or continuation):
Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3. Nothing is fitted on
val.bin. Below the unigram sits p_0(w) = 1 / vocab_size, and the unigram level (h = ()) is interpolated
with it by the same formula: p_1(w) = (c(w) - D(c(w))) / c(()) + gamma(()) / vocab_size, where c(w) is the
continuation count of w (raw count when the unigram is the top order), c(()) = sum_w c(w) and gamma(())
is the unigram level's discount mass over c(()). Every discount is > 0 (see FALLBACK_DISCOUNTS), so
gamma(()) > 0 and every id in [0, vocab_size) gets a nonzero probability, ids never seen in train.bin
included (they get gamma(()) / vocab_size times the product of the gammas above).

Short histories: the protocol below gives target j of a window only j + 1 tokens of history, fewer than
order - 1 at the start of each window. Such a position is scored by the order-(j + 2) estimate with
raw counts at its top (as KenLM does for n-grams that begin with <s>, which have no left extension
either): an order-n model asked with a history of m < n - 1 tokens returns exactly what the order-(m + 1)
model returns. Continuation counts estimate p(w | h) given that a longer history was not available
in the counts, not the distribution of w after h.

Evaluation protocol (train_mps.full_split_loss): block_size 64; val.bin is cut into
(len - 1) // 64 non-overlapping windows; window i covers val[64 i : 64 i + 65], target j is
val[64 i + j + 1] and its history is val[64 i : 64 i + j + 1] only (never across the window start). The
loss is the mean negative log-likelihood (nats) over all windows x 64 targets.

    python scripts/kneser_ney.py --data-dir data/tinyshakespeare --orders 2 3 4 5
    python scripts/kneser_ney.py --data-dir data/pypi --out results/kneser_ney/pypi.json

API for other scripts: fit(tokens, order, vocab_size) -> KneserNey, KneserNey.prob(history, token),
KneserNey.log_probs(history) (the whole distribution), whole_split_loss(model, val_tokens, block_size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT / "data" / "shakespeare"
DEFAULT_OUT_DIR = ROOT / "results" / "kneser_ney"
VOCAB_SIZE = 50304  # model.py GPTConfig.vocab_size: GPT-2's 50257 padded to a multiple of 64
BLOCK_SIZE = 64  # train_mps.py block_size: the window of the whole-split protocol

# When the closed-form discounts cannot be computed (some n_r for r <= 4 is zero: a zero denominator)
# or come out of (0, r] (a negative or over-full discount: a probability < 0 or a gamma of 0), the whole
# order falls back to these, KenLM lmplz's --discount_fallback defaults. Every discount is then in
# (0, r], so every gamma is > 0 and every probability is > 0. Real data (300k tokens) never needs this;
# toy corpora without singletons or doubletons do.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)

# Issue #16's target: a neural model's trusted test loss at least this many nats below the best order's.
TARGET_MARGIN = 0.10

PROTOCOL = (
    "train_mps.full_split_loss: (len(val) - 1) // block_size non-overlapping windows val[w*B : w*B + B + 1]; "
    "target j = val[w*B + j + 1], history = val[w*B : w*B + j + 1] (never across the window start), "
    "truncated to the last order - 1 tokens; mean NLL in nats over all windows x B targets"
)


class KneserNeyError(ValueError):
    """An unusable input; the message names the fix. The CLI turns it into exit status 2."""


# ---------------------------------------------------------------------------------------------
# the model


def discounts_from_counts_of_counts(n: Sequence[int]) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from n = (n1, n2, n3, n4), and whether the fallback was used (see FALLBACK_DISCOUNTS)."""
    n1, n2, n3, n4 = (int(x) for x in n)
    if min(n1, n2, n3, n4) == 0:
        return FALLBACK_DISCOUNTS, True
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < d_r <= r for r, d_r in enumerate(d, start=1)):
        return FALLBACK_DISCOUNTS, True
    return d, False


@dataclass
class Level:
    """One order k with one kind of count ("raw" or "continuation"): the estimate of p_k(w | h), |h| = k - 1."""

    order: int
    kind: str
    # h -> (c(h), gamma(h) c(h) = D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.), {w: c(h w)}); histories never
    # seen are absent and back off fully
    contexts: dict[tuple[int, ...], tuple[int, float, dict[int, int]]]
    discounts: tuple[float, float, float]
    counts_of_counts: tuple[int, int, int, int]  # n1..n4 over this level's k-grams
    fallback: bool
    n_grams: int  # distinct k-grams with a nonzero count of this kind

    @classmethod
    def from_counts(cls, order: int, kind: str, counts: dict[tuple[int, ...], int]) -> Level:
        by_count = Counter(counts.values())
        coc = tuple(by_count.get(r, 0) for r in (1, 2, 3, 4))
        discounts, fallback = discounts_from_counts_of_counts(coc)
        followers: dict[tuple[int, ...], dict[int, int]] = defaultdict(dict)
        for gram, c in counts.items():
            followers[gram[:-1]][gram[-1]] = c
        contexts = {}
        for h, f in followers.items():
            mass = sum(discounts[min(c, 3) - 1] for c in f.values())
            contexts[h] = (sum(f.values()), mass, f)
        return cls(order, kind, contexts, discounts, coc, fallback, len(counts))

    def interpolate(self, h: tuple[int, ...], w: int, p_lower: float) -> float:
        entry = self.contexts.get(h)
        if entry is None:  # history never seen at this order: back off fully
            return p_lower
        total, backoff_mass, followers = entry
        c = followers.get(w, 0)
        seen = c - self.discounts[min(c, 3) - 1] if c else 0.0  # >= 0: every D_r is in (0, r]
        return (seen + backoff_mass * p_lower) / total

    def interpolate_all(self, h: tuple[int, ...], p_lower: np.ndarray) -> np.ndarray:
        """interpolate() for every w at once: (vocab,) -> (vocab,)."""
        entry = self.contexts.get(h)
        if entry is None:
            return p_lower
        total, backoff_mass, followers = entry
        words = np.fromiter(followers.keys(), dtype=np.int64, count=len(followers))
        counts = np.fromiter(followers.values(), dtype=np.float64, count=len(followers))
        d = np.asarray(self.discounts)[np.minimum(counts, 3).astype(np.int64) - 1]
        p = p_lower * (backoff_mass / total)
        p[words] += (counts - d) / total
        return p

    def summary(self) -> dict:
        return {
            "discounts": list(self.discounts),
            "discount_fallback": self.fallback,
            "counts_of_counts_1to4": list(self.counts_of_counts),
            "n_grams": self.n_grams,
            "n_histories": len(self.contexts),
        }


class KneserNey:
    """An order-n interpolated modified Kneser-Ney model over ids [0, vocab_size).

    raw[k - 1] is order k with raw counts (the top of the chain for a history of k - 1 tokens);
    continuation[k - 1] is order k with continuation counts (below the top), k = 1 .. n - 1.
    """

    def __init__(self, raw: list[Level], continuation: list[Level], vocab_size: int):
        if len(raw) < 1 or len(continuation) != len(raw) - 1:
            raise ValueError(
                f"need n >= 1 raw levels and n - 1 continuation levels, got {len(raw)}, {len(continuation)}"
            )
        self.raw, self.continuation, self.vocab_size = raw, continuation, vocab_size
        self.order = len(raw)

    def with_order(self, order: int) -> KneserNey:
        """The order-`order` model on the same counts (a lower order shares every level with this one)."""
        if not 1 <= order <= self.order:
            raise ValueError(f"order must be in [1, {self.order}], got {order}")
        return KneserNey(self.raw[:order], self.continuation[: order - 1], self.vocab_size)

    def _chain(self, history: Sequence[int]) -> list[tuple[Level, tuple[int, ...]]]:
        """(level, its history) from the unigram up: continuation levels below, a raw level on top."""
        h = tuple(int(t) for t in history)
        h = h[max(0, len(h) - (self.order - 1)) :]  # the last order - 1 tokens (none for a unigram)
        top = len(h) + 1
        levels = self.continuation[: top - 1] + [self.raw[top - 1]]
        return [(level, h[len(h) - k :]) for k, level in enumerate(levels)]  # level k + 1 sees k tokens

    def prob(self, history: Sequence[int], token: int) -> float:
        """p(token | history); only the last order - 1 tokens of history are used."""
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token {token} is outside [0, {self.vocab_size})")
        p = 1.0 / self.vocab_size
        for level, h in self._chain(history):
            p = level.interpolate(h, token, p)
        return p

    def probs(self, history: Sequence[int]) -> np.ndarray:
        """The whole next-token distribution, (vocab_size,) float64, summing to 1."""
        p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for level, h in self._chain(history):
            p = level.interpolate_all(h, p)
        return p

    def log_probs(self, history: Sequence[int]) -> np.ndarray:
        """log of probs(history), natural log, (vocab_size,)."""
        return np.log(self.probs(history))

    def summary(self) -> dict:
        return {
            "raw": {str(lv.order): lv.summary() for lv in self.raw},
            "continuation": {str(lv.order): lv.summary() for lv in self.continuation},
        }


def count_ngrams(tokens: Sequence[int], k: int) -> Counter:
    """Raw counts of every k-gram (tuple of k ids) in the token stream."""
    return Counter(zip(*(tokens[i:] for i in range(k))))


def fit(tokens, order: int, vocab_size: int = VOCAB_SIZE, progress: Callable[[str], None] | None = None) -> KneserNey:
    """Fit the order-`order` model on a 1-D sequence of ids (numpy array or list) in [0, vocab_size)."""
    if int(order) != order or order < 1:
        raise KneserNeyError(f"order must be an integer >= 1, got {order}")
    toks = np.asarray(tokens).ravel()
    if toks.size == 0:
        raise KneserNeyError("no training tokens")
    if int(toks.min()) < 0 or int(toks.max()) >= vocab_size:
        raise KneserNeyError(f"training ids must lie in [0, {vocab_size}), got [{toks.min()}, {toks.max()}]")
    toks = toks.tolist()
    raw_counts = []
    for k in range(1, order + 1):
        t0 = time.time()
        raw_counts.append(count_ngrams(toks, k))
        if progress:
            progress(f"counted {k}-grams: {len(raw_counts[-1]):,} distinct in {time.time() - t0:.1f}s")
    raw, continuation = [], []
    for k in range(1, order + 1):
        t0 = time.time()
        raw.append(Level.from_counts(k, "raw", raw_counts[k - 1]))
        if k < order:  # N1+(. g): one per distinct (k + 1)-gram ending in g
            cont = Counter(g[1:] for g in raw_counts[k])
            continuation.append(Level.from_counts(k, "continuation", cont))
        if progress:
            progress(f"order {k} levels built in {time.time() - t0:.1f}s")
    return KneserNey(raw, continuation, vocab_size)


def whole_split_loss(
    model: KneserNey, val_tokens, block_size: int = BLOCK_SIZE, progress: Callable[[str], None] | None = None
) -> float:
    """Mean NLL (nats) over train_mps.full_split_loss's windows; a history never crosses its window start."""
    data = np.asarray(val_tokens).ravel().tolist()
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise KneserNeyError(f"{len(data)} tokens hold no window of block_size + 1 = {block_size + 1}")
    keep = model.order - 1
    nll = 0.0
    for w in range(n_windows):
        window = data[w * block_size : w * block_size + block_size + 1]
        for j in range(block_size):
            nll -= math.log(model.prob(window[max(0, j + 1 - keep) : j + 1], window[j + 1]))
        if progress and (w + 1) % 200 == 0:
            progress(f"{w + 1}/{n_windows} windows, running loss {nll / ((w + 1) * block_size):.4f}")
    return nll / (n_windows * block_size)


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def best_order(losses: dict | None) -> tuple[int, float] | None:
    """(order, loss) of the lowest loss in an {order: loss} record (orders as ints or JSON's strings); None if empty.
    Issue #16's target is TARGET_MARGIN below that loss."""
    return min(((int(n), v) for n, v in losses.items()), key=lambda t: t[1]) if losses else None


def load_tokens(path: Path, vocab_size: int) -> np.ndarray:
    """A prepared split (flat uint16 ids); anything else is a KneserNeyError naming `make data`."""
    path = Path(path)
    if not path.is_file():
        raise KneserNeyError(f"{path} not found; prepare the data with `make data` (or pass --data-dir)")
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise KneserNeyError(
            f"{path} has {size} bytes, not a nonempty whole number of uint16 tokens (truncated or not a token "
            "file); rebuild it with `make data`"
        )
    tokens = np.fromfile(path, dtype=np.uint16)
    if int(tokens.max()) >= vocab_size:
        raise KneserNeyError(
            f"{path} holds id {int(tokens.max())} >= vocab_size {vocab_size} (another tokenizer?); rebuild it with "
            "`make data` or pass --vocab-size"
        )
    return tokens


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: Path, record: dict) -> None:
    """Atomically (files.atomic_write_bytes: a temp file, then os.replace); NaN is refused."""
    from .files import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(record, indent=1, allow_nan=False) + "\n").encode())


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with train.bin / val.bin")
    p.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4, 5], help="n-gram orders to fit and score")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="ids are in [0, vocab-size)")
    p.add_argument("--out", type=Path, help="JSON output (default results/kneser_ney/<data-dir name>.json)")
    return p.parse_args(argv)


def run(args) -> dict:
    t_start = time.time()
    log = lambda msg: print(f"[kneser_ney] {msg}", flush=True)
    env = environment()
    log(" | ".join(f"{k} {v}" for k, v in env.items()))
    bad = [o for o in args.orders if o < 1]
    if bad:
        raise KneserNeyError(f"--orders must all be >= 1 (an order-n model sees n - 1 tokens), got {bad}")
    if args.vocab_size < 1 or args.vocab_size > 65536:
        raise KneserNeyError(f"--vocab-size must be in [1, 65536] for uint16 ids, got {args.vocab_size}")
    data_dir = Path(args.data_dir)
    out = Path(args.out) if args.out else DEFAULT_OUT_DIR / f"{data_dir.resolve().name}.json"
    train = load_tokens(data_dir / "train.bin", args.vocab_size)
    val = load_tokens(data_dir / "val.bin", args.vocab_size)
    n_windows = (len(val) - 1) // BLOCK_SIZE
    if n_windows < 1:
        raise KneserNeyError(f"{data_dir / 'val.bin'} holds {len(val)} tokens, fewer than block_size + 1 = 65")
    orders = sorted(set(args.orders))
    log(
        f"data {data_dir}: train {len(train):,} tokens, val {len(val):,} tokens ({n_windows} windows x {BLOCK_SIZE} "
        f"targets) | vocab_size {args.vocab_size} | orders {orders} | out {out}"
    )

    t0 = time.time()
    full = fit(train, max(orders), args.vocab_size, progress=log)  # lower orders share its levels
    fit_s = time.time() - t0
    log(f"fitted up to order {full.order} on train.bin in {fit_s:.1f}s")

    results = []
    for order in orders:
        model = full.with_order(order)
        t0 = time.time()
        loss = whole_split_loss(model, val, BLOCK_SIZE)
        eval_s = time.time() - t0
        top = model.raw[-1]
        log(
            f"order {order}: val_loss_full {loss:.4f} nats (ppl {math.exp(loss):.1f}) | top discounts "
            f"{', '.join(f'{d:.3f}' for d in top.discounts)} | {top.n_grams:,} {order}-grams | eval {eval_s:.1f}s"
        )
        results.append(
            {
                "order": order,
                "val_loss_full": loss,
                "val_targets": n_windows * BLOCK_SIZE,
                "discounts": {
                    kind: {k: v["discounts"] for k, v in levels.items()} for kind, levels in model.summary().items()
                },
                "ngram_counts": {str(lv.order): lv.n_grams for lv in model.raw},
                "levels": model.summary(),
                "eval_s": round(eval_s, 2),
            }
        )

    record = {
        "script": "scripts/kneser_ney.py",
        "smoothing": "interpolated modified Kneser-Ney (Chen & Goodman 1998), unigram interpolated with 1/vocab_size",
        "data_dir": str(data_dir),
        "train_tokens": len(train),
        "val_tokens": len(val),
        "train_bin_sha256": sha256(data_dir / "train.bin"),
        "val_bin_sha256": sha256(data_dir / "val.bin"),
        "vocab_size": args.vocab_size,
        "block_size": BLOCK_SIZE,
        "protocol": PROTOCOL,
        "short_histories": "scored by the order-(len + 1) estimate with raw counts on top (as KenLM for <s>-initial)",
        "discount_fallback": list(FALLBACK_DISCOUNTS),
        "orders": results,
        "fit_s": round(fit_s, 2),
        "wall_s": round(time.time() - t_start, 2),
        "environment": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    write_json(out, record)
    log(f"wrote {out} ({record['wall_s']:.1f}s)")
    return record


def main(argv=None) -> int:
    try:
        run(parse_args(argv))
    except KneserNeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
