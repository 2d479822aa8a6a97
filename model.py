import copy

# odegpt model: nanoGPT's GPT with a continuous-depth residual stream. Layer l owns depth t in [l, l+1) and the field
#     A_l(x) = Attn_l(LN1_l(x)),  M_l(x) = MLP_l(LN2_l(x))
# integrated by an explicit Runge-Kutta method (a Butcher tableau) in steps_per_layer steps of h = 1/steps_per_layer,
# under a splitting: lie (A by h, then M by h), strang (M by h/2, A by h, M by h/2), parallel (F = A + M by h).
# euler/lie/1 is nanoGPT's pre-LN block bit for bit. The weights do not depend on the integrator, and their names
# are nanoGPT's. Self-contained (stdlib + torch), no side effects at import.
import inspect
import math
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# ---------------------------------------------------------------------------------------------
# Solvers are data: one Butcher tableau per method, one generic explicit RK stepper.


@dataclass(frozen=True)
class ButcherTableau:
    """Explicit Runge-Kutta method: k_i = f(x + h sum_{j<i} a_ij k_j), x' = x + h sum_i b_i k_i."""

    name: str
    order: int
    a: tuple  # row i has i entries (strictly lower triangular)
    b: tuple
    c: tuple

    def __post_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(f"{self.name}: a, b, c must all have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"{self.name}: row {i} of a must have {i} entries (explicit method)")
            if not math.isclose(sum(row), self.c[i], abs_tol=1e-12):
                raise ValueError(f"{self.name}: row {i} of a sums to {sum(row)}, expected c[{i}]={self.c[i]}")
        if not math.isclose(sum(self.b), 1.0, abs_tol=1e-12):
            raise ValueError(f"{self.name}: b sums to {sum(self.b)}, expected 1")

    @property
    def stages(self) -> int:
        return len(self.b)

    def stability(self, z: complex) -> complex:
        """R(z) = 1 + z b^T (I - zA)^{-1} 1, by forward substitution."""
        g = []  # g_i = 1 + z sum_j a_ij g_j
        for row in self.a:
            g.append(1 + z * sum(a_ij * g_j for a_ij, g_j in zip(row, g)))
        return 1 + z * sum(b_i * g_i for b_i, g_i in zip(self.b, g))


TABLEAUX = {
    t.name: t
    for t in (
        ButcherTableau("euler", 1, a=((),), b=(1.0,), c=(0.0,)),
        ButcherTableau("midpoint", 2, a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5)),
        ButcherTableau("heun", 2, a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0)),
        ButcherTableau("ralston", 2, a=((), (2 / 3,)), b=(0.25, 0.75), c=(0.0, 2 / 3)),
        ButcherTableau("bosh3", 3, a=((), (0.5,), (0.0, 0.75)), b=(2 / 9, 1 / 3, 4 / 9), c=(0.0, 0.5, 0.75)),
        ButcherTableau("kutta3", 3, a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 0.5, 1.0)),
        ButcherTableau(
            "rk4",
            4,
            a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
            b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
            c=(0.0, 0.5, 0.5, 1.0),
        ),
        ButcherTableau(  # torchdiffeq's "rk4" is this 3/8 rule
            "rk4_38",
            4,
            a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
            b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
            c=(0.0, 1 / 3, 2 / 3, 1.0),
        ),
    )
}

SPLITTINGS = ("lie", "strang", "parallel")


def get_tableau(name: str) -> ButcherTableau:
    if name not in TABLEAUX:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(TABLEAUX)}")
    return TABLEAUX[name]


def _combine(x, h, coeffs, ks):
    """x + h sum_i coeffs_i k_i in one torch.add per nonzero term."""
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0]
    if not terms:
        return x
    c0, acc = terms[0]
    for c, k in terms[1:]:
        acc = torch.add(acc, k, alpha=c / c0)  # sum_i (c_i / c0) k_i
    return x + acc if h * c0 == 1 else torch.add(x, acc, alpha=h * c0)


def _hutchinson_sq(k, x_in, create_graph):
    """||eps^T dk/dx_in||^2, eps Rademacher: unbiased for ||J||_F^2."""
    eps = torch.randint_like(k, 0, 2).mul_(2).sub_(1)
    (vjp,) = torch.autograd.grad(k, x_in, eps, create_graph=create_graph)
    return vjp.pow(2).sum()


def rk_step(f: Callable, x, h: float, tableau: ButcherTableau, stats: Optional[dict] = None):
    """One explicit RK step of size h for dx/dt = f(x). With `stats`, adds the step's quadrature of the
    regularizers per token: kinetic_energy += h sum_i b_i ||k_i||^2, jacobian_frobenius likewise (Hutchinson)."""
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


# a splitting is a sequence of (sub-field, fraction of h) per step: data, not branches
SPLITTING_SCHEMES = {
    "lie": (("attn", 1.0), ("mlp", 1.0)),
    "strang": (("mlp", 0.5), ("attn", 1.0), ("mlp", 0.5)),
    "parallel": (("both", 1.0),),
}

# ---------------------------------------------------------------------------------------------
# Model


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # 2.0 and True are no sizes or step counts


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    steps_per_layer: int = 1  # h = 1 / steps_per_layer
    splitting: str = "parallel"  # lie, strang, parallel
    # differential regularization (Finlay et al. 2020), 0 = off
    kinetic_energy: float = 0.0  # lambda_K on int ||F(x)||^2 dt
    jacobian_frobenius: float = 0.0  # lambda_J on int ||dF/dx||_F^2 dt
    zero_init_proj: bool = False  # zero c_proj: every layer's flow starts as the identity
    # shortlist head: k > 0 = a softmax over k tokens (set_shortlist) with mass 1 - unseen_mass, the other
    # vocab_size - k sharing unseen_mass uniformly; the embedding has k + 1 rows, the last shared by the others
    shortlist_size: int = 0
    unseen_mass: float = 0.0

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "steps_per_layer"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        get_tableau(self.solver)
        if self.splitting not in SPLITTINGS:
            raise ValueError(f"unknown splitting {self.splitting!r}; valid splittings: {', '.join(SPLITTINGS)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not _is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("kinetic_energy", "jacobian_frobenius"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ValueError(f"regularization weight {name} must be a finite number >= 0 (0 = off), got {value!r}")
        if not _is_int(self.shortlist_size) or not 0 <= self.shortlist_size < self.vocab_size:
            raise ValueError(
                f"shortlist_size must be 0 (full softmax) or an integer in [1, vocab_size - 1], "
                f"got {self.shortlist_size!r} with vocab_size {self.vocab_size}"
            )
        if not _is_real(self.unseen_mass):
            raise ValueError(f"unseen_mass must be a finite number, got {self.unseen_mass!r}")
        if self.shortlist_size:
            if not 0.0 < self.unseen_mass < 1.0:
                raise ValueError(
                    f"a shortlist needs 0 < unseen_mass < 1 (the probability of the tokens outside it), "
                    f"got {self.unseen_mass!r}"
                )
        elif self.unseen_mass != 0.0:
            raise ValueError("unseen_mass is the shortlist's tail probability: set shortlist_size > 0 or leave it 0")


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
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        y = self.c_proj(y)  # (B, T, C)
        return self.resid_dropout(y) if self.dropout else y  # dropout 0 dispatches nothing


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact (erf) GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def act(self, u):
        return self.gelu(u)  # the hidden layer from c_fc's output (fused_field calls it too)

    def forward(self, x):
        x = self.c_proj(self.act(self.c_fc(x)))  # (B, T, C)
        return self.dropout(x) if self.dropout.p else x  # dropout 0 dispatches nothing


class Block(nn.Module):
    """One layer = one vector field on its unit depth interval, split into attention and MLP."""

    def __init__(self, config):
        super().__init__()
        self.config = config  # its integrator (solver, steps_per_layer, splitting); GPT.set_integrator updates it
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
        return self.attn_field(x) + self.mlp_field(x)  # F = A + M, (B, T, C)

    # F = A + M as one LayerNorm, one input and one output projection (the parallel block of GPT-J), on the same
    # weights; used only where fused_field_agrees (an edit of the modules makes both_field run instead)
    def fused_weights(self):
        """(w_in (3D + H, C), w_out (C, D + H)): LN gains folded into c_attn and c_fc; the c_proj side by side per head."""
        C, nh = self.config.n_embd, self.config.n_head
        w_in = torch.cat([self.attn.c_attn.weight * self.ln_1.weight, self.mlp.c_fc.weight * self.ln_2.weight])
        w_out = torch.cat([self.attn.c_proj.weight.view(C, nh, -1), self.mlp.c_proj.weight.view(C, nh, -1)], dim=2)
        return w_in, w_out.view(C, -1)

    def fused_field(self, x, weights):
        """F = A + M as both_field computes it (bias-free, no dropout), from fused_weights(). x: (B, T, C)."""
        w_in, w_out = weights
        B, T, C = x.size()
        nh, D, H = self.config.n_head, self.attn.c_attn.out_features // 3, self.mlp.c_fc.out_features  # C, 4C
        u = F.linear(F.layer_norm(x, (C,), eps=1e-5), w_in)  # (B, T, 3D + H): q, k, v and the MLP's hidden layer
        q, k, v, hidden = u.split([D, D, D, H], dim=2)
        q, k, v = (t.view(B, T, nh, D // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        z = torch.cat([y.transpose(1, 2), self.mlp.act(hidden).view(B, T, nh, -1)], dim=3)  # (B, T, nh, hs + H/nh)
        return F.linear(z.view(B, T, -1), w_out)  # (B, T, C)

    def forward(self, x, stats=None):
        """Integrate this layer's field over its unit interval, x: (B, T, C) -> (B, T, C)."""
        c = self.config
        tableau, scheme, h = get_tableau(c.solver), SPLITTING_SCHEMES[c.splitting], 1.0 / c.steps_per_layer
        both = self.both_field
        if c.splitting == "parallel" and self.fused:
            weights = self.fused_weights()
            both = lambda x: self.fused_field(x, weights)  # noqa: E731
        fields = {"attn": self.attn_field, "mlp": self.mlp_field, "both": both}
        for _ in range(c.steps_per_layer):
            for field_name, fraction in scheme:
                x = rk_step(fields[field_name], x, h * fraction, tableau, stats)
        return x


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
        try:
            agree = True
            for train in (False, True):
                probe.train(train)
                torch.manual_seed(1)
                reference = probe.both_field(x)
                torch.manual_seed(1)
                fast = probe.fused_field(x, probe.fused_weights())
                agree = (
                    agree and fast.shape == reference.shape and torch.allclose(fast, reference, rtol=1e-9, atol=1e-12)
                )
        except Exception:  # an edit that changed the modules' shapes
            agree = False
    if not agree:
        print(
            "[model] model.py: Block.fused_field no longer equals attn + mlp (LayerNorm, CausalSelfAttention or MLP "
            "was edited): the parallel splitting integrates attn(ln_1(x)) + mlp(ln_2(x)) itself, the edit in effect "
            "(slower; to fuse it again, edit Block.fused_weights and fused_field to match)",
            file=sys.stderr,
            flush=True,
        )
    return agree


def _storage_users(t) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)  # tensors (views, autograd's saved ones) on it


class ReusedMemory:
    """One tensor's memory, handed out again once nothing holds it (torch's storage use count): on CPU a fresh
    (b, t, vocab) tensor per step costs page faults. Refilled where an alias was edited. Not model state."""

    def __init__(self):
        self.base, self.fill, self.version, self.idle = None, None, None, None

    def __deepcopy__(self, memo):
        return ReusedMemory()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def take(self, shape, fill: float, like: torch.Tensor) -> torch.Tensor:
        base = self.base
        reusable = (
            base is not None
            and hasattr(torch._C, "_storage_Use_Count")
            and (base.shape, base.dtype, base.device, self.fill) == (torch.Size(shape), like.dtype, like.device, fill)
            and _storage_users(base) == self.idle
        )
        if not reusable:
            base = self.base = torch.full(shape, fill, dtype=like.dtype, device=like.device)
            self.fill, self.version = fill, base._version
            self.idle = _storage_users(base) if hasattr(torch._C, "_storage_Use_Count") else None
        elif base._version != self.version:  # an earlier alias was edited in place since: fill again
            base.fill_(fill)
        return base.detach()

    def written(self, alias: torch.Tensor) -> None:
        self.version = alias._version


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        # embedding rows: one per token, or one per shortlisted token + one shared by all the others
        n_rows = config.shortlist_size + 1 if config.shortlist_size else config.vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(n_rows, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, n_rows, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2 and nanoGPT
        self.add_modules(n_rows)
        # nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer) (GPT-2 paper)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if (config.kinetic_energy or config.jacobian_frobenius) and len(
            inspect.signature(Block.forward).parameters
        ) < 3:
            raise TypeError(
                "model.py: Block.forward(self, x) cannot integrate the regularizers (kinetic_energy, "
                "jacobian_frobenius): give it the integrator's signature Block.forward(self, x, stats=None) and pass "
                "stats to rk_step, or set both weights to 0"
            )
        fused = fused_field_agrees(self.transformer.h[0])  # one check: every block runs the same code
        for block in self.transformer.h:
            block.fused = fused
        self.last_terms = {}  # regularization terms of the last training forward
        self.vocab_memory = ReusedMemory()  # for full_logits' (b, t, vocab) tensor
        if config.shortlist_size:
            # token id -> row (shortlist_size outside it) and row -> token id; until set_shortlist, tokens 0..k-1
            self.register_buffer("token_rows", torch.empty(config.vocab_size, dtype=torch.long))
            self.register_buffer("row_tokens", torch.empty(config.shortlist_size, dtype=torch.long))
            self.set_shortlist(torch.arange(config.shortlist_size))

    def add_modules(self, n_rows):
        """A seam: levers.py's models add their modules here, before the init draws the weights."""

    @torch.no_grad()
    def set_shortlist(self, token_ids):
        """The shortlisted token ids (distinct, in [0, vocab_size)), one per softmax row, in row order."""
        c = self.config
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if not c.shortlist_size:
            raise ValueError("this model has a full softmax (shortlist_size=0); build it with shortlist_size > 0")
        if ids.numel() != c.shortlist_size:
            raise ValueError(f"got {ids.numel()} token ids for a shortlist of {c.shortlist_size}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"shortlist token ids must lie in [0, {c.vocab_size})")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("shortlist token ids must be distinct")
        device = self.token_rows.device
        self.row_tokens.copy_(ids.to(device))
        self.token_rows.fill_(c.shortlist_size)
        self.token_rows[self.row_tokens] = torch.arange(c.shortlist_size, device=device)
        return self

    def set_integrator(self, solver=None, steps_per_layer=None, splitting=None):
        """Switch the integrator in place; the weights are unchanged. Validates like GPTConfig."""
        c = self.config
        chosen = {"solver": solver, "steps_per_layer": steps_per_layer, "splitting": splitting}
        new = type(c)(**{**c.__dict__, **{k: v for k, v in chosen.items() if v is not None}})
        self.config = new
        for block in self.transformer.h:
            block.config = new
        return self

    def nfe(self) -> dict:
        """Vector-field evaluations per forward pass, per sub-field, all layers."""
        c = self.config
        per_step = {"attn": 0, "mlp": 0}
        for field_name, _ in SPLITTING_SCHEMES[c.splitting]:
            for name in ("attn", "mlp") if field_name == "both" else (field_name,):
                per_step[name] += get_tableau(c.solver).stages
        return {k: v * c.steps_per_layer * c.n_layer for k, v in per_step.items()}

    def get_num_params(self, non_embedding=True):
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, idx):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}, block size is {self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t,)
        rows = self.token_rows[idx] if self.config.shortlist_size else idx  # (b, t)
        x = self.transformer.wte(rows) + self.transformer.wpe(pos)  # (b, t, n_embd)
        return self.transformer.drop(x) if self.config.dropout else x

    def integrate(self, x, stats=None, trajectory=None):
        """Flow the residual stream through depth, x: (B, T, C) -> (B, T, C); `trajectory` (a list) gets x at
        every layer boundary."""
        if trajectory is not None:
            trajectory.append(x)
        for block in self.transformer.h:
            x = block(x) if stats is None else block(x, stats)  # block(x): a nanoGPT-style Block.forward(self, x) too
            if trajectory is not None:
                trajectory.append(x)
        return x

    def regularization_stats(self, want_jacobian: bool, train: bool) -> dict:
        zero = torch.zeros(())
        return {"kinetic_energy": zero, "jacobian_frobenius": zero, "jacobian": want_jacobian, "train": train}

    def forward(self, idx, targets=None):
        c = self.config
        regularize = self.training and torch.is_grad_enabled() and (c.kinetic_energy > 0 or c.jacobian_frobenius > 0)
        stats = self.regularization_stats(c.jacobian_frobenius > 0, train=True) if regularize else None
        # the Jacobian term needs double backward, which the fused attention kernels lack
        kernel = sdpa_kernel(SDPBackend.MATH) if stats and stats["jacobian"] else nullcontext()
        with kernel:
            x = self.integrate(self.embed(idx), stats)
        logits, loss = self.head(x, targets)
        self.last_terms = {k: stats[k] for k in ("kinetic_energy", "jacobian_frobenius")} if stats else {}
        return logits, loss

    def head(self, x, targets=None):
        """Final states (b, t, C) -> nanoGPT's (logits, loss): with targets, (b, t, vocab) logits and the mean
        cross-entropy over targets != -1; without, the last position's (b, 1, vocab) and None."""
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.logits(x[:, [-1], :]), None
        if not self.config.shortlist_size:
            logits = self.raw_logits(x)  # (b, t, vocab)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        ls = F.log_softmax(
            self.raw_logits(x, self.config.shortlist_size), dim=-1
        )  # log P(token | shortlist), (b, t, k)
        return self.full_logits(ls), self.shortlist_loss(ls, targets)

    def logits(self, x):
        """x: (b, t, C) after ln_f -> (b, t, vocab); under a shortlist, log-probabilities up to one constant."""
        if not self.config.shortlist_size:
            return self.raw_logits(x)
        return self.full_logits(F.log_softmax(self.raw_logits(x, self.config.shortlist_size), dim=-1))

    def raw_logits(self, x, rows=None):
        """x: (b, t, C) after ln_f -> the tied output layer's first `rows` rows' logits (all if None)."""
        return F.linear(x, self.lm_head.weight[:rows])  # (b, t, rows)

    def unseen_log_prob(self) -> float:
        """log P(one given token outside the shortlist)."""
        c = self.config
        return math.log(c.unseen_mass / (c.vocab_size - c.shortlist_size))

    def full_logits(self, ls):
        """log P(token | shortlist) (b, t, k) as logits over the vocabulary (b, t, vocab): log-probabilities minus
        log P(shortlist), one constant, so no pass adds it to the (b, t, k) tensor."""
        shape = (*ls.shape[:-1], self.config.vocab_size)
        fill = self.unseen_log_prob() - math.log1p(-self.config.unseen_mass)
        full = self.vocab_memory.take(shape, fill, ls)  # the unseen columns filled
        full.index_copy_(-1, self.row_tokens, ls)
        self.vocab_memory.written(full)
        return full

    def shortlist_loss(self, ls, targets):
        """F.cross_entropy(full logits, targets, ignore_index=-1) read off the shortlist's k columns (a test checks)."""
        k = self.config.shortlist_size
        valid = targets >= 0
        rows = self.token_rows[torch.where(valid, targets, 0)]  # (b, t)
        picked = ls.gather(-1, rows.clamp(max=k - 1).unsqueeze(-1)).squeeze(-1)  # (b, t)
        nll = -(picked + math.log1p(-self.config.unseen_mass))
        nll = torch.where(rows == k, -self.unseen_log_prob(), nll)
        return (nll * valid).sum() / valid.sum()

    def regularization_loss(self):
        """lambda_K K + lambda_J J of the last training forward (0.0 when off); the training loop adds it."""
        if not self.last_terms:
            return 0.0
        c = self.config
        return (
            c.kinetic_energy * self.last_terms["kinetic_energy"]
            + c.jacobian_frobenius * self.last_terms["jacobian_frobenius"]
        )

    # -- nanoGPT API -----------------------------------------------------------------------------
    def crop_block_size(self, block_size):
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for p in param_dict.values() if p.dim() >= 2]
        nodecay_params = [p for p in param_dict.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra_args = dict(fused=True) if fused_available and device_type == "cuda" else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        """nanoGPT's MFU (A100 bf16 peak 312 TFLOPS), each layer's parameters counted once per field evaluation."""
        c = self.config
        nfe = self.nfe()
        attn_evals, mlp_evals = nfe["attn"] / c.n_layer, nfe["mlp"] / c.n_layer  # per layer and forward
        n_attn = sum(p.numel() for b in self.transformer.h for p in (*b.ln_1.parameters(), *b.attn.parameters()))
        n_mlp = sum(p.numel() for b in self.transformer.h for p in (*b.ln_2.parameters(), *b.mlp.parameters()))
        n_params = self.get_num_params() + (attn_evals - 1) * n_attn + (mlp_evals - 1) * n_mlp
        L, H, Q, T = c.n_layer, c.n_head, c.n_embd // c.n_head, c.block_size
        flops_per_token = 6 * n_params + 12 * L * H * Q * T * attn_evals
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / 312e12

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens tokens after idx (LongTensor (b, t)). Call model.eval() first."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
