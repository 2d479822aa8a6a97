"""Levers off by default, for benchmarks and studies: the n-gram teacher (ngram_distill, ngram_loo), the input and
output levers (ngram_buckets, token_noise, head_width), the capacity levers (mlp_width, glu, head_dim, norm, qk_norm,
mos),
Muon, model selection (select_window) and refine_prob.

train_mps.py and model.py run without this file (the harness copies those two alone). Beside them, it extends
them through their seams: LeverConfig / LeverGPT subclass GPTConfig / GPT (GPT.add_modules), and LeverRecipe
subclasses Recipe (its fields, RULES, model_classes, optimizers, extra_loss, selection, draw_steps). With every
lever off, train(LeverRecipe(...)) trains exactly as train_mps.train(Recipe(...)); with a lever on, exactly as
train_mps.py did when it held the lever (checked bit for bit on short runs).
"""

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import train_mps as tm

GPT, GPTConfig = tm.GPT, tm.GPTConfig
OPTIMIZERS = ("adamw", "muon")

# ---------------------------------------------------------------------------------------------
# model levers


@dataclass
class LeverConfig(GPTConfig):
    # input features (issue #16). k > 0: each position's token embedding gets two more rows added, from k-row tables
    # indexed by a hash of the bigram (t-1, t) and of the trigram (t-2, t-1, t) ending there (hash embeddings: the
    # context a Kneser-Ney trigram conditions on, as an input). Zero-initialised, so training starts from the plain
    # model; positions without the whole n-gram inside the window get none.
    ngram_buckets: int = 0
    # data noising (Xie et al., ICLR 2017, "blank" noising): while training, each input token is replaced with this
    # probability by a blank (the shortlist's shared row; a uniformly drawn token under the full softmax). Inputs
    # only, targets untouched; evaluation never noises. 0 = off.
    token_noise: float = 0.0
    # the softmax bottleneck (Yang et al. 2018): tied logits E h are linear in the n_embd-wide final state, so the
    # log-probability matrix has rank <= n_embd + 1. w > 0 adds w nonlinear features to the output layer only,
    # logits = E h + U gelu(A h) (A: n_embd -> w; U: an untied, zero-initialised rows x w table), rank up to
    # n_embd + w. The output matmul grows by a factor (n_embd + w) / n_embd. 0 = nanoGPT's tied layer.
    head_width: int = 0
    # capacity around the 32-wide stream (issue #35): what reads and writes the residual stream may be wider than it.
    # mlp_width: the MLP's hidden width (0 = nanoGPT's 4 n_embd); glu: a gated MLP, act(x W) * (x V) with the gelu
    # (geglu) or silu (swiglu) gate (Shazeer 2020), at mlp_width hidden units; head_dim: the query/key/value width per
    # head (0 = n_embd / n_head), n_head heads, the output projection back to n_embd; norm: "rms" replaces every
    # LayerNorm with RMSNorm; qk_norm: RMSNorm on each head's queries and keys, with learned gains (Dehghani et al.
    # 2023). Each off by default; mlp_width, glu and head_dim keep the fused parallel field (Block.fused_field).
    mlp_width: int = 0
    glu: str = ""
    head_dim: int = 0
    norm: str = "layer"
    qk_norm: bool = False
    # the output layer as a mixture of softmaxes (Yang et al. 2018, issue #35): K >= 2 components, each a softmax over
    # the output rows of E tanh(P_k h), mixed by the weights softmax(W h); log P = logsumexp_k(log pi_k + log
    # softmax(E h_k)), of rank beyond n_embd + 1. P_k (n_embd -> n_embd) start as the identity plus N(0, 0.02) noise
    # (each component starts near the tied layer on tanh(h)), W at N(0, 0.02); head_width's features, if on, are added
    # to every component's logits. The output matmul grows K-fold. 0 = one softmax.
    mos: int = 0

    def __post_init__(self):
        super().__post_init__()
        for name in ("mlp_width", "head_dim"):
            value = getattr(self, name)
            if not tm._is_int(value) or value < 0 or (name == "mlp_width" and value % self.n_head):
                raise ValueError(
                    f"{name} must be an integer >= 0 (0 = nanoGPT's), a multiple of n_head for mlp_width, got {value!r}"
                )
        if self.glu not in GATES:
            raise ValueError(f"glu must be one of {sorted(GATES)} ('' = nanoGPT's ungated MLP), got {self.glu!r}")
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"qk_norm must be True or False, got {self.qk_norm!r}")
        if not tm._is_int(self.ngram_buckets) or self.ngram_buckets < 0:
            raise ValueError(f"ngram_buckets must be an integer >= 0 (0 = off), got {self.ngram_buckets!r}")
        if not tm._is_real(self.token_noise) or not 0 <= self.token_noise < 1:
            raise ValueError(f"token_noise must be a number in [0, 1) (0 = off), got {self.token_noise!r}")
        if not tm._is_int(self.head_width) or self.head_width < 0:
            raise ValueError(f"head_width must be an integer >= 0 (0 = the tied output layer), got {self.head_width!r}")
        if not tm._is_int(self.mos) or self.mos < 0 or self.mos == 1:
            raise ValueError(f"mos must be an integer >= 2 (mixture components) or 0 (one softmax), got {self.mos!r}")


GATES = {"": None, "geglu": F.gelu, "swiglu": F.silu}


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension (Zhang & Sennrich 2019), LayerNorm's eps."""

    def __init__(self, ndim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class WideMLP(nn.Module):
    """model.MLP at mlp_width hidden units, gated under glu. x: (B, T, C) -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        hidden = config.mlp_width or 4 * config.n_embd
        self.gate = GATES[config.glu]
        self.c_fc = nn.Linear(config.n_embd, hidden * (2 if self.gate else 1), bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def act(self, u):
        """c_fc's output (B, T, H), or (B, T, 2H) gated -> the hidden layer (B, T, H); fused_field calls it too."""
        if self.gate is None:
            return F.gelu(u)
        a, g = u.chunk(2, dim=-1)  # (B, T, H) each
        return self.gate(a) * g

    def forward(self, x):
        x = self.c_proj(self.act(self.c_fc(x)))  # (B, T, C)
        return self.dropout(x) if self.dropout.p else x


class WideAttention(tm._model.CausalSelfAttention):
    """model.CausalSelfAttention with head_dim-wide heads (queries, keys, values) and QK-norm under qk_norm."""

    def __init__(self, config):
        super().__init__(config)
        self.hs = config.head_dim or config.n_embd // config.n_head
        width = self.n_head * self.hs
        self.c_attn = nn.Linear(config.n_embd, 3 * width, bias=config.bias)
        self.c_proj = nn.Linear(width, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.hs), RMSNorm(self.hs)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_head * self.hs, dim=2)  # (B, T, nh hs) each
        q, k, v = (t.view(B, T, self.n_head, self.hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )  # (B, nh, T, hs)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)
        return self.resid_dropout(y) if self.dropout else y


def widened(c) -> bool:
    """Whether a capacity lever (issue #35) is on."""
    return bool(c.mlp_width or c.glu or c.head_dim or c.qk_norm or c.norm != "layer")


class LeverGPT(GPT):
    """GPT with LeverConfig's levers, and the output rows' log-probabilities kept on request (keep_log_probs)."""

    def __init__(self, config):
        super().__init__(config)
        if config.ngram_buckets:
            torch.nn.init.zeros_(self.transformer.wngram.weight)
        if config.head_width:
            torch.nn.init.zeros_(self.head_wide.weight)
        if config.mos:
            with torch.no_grad():  # each P_k: the identity plus _init_weights' N(0, 0.02)
                self.head_mix.weight.view(config.mos, config.n_embd, config.n_embd).add_(torch.eye(config.n_embd))
        # opt-in: the log-probabilities of the output rows in the last forward with targets, (b, t, k) under a
        # shortlist, else (b, t, vocab), for a loss on them (the n-gram teacher) without another pass over the
        # vocabulary. Off by default: a module holding a non-leaf tensor cannot be deep-copied
        self.keep_log_probs = False
        self.last_log_probs = None

    def add_modules(self, n_rows):
        """GPT.__init__'s seam: the levers' modules, created where GPT created them (the same random stream)."""
        c = self.config
        if widened(c):
            for block in self.transformer.h:
                block.attn, block.mlp = WideAttention(c), WideMLP(c)
                if c.norm == "rms":
                    block.ln_1, block.ln_2 = RMSNorm(c.n_embd), RMSNorm(c.n_embd)
                block.fusable = not (c.qk_norm or c.norm == "rms")
            if c.norm == "rms":
                self.transformer.ln_f = RMSNorm(c.n_embd)
        if c.ngram_buckets:
            # rows [0, k) for bigrams, [k, 2k) for trigrams
            self.transformer["wngram"] = nn.Embedding(2 * c.ngram_buckets, c.n_embd)
        if c.head_width:
            self.head_up = nn.Linear(c.n_embd, c.head_width, bias=False)  # A
            self.head_wide = nn.Linear(c.head_width, n_rows, bias=False)  # U
        if c.mos:
            self.head_prior = nn.Linear(c.n_embd, c.mos, bias=False)  # W: the mixture's weights
            self.head_mix = nn.Linear(c.n_embd, c.mos * c.n_embd, bias=False)  # P_1 .. P_K, stacked

    def embed(self, idx):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}, block size is {self.config.block_size}")
        c = self.config
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t,)
        blank = None
        if self.training and c.token_noise > 0:
            blank = torch.rand(b, t, device=idx.device) < c.token_noise  # (b, t)
        rows = self.token_rows[idx] if c.shortlist_size else idx  # (b, t)
        if blank is not None:
            filler = c.shortlist_size if c.shortlist_size else torch.randint_like(idx, c.vocab_size)
            rows = torch.where(blank, filler, rows)
        tok_emb = self.transformer.wte(rows)  # (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (t, n_embd)
        x = tok_emb + pos_emb
        if c.ngram_buckets:
            ids = idx if blank is None else idx.masked_fill(blank, c.vocab_size)  # a blank is its own symbol
            x = x + self.ngram_embedding(ids)
        return self.transformer.drop(x) if c.dropout else x  # (b, t, n_embd)

    def ngram_embedding(self, ids):
        """ids (b, t) in [0, vocab_size] -> (b, t, n_embd): the bigram and trigram table rows of each position."""
        c = self.config
        k, base = c.ngram_buckets, c.vocab_size + 1
        b, t = ids.shape
        out = ids.new_zeros(()).float().expand(b, t, c.n_embd)
        key = ids
        for order in (2, 3):
            if t < order:
                break
            key = key[:, :-1] * base + ids[:, order - 1 :]  # (b, t - order + 1): the n-gram's id, < base**3 < 2**63
            # multiplicative hashing (Knuth): the id times an odd constant, its high bits folded into the low ones
            h = key * 0x9E3779B1
            h = (h ^ (h >> 29)) % k + (order - 2) * k  # (b, t - order + 1), non-negative
            rows = self.transformer.wngram(h)  # (b, t - order + 1, n_embd)
            out = out + F.pad(rows, (0, 0, order - 1, 0))  # positions before the first whole n-gram get 0
        return out

    def head(self, x, targets=None):
        """Final states x (b, t, C) -> (logits, loss), nanoGPT's output layer: with targets, the logits
        of every position (b, t, vocab_size) and their mean cross-entropy over targets != -1; without,
        the logits of the last position (b, 1, vocab_size) and None."""
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.logits(x[:, [-1], :]), None  # (b, 1, vocab): inference needs the last position only
        if not self.config.shortlist_size:
            logits = self.raw_logits(x)  # (b, t, vocab)
            if self.keep_log_probs:  # the loss read off the kept log-probabilities: one log_softmax, not two
                self.last_log_probs = F.log_softmax(logits, dim=-1)
                logp = self.last_log_probs.view(-1, logits.size(-1))
                return logits, F.nll_loss(logp, targets.reshape(-1), ignore_index=-1)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        ls = F.log_softmax(
            self.raw_logits(x, self.config.shortlist_size), dim=-1
        )  # log P(token | shortlist), (b, t, k)
        if self.keep_log_probs:
            self.last_log_probs = ls + math.log1p(-self.config.unseen_mass)
        # the loss is F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1),
        # read off the shortlist's k columns instead of all vocab_size (a test checks they agree)
        return self.full_logits(ls), self.shortlist_loss(ls, targets)

    def shortlist_log_probs(self, x):
        """x: (b, t, C) after ln_f -> log P(token) of the k shortlisted tokens, in row order (b, t, k)."""
        c = self.config
        log_in = math.log1p(-c.unseen_mass)  # log P(token in the shortlist)
        return F.log_softmax(self.raw_logits(x, c.shortlist_size), dim=-1) + log_in

    def raw_logits(self, x, rows=None):
        """x: (b, t, C) after ln_f -> the output layer's logits of its first `rows` rows (all if None), (b, t, rows):
        E h, plus U gelu(A h) under head_width. Under mos, the mixture's log-probabilities over those rows (logits
        whose log-softmax is themselves)."""
        c = self.config
        h = torch.tanh(self.head_mix(x)).unflatten(-1, (c.mos, c.n_embd)) if c.mos else x  # (b, t, [K,] C)
        logits = F.linear(h, self.lm_head.weight[:rows])  # (b, t, [K,] rows)
        if c.head_width:  # (no "+ 0" when off: every kernel counts on a launch-bound device)
            z = F.linear(F.gelu(self.head_up(x)), self.head_wide.weight[:rows])  # (b, t, rows)
            logits = logits + (z.unsqueeze(-2) if c.mos else z)
        if not c.mos:
            return logits
        log_prior = F.log_softmax(self.head_prior(x), dim=-1).unsqueeze(-1)  # (b, t, K, 1)
        return torch.logsumexp(log_prior + F.log_softmax(logits, dim=-1), dim=-2)  # (b, t, rows)


def model_from_args(model_args: dict) -> LeverGPT:
    """The model of a checkpoint's model_args (model.py's GPTConfig fields, and any lever's): a LeverGPT, which with
    its levers off computes what GPT does."""
    return LeverGPT(LeverConfig(**model_args))


# ---------------------------------------------------------------------------------------------
# the n-gram teacher (Recipe.ngram_distill)


HOST_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class SparseTargetCrossEntropy(torch.autograd.Function):
    """-mean_p sum_r target[p, r] logp[p, r] for the target g[p] * n_w[r] + vals at flat keys (NgramTeacher's
    sparse_target), without building it in the forward (one matrix-vector product, one gather) and built once in the
    backward, as the gradient (one outer product, one scatter)."""

    @staticmethod
    def forward(ctx, logp, g, n_w, keys, vals):  # logp: (P, n_rows); g: (P,); n_w: (n_rows,); keys, vals: (E,)
        ctx.save_for_backward(g, n_w, keys, vals)
        return -(torch.dot(g, logp @ n_w) + torch.dot(vals, logp.reshape(-1)[keys])) / len(g)

    @staticmethod
    def backward(ctx, grad):
        g, n_w, keys, vals = ctx.saved_tensors
        scale = grad / -len(g)
        out = torch.outer(g * scale, n_w)  # (P, n_rows)
        out.view(-1).index_put_((keys,), vals * scale, accumulate=True)
        return out, None, None, None, None


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
            raise tm.DataError(f"the n-gram teacher needs at least 3 training tokens, got {len(t)}; {tm.PREPARE_HINT}")
        V = self.V = vocab_size
        self.leave_one_out, self.on = leave_one_out, torch.device(on)
        rows = np.arange(V) if token_rows is None else np.asarray(token_rows, dtype=np.int64)
        self.n_rows = n_rows or V
        if int(rows[t].max()) >= self.n_rows:
            raise ValueError(f"a training token maps to a row >= n_rows {self.n_rows}: the rows must cover train.bin")
        # the counts stay on the host (numpy, exact in float64): a batch's target is built there, sparse, and only
        # its cross-entropy with the model's log-probabilities runs on the device (a few kernels: cross_entropy)
        u, v, w = np.lib.stride_tricks.sliding_window_view(t, 3).T  # every trigram of the split
        self.tri, tri_count = np.unique((u * V + v) * V + w, return_counts=True)  # sorted (u, v, w)
        # trigram level: contexts (u, v), their successors w and counts
        self.ctx3, start3 = np.unique(self.tri // V, return_index=True)
        self.ptr3 = np.append(start3, len(self.tri))  # context i's successors: tri[ptr3[i]:ptr3[i + 1]]
        self.len3 = np.diff(self.ptr3).astype(np.float64)  # N1+(uv.)
        self.total3 = np.add.reduceat(tri_count, start3).astype(np.float64)  # c(uv.)
        self.w3, self.c3 = rows[self.tri % V], tri_count.astype(np.float64)  # c(uvw), in the order of w3
        d3 = self.discount(tri_count)
        self.p3 = np.maximum(self.c3 - d3, 0)  # the discounted counts, in the order of w3
        # bigram level, continuation counts: N1+(.vw) = the distinct u before (v, w)
        self.vw, n_vw = np.unique(self.tri % (V * V), return_counts=True)  # sorted (v, w)
        v_of, w_of = self.vw // V, self.vw % V
        d2 = self.discount(n_vw)
        self.p2 = np.maximum(n_vw - d2, 0)  # the discounted continuation counts, in the order of w2
        self.s_v = np.bincount(v_of, weights=n_vw, minlength=V)  # N1+(.v.)
        succ_v = np.bincount(v_of, minlength=V)  # N1+(v.)
        self.succ_v, self.ptr2 = succ_v.astype(np.float64), np.concatenate([[0], np.cumsum(succ_v)])
        self.w2, self.n2 = rows[w_of], n_vw.astype(np.float64)  # N1+(.vw), in the order of w2
        # unigram level: N1+(.w) over rows, and N1+(..)
        self.n_w = np.bincount(rows[w_of], minlength=self.n_rows).astype(np.float64)
        self.n_types, self.token_rows = float(len(self.vw)), rows
        self.discounts = (float(d2), float(d3))
        self.n_w_on = {}  # n_w as a tensor, per (device, dtype) the cross-entropy has met

    @staticmethod
    def discount(counts: np.ndarray) -> float:
        n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
        return n1 / (n1 + 2 * n2) if n1 + n2 else 0.5

    @staticmethod
    def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray):
        """The entry of each query key in the sorted `keys` (clamped) and its count, 0 where the key is absent."""
        i = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return i, np.where(keys[i] == query, counts[i], 0.0)

    def sparse_target(self, xb, yb=None) -> tuple:
        """xb: (b, t) inputs, yb: (b, t) their targets (needed under leave_one_out), arrays or tensors -> the
        teacher's next-row distribution at each position p = i * t + j, sparse, in float64 on the host:
        g (P,), keys (E,), vals (E,) with target[p, r] = g[p] * n_w[r] + the vals at keys p * n_rows + r (summed)."""
        if self.leave_one_out and yb is None:
            raise ValueError(
                "a leave-one-out teacher needs the targets yb: each position's own occurrence is taken out"
            )
        host = lambda a: np.asarray(a.cpu().numpy() if torch.is_tensor(a) else a, dtype=np.int64)  # no uint16 wrap
        xb = host(xb)
        b, t = xb.shape
        d2, d3 = self.discounts
        V, R = self.V, self.n_rows
        v = xb.reshape(-1)  # (P,) the last context token of each position
        u = np.concatenate([np.full((b, 1), -1), xb[:, :-1]], axis=1).reshape(-1)  # (P,) -1: none in the window
        c, total = self._lookup(self.ctx3, self.total3, u * V + v)
        total = np.where(u < 0, 0.0, total)  # c(uv.), 0: no trigram context
        n3, s, succ, n_types = self.len3[c], self.s_v[v], self.succ_v[v], self.n_types
        if self.leave_one_out:
            y = host(yb).reshape(-1)
            _, cy = self._lookup(self.tri, self.c3, (u * V + v) * V + y)
            taken = ((u >= 0) & (cy > 0)).astype(np.float64)  # a trigram not in the counts has nothing to take out
            _, ny = self._lookup(self.vw, self.n2, v * V + y)
            gone3 = taken * (cy == 1)  # the trigram type (u, v, y) goes: continuation counts lose it
            gone2 = gone3 * (ny == 1)  # and with it the bigram type (v, y)
            total, n3 = total - taken, n3 - gone3
            s, succ, n_types = s - gone3, succ - gone2, n_types - gone2
        seen = total > 0  # (P,) positions whose trigram context is seen
        inv3 = np.where(seen, 1.0 / np.maximum(total, 1.0), 0.0)
        gamma3 = np.where(seen, d3 * n3 * inv3, 1.0)  # weight of p2 (all of it: no context)
        has2 = s > 0
        inv2 = np.where(has2, 1.0 / np.maximum(s, 1.0), 0.0)
        gamma2 = np.where(has2, d2 * succ * inv2, 1.0)  # a v never seen: p1 alone
        idx3, n3_run = self._successors(self.ptr3, c, seen)
        idx2, n2_run = self._successors(self.ptr2, v, has2)
        first = np.arange(len(v)) * R  # (P,) each position's first flat index
        keys = [np.repeat(first, n3_run) + self.w3[idx3], np.repeat(first, n2_run) + self.w2[idx2]]
        vals = [self.p3[idx3] * np.repeat(inv3, n3_run), self.p2[idx2] * np.repeat(gamma3 * inv2, n2_run)]
        if self.leave_one_out:  # y's own entries, each level's count one lower than what was added above
            fix = inv3 * (np.maximum(cy - taken - d3, 0) - np.maximum(cy - d3, 0))
            fix += gamma3 * inv2 * (np.maximum(ny - gone3 - d2, 0) - np.maximum(ny - d2, 0))
            fix -= gamma3 * gamma2 * gone2 / n_types
            at = np.minimum(self.token_rows[y], R - 1)  # fix is 0 where y is not in the counts (no row)
            keys.append(np.arange(len(y)) * R + at)
            vals.append(fix)
        return gamma3 * gamma2 / n_types, np.concatenate(keys), np.concatenate(vals)

    @torch.no_grad()
    def target(self, xb, yb=None, dtype=torch.float32) -> torch.Tensor:
        """xb: (b, t) inputs, yb: (b, t) their targets (needed under leave_one_out) -> the teacher's next-row
        distribution at each position, dense, (b * t, n_rows) on the teacher's device (for studies and tests)."""
        g, keys, vals = self.sparse_target(xb, yb)
        out = np.outer(g, self.n_w)  # (P, n_rows): the lowest order, scaled
        np.add.at(out.reshape(-1), keys, vals)
        out = np.maximum(out, 0.0)  # a count taken to 0 leaves a float rounding of 0 at y, either sign
        return torch.from_numpy(out).to(device=self.on, dtype=dtype)

    def cross_entropy(self, logp: torch.Tensor, xb: torch.Tensor, yb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """logp: (b, t, n_rows) log-probabilities of the next row; xb, yb: (b, t) the inputs and targets -> the mean
        over positions of -sum_rows teacher * logp, a scalar. The target is never built: the lowest order is one
        matrix-vector product, the higher orders a gather of their entries (the batch goes to the host for them:
        on MPS or CUDA one small copy and a synchronisation per step)."""
        g, keys, vals = self.sparse_target(xb, yb)
        host = HOST_DTYPES.get(logp.dtype)

        def on(a):  # cast on the host where numpy has the dtype (no conversion kernel), else on the device
            if host is None:
                return torch.from_numpy(a).to(logp.device, logp.dtype)
            return torch.from_numpy(a.astype(host, copy=False)).to(logp.device)

        if (logp.device, logp.dtype) not in self.n_w_on:
            self.n_w_on[logp.device, logp.dtype] = on(self.n_w)
        n_w, keys_on = self.n_w_on[logp.device, logp.dtype], torch.from_numpy(keys).to(logp.device)
        return SparseTargetCrossEntropy.apply(logp.reshape(-1, logp.size(-1)), on(g), n_w, keys_on, on(vals))

    @staticmethod
    def _successors(ptr: np.ndarray, context: np.ndarray, keep: np.ndarray):
        """The entries ptr[context]..ptr[context + 1] of the kept positions as one flat list of indices, and each
        position's number of entries n (np.repeat(x, n) spreads a per-position x over its entries)."""
        start = ptr[context]
        n = np.where(keep, ptr[context + 1] - start, 0)  # (P,)
        return np.arange(int(n.sum())) + np.repeat(start - (np.cumsum(n) - n), n), n


def make_teacher(r: "LeverRecipe", model: "LeverGPT", train_tokens: np.ndarray, on) -> Optional[NgramTeacher]:
    """The recipe's n-gram teacher over the model's output rows, or None when ngram_distill is 0."""
    if r.ngram_distill == 0:
        return None
    k = model.config.shortlist_size
    model.keep_log_probs = True  # train_step reads the output rows' log-probabilities from the forward
    rows = model.token_rows.cpu().numpy() if k else None
    return NgramTeacher(train_tokens, r.vocab_size, rows, k, on, leave_one_out=r.ngram_loo)


def distill_term(model: LeverGPT, ngram_teacher: NgramTeacher, weight: float):
    """train_step's extra loss: weight * (CE(teacher) - CE(targets)), so that the loss is (1 - a) CE + a CE(teacher)."""

    def term(xb, yb, loss):
        logp, model.last_log_probs = model.last_log_probs, None  # released: the graph keeps what backward needs
        return weight * (ngram_teacher.cross_entropy(logp, xb, yb) - loss)

    return term


def train_step(model, optimizers, params, xb, yb, r, ngram_teacher: Optional[NgramTeacher] = None):
    """train_mps.train_step with the recipe's n-gram teacher (from make_teacher), or none."""
    term = None if ngram_teacher is None else distill_term(model, ngram_teacher, r.ngram_distill)
    return tm.train_step(model, optimizers, params, xb, yb, r, term)


# ---------------------------------------------------------------------------------------------
# training levers


def make_optimizers(model: GPT, r, device_type: str):
    """AdamW on everything (nanoGPT groups), or Muon on hidden 2-D matrices + AdamW on the rest."""
    if r.optimizer == "adamw":
        return tm.make_optimizers(model, r, device_type)
    if r.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise RuntimeError(
                f"optimizer='muon' needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}"
            )
        hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n]
        hidden_ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if id(p) not in hidden_ids]
        muon = torch.optim.Muon(hidden, lr=r.muon_lr, weight_decay=r.weight_decay, adjust_lr_fn="match_rms_adamw")
        return [muon, tm.adamw(rest, r)]
    raise ValueError(f"unknown optimizer {r.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def window_best(recent: deque, vloss: float, best: float, window: int) -> Optional[float]:
    """Model selection's rule: record vloss; return the mean of the last `window` evaluations when the
    window is full and the mean beats `best` (the caller then keeps the current weights), else None."""
    recent.append(vloss)
    mean = sum(recent) / len(recent)
    return mean if window > 0 and len(recent) == recent.maxlen and mean < best else None


class WindowSelection:
    """Recipe.select_window > 0: keep the weights whose mean val loss over the last `window` evaluations is lowest
    and end train() with them (early stopping; a copy per new best); 0: end with the last weights."""

    def __init__(self, window: int, n_iters: int):
        self.window, self.n_iters = window, n_iters
        self.recent = deque(maxlen=max(1, window))
        self.best, self.iter, self.state, self.last = float("inf"), None, None, None

    def observe(self, it: int, vloss: float, model) -> None:
        sel = window_best(self.recent, vloss, self.best, self.window)
        if sel is not None:
            self.best, self.iter = sel, it
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model) -> None:
        """End with the selected weights, keeping the last ones for report."""
        if self.state is not None:
            self.last = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(self.state)

    def report(self, model, evaluate, val_full: float) -> dict:
        """What the last weights would have given (for the ablation), and the iteration of the selected ones."""
        val_full_last = val_full
        if self.last is not None:
            model.load_state_dict(self.last)
            val_full_last = evaluate()  # the whole-split loss of the model as loaded
            model.load_state_dict(self.state)
        selected_iter = self.iter if self.state is not None else self.n_iters
        return {"val_loss_full_last_weights": val_full_last, "selected_iter": selected_iter}


