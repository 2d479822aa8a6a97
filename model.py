import copy

# odegpt: nanoGPT's GPT with a continuous-depth residual stream. Layer l is the field A(x) + M(x) = Attn(LN1(x)) +
# MLP(LN2(x)) on depth [l, l+1), integrated by an explicit Runge-Kutta method in steps_per_layer steps under a
# splitting (SPLITTING_SCHEMES). euler/lie/1 is nanoGPT's pre-LN block bit for bit; the weights are nanoGPT's.
import inspect
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # 2.0 and True are no sizes or step counts


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ButcherTableau:
    """Explicit Runge-Kutta method: k_i = f(x + h sum_{j<i} a_ij k_j), x' = x + h sum_i b_i k_i."""

    name: str
    order: int
    a: tuple  # row i has i entries (strictly lower triangular)
    b: tuple
    c: tuple

    def __post_init__(self):
        _check(len(self.a) == len(self.b) == len(self.c), f"{self.name}: a, b, c must all have {len(self.b)} stages")
        for i, row in enumerate(self.a):
            _check(len(row) == i, f"{self.name}: row {i} of a must have {i} entries (explicit method)")
            s = f"{self.name}: row {i} of a sums to {sum(row)}, expected c[{i}]={self.c[i]}"
            _check(math.isclose(sum(row), self.c[i], abs_tol=1e-12), s)
        _check(math.isclose(sum(self.b), 1.0, abs_tol=1e-12), f"{self.name}: b sums to {sum(self.b)}, expected 1")

    @property
    def stages(self) -> int:
        return len(self.b)


# name: (order, a, b, c); rk4_38 is torchdiffeq's "rk4"
BUTCHER_TABLES = {
    "euler": (1, ((),), (1.0,), (0.0,)),
    "midpoint": (2, ((), (0.5,)), (0.0, 1.0), (0.0, 0.5)),
    "heun": (2, ((), (1.0,)), (0.5, 0.5), (0.0, 1.0)),
    "ralston": (2, ((), (2 / 3,)), (0.25, 0.75), (0.0, 2 / 3)),
    "bosh3": (3, ((), (0.5,), (0.0, 0.75)), (2 / 9, 1 / 3, 4 / 9), (0.0, 0.5, 0.75)),
    "kutta3": (3, ((), (0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6), (0.0, 0.5, 1.0)),
    "rk4": (4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0)),
    "rk4_38": (
        4,
        ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        (1 / 8, 3 / 8, 3 / 8, 1 / 8),
        (0.0, 1 / 3, 2 / 3, 1.0),
    ),
}
TABLEAUX = {name: ButcherTableau(name, *t) for name, t in BUTCHER_TABLES.items()}
# a splitting is a sequence of (sub-field, fraction of h) per step
SPLITTING_SCHEMES = {"lie": (("attn", 1.0), ("mlp", 1.0)), "strang": (("mlp", 0.5), ("attn", 1.0), ("mlp", 0.5))}
SPLITTING_SCHEMES["parallel"] = (("both", 1.0),)
SPLITTINGS = tuple(SPLITTING_SCHEMES)


def _combine(x, h, coeffs, ks):
    """x + h sum_i coeffs_i k_i in one torch.add per nonzero term."""
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0]
    if not terms:
        return x
    c0, acc = terms[0]
    for c, k in terms[1:]:
        acc = torch.add(acc, k, alpha=c / c0)
    return x + acc if h * c0 == 1 else torch.add(x, acc, alpha=h * c0)


def _hutchinson_sq(k, x_in, create_graph):
    """||eps^T dk/dx_in||^2, eps Rademacher: unbiased for ||J||_F^2."""
    eps = torch.randint_like(k, 0, 2).mul_(2).sub_(1)
    (vjp,) = torch.autograd.grad(k, x_in, eps, create_graph=create_graph)
    return vjp.pow(2).sum()