def step_counts(r) -> dict:
    """The distribution of a training step's step count, {steps_per_layer: probability}: uniform over
    steps_per_layer..random_steps on a share refine_prob of the steps (all of them for a train_mps.Recipe),
    steps_per_layer on the others."""
    if not r.random_steps:
        return {r.steps_per_layer: 1.0}
    refine_prob = getattr(r, "refine_prob", 1.0)
    span = range(r.steps_per_layer, r.random_steps + 1)
    probs = {n: refine_prob / len(span) for n in span}
    probs[r.steps_per_layer] += 1.0 - refine_prob
    return probs


def draw_steps(r, rng: random.Random) -> int:
    """One draw from step_counts(r), the step count of the next training step. Its own stream: the draws never
    perturb the batches (and with refine_prob 1 it is one randint per step, as before refine_prob existed)."""
    if not r.random_steps or (r.refine_prob < 1.0 and rng.random() >= r.refine_prob):
        return r.steps_per_layer
    return rng.randint(r.steps_per_layer, r.random_steps)


# ---------------------------------------------------------------------------------------------
# the recipe

LEVER_RULES = (
    ("optimizer", lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
    ("muon_lr", lambda v: tm._is_real(v) and v > 0, "a finite number > 0"),
    ("select_window", lambda v: tm._is_int(v) and v >= 0, "an integer >= 0 (0 ends with the last weights)"),
    ("ngram_distill", tm._is_unit, "a number in [0, 1) (0 = no teacher)"),
    ("ngram_loo", lambda v: isinstance(v, bool), "True or False"),
    ("refine_prob", lambda v: tm._is_real(v) and 0 <= v <= 1, "a number in [0, 1] (1 = every step draws)"),
)


@dataclass(frozen=True)
class LeverRecipe(tm.Recipe):
    """Recipe with the levers, each off by default."""

    ngram_buckets: int = LeverConfig.ngram_buckets  # hashed bigram + trigram input embeddings; 0 = off
    token_noise: float = LeverConfig.token_noise  # data noising: probability of a blank input token; 0 = off
    head_width: int = LeverConfig.head_width  # nonlinear output features beside the tied logits; 0 = off
    mos: int = LeverConfig.mos  # K >= 2: a mixture of K softmaxes as the output layer; 0 = one softmax
    mlp_width: int = LeverConfig.mlp_width  # the MLP's hidden width; 0 = 4 n_embd
    glu: str = LeverConfig.glu  # '' | geglu | swiglu: a gated MLP
    head_dim: int = LeverConfig.head_dim  # query/key/value width per head; 0 = n_embd / n_head
    norm: str = LeverConfig.norm  # layer | rms
    qk_norm: bool = LeverConfig.qk_norm  # RMSNorm on queries and keys
    # loss design (issue #16): the training loss is (1 - a) * CE(targets) + a * CE(teacher), the teacher an
    # interpolated Kneser-Ney trigram fitted on train.bin (NgramTeacher); training only, the model stays a network.
    ngram_distill: float = 0.0
    # True: the teacher leaves each position's own trigram occurrence out of its counts (NgramTeacher), so that on
    # training text it predicts as on new text
    ngram_loo: bool = False
    # the share of training steps that draw their step count (from steps_per_layer..random_steps); the others train at
    # steps_per_layer. 1.0 = every step draws. Below 1, the finer integrator runs on a fraction of the steps only
    # (after Ott et al. 2021, "ResNet after all?"), for fewer field evaluations per step on average (step_counts).
    refine_prob: float = 1.0
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    muon_lr: float = 0.02
    # model selection (WindowSelection): > 0 ends train() with the weights of the best window of evaluations
    select_window: int = 0

    RULES = tm.RECIPE_RULES + LEVER_RULES

    def __post_init__(self):
        super().__post_init__()
        if self.refine_prob != 1.0 and not self.random_steps:
            raise ValueError(
                "refine_prob is the share of steps that draw from random_steps, which is 0 (off): set both"
            )
        if self.ngram_loo and not self.ngram_distill:
            raise ValueError("ngram_loo=True changes the n-gram teacher, which ngram_distill=0 leaves off: set both")

    def model_classes(self):
        return LeverGPT, LeverConfig

    def optimizers(self, model, device_type: str) -> list:
        return make_optimizers(model, self, device_type)

    def extra_loss(self, model, train_tokens: np.ndarray, on):
        ngram_teacher = make_teacher(self, model, train_tokens, on)
        return None if ngram_teacher is None else distill_term(model, ngram_teacher, self.ngram_distill)

    def selection(self, n_iters: int):
        return WindowSelection(self.select_window, n_iters)

    def draw_steps(self, rng: random.Random) -> int:
        return draw_steps(self, rng)


def make_model(r: LeverRecipe, train_tokens: np.ndarray) -> LeverGPT:
    return tm.make_model(r, train_tokens)


def train(recipe: Optional[LeverRecipe] = None):
    """train_mps.train with the levers: the harness's entry point, for a LeverRecipe."""
    return tm.train(recipe or LeverRecipe())