def rk_step(f, x, h: float, tableau: ButcherTableau, stats=None):
    """One RK step of dx/dt = f(x); `stats` gets the regularizers' quadrature per token, h sum_i b_i ||k_i||^2 and
    likewise ||dk_i/dx_i||_F^2 (Hutchinson)."""
    want_jac = stats is not None and stats.get("jacobian", False)
    ks = []
    for i in range(tableau.stages):
        x_i = _combine(x, h, tableau.a[i], ks)
        if want_jac and not x_i.requires_grad:
            x_i = x_i.detach().requires_grad_(True)
        k = f(x_i)
        ks.append(k)
        if stats is not None and tableau.b[i] != 0:
            n_tok = k.numel() // k.shape[-1]
            stats["kinetic_energy"] = stats["kinetic_energy"] + h * tableau.b[i] * k.pow(2).sum() / n_tok
            if want_jac:
                jac = _hutchinson_sq(k, x_i, create_graph=torch.is_grad_enabled() and stats.get("train", False))
                stats["jacobian_frobenius"] = stats["jacobian_frobenius"] + h * tableau.b[i] * jac / n_tok
    return _combine(x, h, tableau.b, ks)


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    # the integrator (train_mps.Recipe reads these defaults); nanoGPT's block is euler, 1, lie
    solver: str = "heun"  # a name in TABLEAUX
    steps_per_layer: int = 1
    splitting: str = "parallel"  # lie, strang, parallel
    # differential regularization (Finlay et al. 2020), 0 = off
    kinetic_energy: float = 0.0  # lambda_K on int ||F(x)||^2 dt
    jacobian_frobenius: float = 0.0  # lambda_J on int ||dF/dx||_F^2 dt
    zero_init_proj: bool = False  # zero c_proj: every layer's flow starts as the identity
    # k > 0: a softmax over k tokens (set_shortlist) with mass 1 - unseen_mass; the others share unseen_mass and a row
    shortlist_size: int = 0
    unseen_mass: float = 0.0

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "steps_per_layer"):
            _check(_is_int(v := getattr(self, name)) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        _check(self.solver in TABLEAUX, f"unknown solver {self.solver!r}; valid solvers: {', '.join(TABLEAUX)}")
        s = self.splitting
        _check(s in SPLITTINGS, f"unknown splitting {s!r}; valid splittings: {', '.join(SPLITTINGS)}")
        _check(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        d = self.dropout
        _check(_is_real(d) and 0 <= d < 1, f"dropout must be a number in [0, 1), got {d!r}")
        for name in ("kinetic_energy", "jacobian_frobenius"):
            v, rule = getattr(self, name), "a finite number >= 0 (0 = off)"
            _check(_is_real(v) and v >= 0, f"regularization weight {name} must be {rule}, got {v!r}")
        k, p = self.shortlist_size, self.unseen_mass
        _check(_is_int(k) and 0 <= k < self.vocab_size, f"shortlist_size must be 0 or in [1, vocab_size), got {k!r}")
        _check(_is_real(p), f"unseen_mass must be a finite number, got {p!r}")
        _check(
            not k or 0 < p < 1,
            f"a shortlist needs 0 < unseen_mass < 1 (the probability of the tokens outside it), got {p!r}",
        )
        _check(k or not p, "unseen_mass is the shortlist's tail probability: set shortlist_size > 0 or leave it 0")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.c_attn(x).split(self.n_embd, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)
        return self.resid_dropout(y) if self.dropout else y  # dropout 0 dispatches nothing


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def act(self, u):
        return self.gelu(u)  # the hidden layer from c_fc's output (fused_field calls it too)

    def forward(self, x):
        x = self.c_proj(self.act(self.c_fc(x)))  # (B, T, C)
        return self.dropout(x) if self.dropout.p else x


class Block(nn.Module):
    """One layer = one vector field on its unit depth interval, split into attention and MLP."""

    def __init__(self, config):
        super().__init__()
        self.config = config  # its integrator; GPT.set_integrator updates it
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.fused = False  # integrate the parallel field by fused_field; GPT sets it where fused_field_agrees
        self.fusable = True  # False: modules fused_field does not compute (a lever's, levers.py)

    def attn_field(self, x):
        return self.attn(self.ln_1(x))  # A(x), (B, T, C)

    def mlp_field(self, x):
        return self.mlp(self.ln_2(x))  # M(x), (B, T, C)

    def both_field(self, x):
        return self.attn_field(x) + self.mlp_field(x)

    # A + M as one LayerNorm, one input and one output projection (GPT-J's parallel block) on the same weights: the LN
    # gains folded into c_attn and c_fc, the c_proj side by side per head. Bias-free, no dropout.
    def fused_weights(self):
        C, nh = self.config.n_embd, self.config.n_head
        w_in = torch.cat([self.attn.c_attn.weight * self.ln_1.weight, self.mlp.c_fc.weight * self.ln_2.weight])
        w_out = torch.cat([self.attn.c_proj.weight.view(C, nh, -1), self.mlp.c_proj.weight.view(C, nh, -1)], dim=2)
        return w_in, w_out.view(C, -1)  # (3D + H, C), (C, D + H)

    def fused_field(self, x, weights):
        B, T, C = x.size()
        nh, D, H = self.config.n_head, self.attn.c_attn.out_features // 3, self.mlp.c_fc.out_features
        u = F.linear(F.layer_norm(x, (C,), eps=1e-5), weights[0])  # (B, T, 3D + H): q, k, v, the MLP's hidden layer
        q, k, v, hidden = u.split([D, D, D, H], dim=2)
        q, k, v = (t.view(B, T, nh, D // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        z = torch.cat([y.transpose(1, 2), self.mlp.act(hidden).view(B, T, nh, -1)], dim=3)  # (B, T, nh, hs + H/nh)
        return F.linear(z.view(B, T, -1), weights[1])  # (B, T, C)

    def forward(self, x, stats=None):
        c = self.config
        fields = {"attn": self.attn_field, "mlp": self.mlp_field, "both": self.both_field}
        if c.splitting == "parallel" and self.fused:
            weights = self.fused_weights()
            fields["both"] = lambda x: self.fused_field(x, weights)
        for _ in range(c.steps_per_layer):
            for name, fraction in SPLITTING_SCHEMES[c.splitting]:
                x = rk_step(fields[name], x, 1.0 / c.steps_per_layer * fraction, TABLEAUX[c.solver], stats)
        return x


def _fused_agrees(probe, x) -> bool:
    try:  # the same dropout draws on both sides
        torch.manual_seed(1)
        want = probe.both_field(x)
        torch.manual_seed(1)
        got = probe.fused_field(x, probe.fused_weights())
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    except Exception:  # an edit that changed the modules' shapes
        return False


def fused_field_agrees(block: Block) -> bool:
    """Whether fused_field equals this code's both_field, on a perturbed float64 copy (its own random stream)."""
    c = block.config
    if c.bias or c.dropout or not block.fusable:
        return False
    probe = copy.deepcopy(block).double()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for p in probe.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, min(8, c.block_size), c.n_embd, dtype=torch.float64)
        agree = all(_fused_agrees(probe.train(mode), x) for mode in (False, True))
    if not agree:
        print(
            "[model] model.py: Block.fused_field no longer equals attn + mlp (LayerNorm, CausalSelfAttention or MLP "
            "was edited): the parallel splitting integrates attn(ln_1(x)) + mlp(ln_2(x)) itself, the edit in effect "
            "(slower; to fuse it again, edit Block.fused_weights and fused_field to match)",
            file=sys.stderr,
        )
    return agree


def _storage_users(t):  # tensors on t's memory (views, autograd's saved ones); None: this torch cannot count
    count = getattr(torch._C, "_storage_Use_Count", None)
    return count(t.untyped_storage()._cdata) if count else None


class ReusedMemory:
    """One tensor's memory, handed out again once nothing holds it (torch's storage use count), filled again where an
    alias was edited: on CPU a fresh (b, t, vocab) tensor per step costs page faults. Not model state."""

    base = key = idle = None

    def __reduce__(self):  # copies and pickles start empty
        return ReusedMemory, ()

    def take(self, shape, fill: float, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(shape), like.dtype, like.device, fill)
        if key != self.key or self.idle is None or _storage_users(self.base) != self.idle:
            self.base = torch.full(shape, fill, dtype=like.dtype, device=like.device)
            self.key, self.version, self.idle = key, self.base._version, _storage_users(self.base)
        elif self.base._version != self.version:  # an earlier alias was edited in place since
            self.base.fill_(fill)
        return self.base.detach()


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        # embedding rows: one per token, or one per shortlisted token and one shared by all the others
        C, k = config.n_embd, config.shortlist_size
        n_rows = k + 1 if k else config.vocab_size
        wte, wpe = nn.Embedding(n_rows, C), nn.Embedding(config.block_size, C)
        h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.transformer = nn.ModuleDict(
            dict(wte=wte, wpe=wpe, drop=nn.Dropout(config.dropout), h=h, ln_f=LayerNorm(C, config.bias))
        )
        self.lm_head = nn.Linear(C, n_rows, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.add_modules(n_rows)
        # nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer) (GPT-2 paper)
        self.apply(self._init_weights)
        for p in (p for name, p in self.named_parameters() if name.endswith("c_proj.weight")):
            if config.zero_init_proj:
                torch.nn.init.zeros_(p)
            else:
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if (config.kinetic_energy or config.jacobian_frobenius) and len(
            inspect.signature(Block.forward).parameters
        ) < 3:
            raise TypeError(
                "model.py: Block.forward(self, x) cannot integrate the regularizers: give it the integrator's signature"
                " Block.forward(self, x, stats=None) and pass stats to rk_step, or set both weights to 0"
            )
        fused = fused_field_agrees(h[0])  # one check: every block runs the same code
        for block in h:
            block.fused = fused
        self.last_terms = {}  # regularization terms of the last training forward
        self.vocab_memory = ReusedMemory()  # for full_logits' (b, t, vocab) tensor
        if k:  # token id -> row (k outside the shortlist), row -> token id; until set_shortlist, tokens 0..k-1
            self.register_buffer("token_rows", torch.empty(config.vocab_size, dtype=torch.long))
            self.register_buffer("row_tokens", torch.empty(k, dtype=torch.long))
            self.set_shortlist(torch.arange(k))

    def add_modules(self, n_rows):
        """A seam: levers.py's models add their modules here, before the init draws the weights."""

    @torch.no_grad()
    def set_shortlist(self, token_ids):
        """The shortlisted token ids (distinct, in [0, vocab_size)), one per softmax row, in row order."""
        c, ids = self.config, torch.as_tensor(token_ids, dtype=torch.long).flatten()
        _check(c.shortlist_size, "this model has a full softmax (shortlist_size=0); build it with shortlist_size > 0")
        _check(ids.numel() == c.shortlist_size, f"got {ids.numel()} token ids for a shortlist of {c.shortlist_size}")
        _check(
            0 <= int(ids.min()) <= int(ids.max()) < c.vocab_size, f"shortlist token ids must lie in [0, {c.vocab_size})"
        )
        _check(torch.unique(ids).numel() == ids.numel(), "shortlist token ids must be distinct")
        self.row_tokens.copy_(ids)
        self.token_rows.fill_(c.shortlist_size)[self.row_tokens] = torch.arange(len(ids)).to(self.row_tokens)
        return self

    def set_integrator(self, solver=None, steps_per_layer=None, splitting=None):
        """Switch the integrator in place (validated as GPTConfig); the weights are unchanged."""
        chosen = dict(solver=solver, steps_per_layer=steps_per_layer, splitting=splitting)
        self.config = replace(self.config, **{k: v for k, v in chosen.items() if v is not None})
        for block in self.transformer.h:
            block.config = self.config
        return self

    def nfe(self) -> dict:
        """Vector-field evaluations per forward pass, per sub-field, all layers."""
        c, n = self.config, {"attn": 0, "mlp": 0}
        for name, _ in SPLITTING_SCHEMES[c.splitting]:
            for sub in n if name == "both" else (name,):
                n[sub] += TABLEAUX[c.solver].stages * c.steps_per_layer * c.n_layer
        return n

    def get_num_params(self, non_embedding=True):
        n_params = sum(p.numel() for p in self.parameters())
        return n_params - self.transformer.wpe.weight.numel() if non_embedding else n_params

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def embed(self, idx):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}, block size is {self.config.block_size}")
        rows = self.token_rows[idx] if self.config.shortlist_size else idx  # (b, t)
        x = self.transformer.wte(rows) + self.transformer.wpe(torch.arange(t, device=idx.device))  # (b, t, n_embd)
        return self.transformer.drop(x) if self.config.dropout else x

    def integrate(self, x, stats=None):
        for block in self.transformer.h:
            x = block(x) if stats is None else block(x, stats)  # block(x): a nanoGPT-style Block.forward(self, x) too
        return x

    def regularization_stats(self, want_jacobian: bool, train: bool) -> dict:
        zero = torch.zeros(())
        return {"kinetic_energy": zero, "jacobian_frobenius": zero, "jacobian": want_jacobian, "train": train}

    def forward(self, idx, targets=None):
        c = self.config
        regularize = self.training and torch.is_grad_enabled() and (c.kinetic_energy > 0 or c.jacobian_frobenius > 0)
        stats = self.regularization_stats(c.jacobian_frobenius > 0, train=True) if regularize else None
        # the Jacobian term needs double backward, which the fused attention kernels lack
        with sdpa_kernel(SDPBackend.MATH) if stats and stats["jacobian"] else nullcontext():
            x = self.integrate(self.embed(idx), stats)
        logits, loss = self.head(x, targets)
        self.last_terms = {k: stats[k] for k in ("kinetic_energy", "jacobian_frobenius")} if stats else {}
        return logits, loss

    def head(self, x, targets=None):
        """(b, t, C) -> nanoGPT's (logits, loss): with targets, (b, t, vocab) and the loss; else (b, 1, vocab), None."""
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.logits(x[:, [-1], :]), None
        if not self.config.shortlist_size:
            logits = self.raw_logits(x)  # (b, t, vocab)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        ls = F.log_softmax(self.raw_logits(x, self.config.shortlist_size), -1)  # log P(token | shortlist), (b, t, k)
        return self.full_logits(ls), self.shortlist_loss(ls, targets)

    def logits(self, x):
        """x: (b, t, C) after ln_f -> (b, t, vocab); under a shortlist, log-probabilities up to one constant."""
        if not self.config.shortlist_size:
            return self.raw_logits(x)
        return self.full_logits(F.log_softmax(self.raw_logits(x, self.config.shortlist_size), -1))

    def raw_logits(self, x, rows=None):
        return F.linear(x, self.lm_head.weight[:rows])  # (b, t, rows)

    def unseen_log_prob(self) -> float:
        """log P(one given token outside the shortlist)."""
        return math.log(self.config.unseen_mass / (self.config.vocab_size - self.config.shortlist_size))

    def full_logits(self, ls):
        """log P(token | shortlist) (b, t, k) -> (b, t, vocab) logits: log-probabilities less one constant."""
        fill = self.unseen_log_prob() - math.log1p(-self.config.unseen_mass)
        full = self.vocab_memory.take((*ls.shape[:-1], self.config.vocab_size), fill, ls)
        full.index_copy_(-1, self.row_tokens, ls)
        self.vocab_memory.version = full._version
        return full

    def shortlist_loss(self, ls, targets):
        """F.cross_entropy(full logits, targets, ignore_index=-1) read off the shortlist's k columns (a test checks)."""
        k, valid = self.config.shortlist_size, targets >= 0
        rows = self.token_rows[torch.where(valid, targets, 0)]  # (b, t)
        picked = ls.gather(-1, rows.clamp(max=k - 1).unsqueeze(-1)).squeeze(-1)  # (b, t)
        nll = torch.where(rows == k, -self.unseen_log_prob(), -(picked + math.log1p(-self.config.unseen_mass)))
        return (nll * valid).sum() / valid.sum()

    def regularization_loss(self):
        """lambda_K K + lambda_J J of the last training forward (0.0 when off), for the training loop to add."""
        if not self.last_terms:
            return 0.0
        c, t = self.config, self.last_terms
        return c.kinetic_energy * t["kinetic_energy"] + c.jacobian_frobenius * t["jacobian_frobenius"]

    # -- nanoGPT API -----------------------------------------------------------------------------
    def crop_block_size(self, block_size):
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        optim_groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **(dict(fused=True) if fused else {}))

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        """nanoGPT's MFU (A100 bf16 peak 312 TFLOPS), each layer's parameters counted once per field evaluation."""
        c, nfe = self.config, self.nfe()
        n_attn = sum(p.numel() for b in self.transformer.h for p in (*b.ln_1.parameters(), *b.attn.parameters()))
        n_mlp = sum(p.numel() for b in self.transformer.h for p in (*b.ln_2.parameters(), *b.mlp.parameters()))
        n_params = self.get_num_params() + (nfe["attn"] / c.n_layer - 1) * n_attn + (nfe["mlp"] / c.n_layer - 1) * n_mlp
        flops_per_token = 6 * n_params + 12 * c.n_embd * c.block_size * nfe["attn"]  # nanoGPT's, per evaluation
        return flops_per_token * c.block_size * fwdbwd_per_iter / dt / 312e12

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens tokens after idx (LongTensor (b, t)). Call model.eval() first."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx
