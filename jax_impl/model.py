"""
The odegpt model in JAX: Flax linen sub-fields, integrated through depth by diffrax.

Style: the parameters are one nested dict (a plain pytree) and the model is pure functions of it.
Flax linen supplies the leaf layers (Dense, LayerNorm) of the two sub-fields with every default
that differs from torch pinned (PARITY.md): LayerNorm epsilon 1e-5 with the plain two-pass
variance, exact erf GELU, the causal mask written out. Linen rather than NNX because a linen
module is stateless: `Block(config).apply({"params": p}, x)` is a pure function of the layer's
parameter dict, which is exactly what a diffrax vector field needs (the parameters travel in
`args`, so BacksolveAdjoint can differentiate with respect to them) and what `lax.scan` over
stacked layers needs (one trace of the solve for all layers).

    params = {
        "wte": (vocab, C), "wpe": (block, C),     # lm_head is wte (tied, as torch); wte is (k + 1, C)
                                                  # under a shortlist of k tokens (see _shortlist_head)
        "h": {"ln_1": {"scale", "bias"}, "attn": {"c_attn": {"kernel", "bias"}, "c_proj": ...},
              "ln_2": ..., "mlp": {"c_fc": ..., "c_proj": ...}},   # every leaf stacked: (n_layer, ...)
        "ln_f": {"scale", "bias"},
        "head_up": {"kernel": (C, w)}, "head_wide": {"kernel": (w, rows of wte)},   # head_width = w > 0 only
    }

Issue #35's capacity levers (levers.py's WideMLP, WideAttention, RMSNorm) change widths, not names:
c_attn (C, 3 nh hs), c_proj (nh hs, C) under head_dim; c_fc (C, H or 2H), c_proj (H, C) under mlp_width and
glu; under norm="rms" the norms keep "scale" and lose "bias"; qk_norm adds attn's "q_norm" and "k_norm" {"scale"}.
Issue #16's head_width (levers.LeverGPT.raw_logits) adds the output features U gelu(A h) to the tied logits E h:
"head_up" is A, "head_wide" is U, zero at init as torch's. mos (a mixture of K softmaxes) adds "head_prior" (C, K)
and "head_mix" (C, K C), the K projections side by side.

Kernels are (in, out); torch's Linear weights are (out, in): `params_from_torch` and
`params_to_torch` convert through one name map and transpose the names in `LINEAR_WEIGHTS` and the output
levers' (`_head_map`) only.
A shortlist's token ids are not parameters: they live in the (static) config, and the converters
check / write torch's two buffers from them (`token_rows`, `row_tokens`).

Depth time: layer l integrates its field over [l, l+1] with one `diffrax.diffeqsolve`
(`ConstantStepSize`, dt0 = 1/steps_per_layer; adaptive methods under a `PIDController`). See
solvers.py for the splittings and the regularizers' quadrature.
"""

import math
from dataclasses import asdict, dataclass
from functools import partial

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .solvers import SPLITTING_SCHEMES, SPLITTINGS, SplitRK, evals_per_step, get_method

ADJOINTS = ("recursive", "backsolve")
# levers.GATES: the gated MLP's activation on its first half (exact erf GELU, as torch's F.gelu; SiLU); "" = ungated
GATES = {"": None, "geglu": partial(jax.nn.gelu, approximate=False), "swiglu": jax.nn.silu}
NORMS = ("layer", "rms")

# ---------------------------------------------------------------------------------------------
# Config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # model.py's rule: 2.0 and True are no counts


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class GPTConfig:
    """model.GPTConfig's fields and defaults, frozen (hashable: a static argument of jax.jit), then
    the JAX-only integrator options. Validated as torch validates, plus the JAX-only rules."""

    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # forward is deterministic here: only 0 is supported
    bias: bool = False  # bias in Linears and LayerNorms (GPT-2's True)
    # continuous depth
    solver: str = "heun"  # a name in solvers.METHODS (torch's eight, plus tsit5 and dopri5)
    steps_per_layer: int = 1  # h = 1 / steps_per_layer (adaptive methods: the first step's size)
    splitting: str = "parallel"  # lie, strang, parallel
    # differential regularization weights (Finlay et al. 2020); 0 = off, at no cost
    kinetic_energy: float = 0.0
    jacobian_frobenius: float = 0.0
    # initialization
    zero_init_proj: bool = False
    # output vocabulary (model.GPTConfig's shortlist_size and unseen_mass): () = a softmax over all
    # vocab_size tokens; else the shortlisted token ids in row order (a torch model's row_tokens buffer,
    # see config_from_torch): their softmax carries 1 - unseen_mass, each other token unseen_mass /
    # (vocab_size - k). The ids sit here, not in params: they are not trained, and a static config
    # makes them compile-time constants. Any integer sequence is accepted and stored as a tuple of ints.
    shortlist: tuple[int, ...] = ()
    unseen_mass: float = 0.0
    # issue #16's levers (levers.LeverConfig): ngram_buckets and token_noise are torch only so far (the forward refuses
    # any but their "off" value, 0); head_width is mirrored (raw_logits)
    ngram_buckets: int = 0
    token_noise: float = 0.0
    head_width: int = 0
    # issue #35's capacity levers (levers.LeverConfig; 0, "" and "layer" are nanoGPT's): the MLP's hidden width
    # (0 = 4 n_embd), a gated MLP (glu: "geglu" | "swiglu"), the query/key/value width per head (0 = n_embd / n_head),
    # RMSNorm for every LayerNorm (norm="rms"), RMSNorm with gains on each head's queries and keys (qk_norm)
    mlp_width: int = 0
    glu: str = ""
    head_dim: int = 0
    norm: str = "layer"
    qk_norm: bool = False
    mos: int = 0  # a mixture of mos softmaxes as the output layer (levers.LeverConfig.mos; 0 = one softmax)
    # --- JAX only (not in model.GPTConfig; dropped when a checkpoint is written) ---
    rtol: float = 1e-3  # adaptive methods: PIDController tolerances
    atol: float = 1e-6
    max_steps_per_layer: int = 256  # adaptive methods: the solve fails beyond this many steps
    adjoint: str = "recursive"  # recursive: discretise-then-optimise (exact backprop); backsolve

    def __post_init__(self):
        # model.GPTConfig's rules and messages, in its order (parity_tests compare the messages)
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "steps_per_layer"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        method = get_method(self.solver)
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
        if not _is_real(self.unseen_mass):
            raise ValueError(f"unseen_mass must be a finite number, got {self.unseen_mass!r}")
        self._validate_shortlist()
        for name in ("mlp_width", "head_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0 or (name == "mlp_width" and value % self.n_head):
                raise ValueError(
                    f"{name} must be an integer >= 0 (0 = nanoGPT's), a multiple of n_head for mlp_width, got {value!r}"
                )
        if self.glu not in GATES:
            raise ValueError(f"glu must be one of {sorted(GATES)} ('' = nanoGPT's ungated MLP), got {self.glu!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"qk_norm must be True or False, got {self.qk_norm!r}")
        if not _is_int(self.ngram_buckets) or self.ngram_buckets < 0:
            raise ValueError(f"ngram_buckets must be an integer >= 0 (0 = off), got {self.ngram_buckets!r}")
        if not _is_real(self.token_noise) or not 0 <= self.token_noise < 1:
            raise ValueError(f"token_noise must be a number in [0, 1) (0 = off), got {self.token_noise!r}")
        if not _is_int(self.head_width) or self.head_width < 0:
            raise ValueError(f"head_width must be an integer >= 0 (0 = the tied output layer), got {self.head_width!r}")
        if not _is_int(self.mos) or self.mos < 0 or self.mos == 1:
            raise ValueError(f"mos must be an integer >= 2 (mixture components) or 0 (one softmax), got {self.mos!r}")
        # JAX-only rules
        if self.rtol <= 0 or self.atol < 0 or self.max_steps_per_layer < 1:
            raise ValueError("rtol must be > 0, atol >= 0, max_steps_per_layer >= 1")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"unknown adjoint {self.adjoint!r}; valid adjoints: {', '.join(ADJOINTS)}")
        regularized = self.kinetic_energy > 0 or self.jacobian_frobenius > 0
        if method.adaptive and (self.splitting != "parallel" or regularized):
            # a split step's error is not the inner pair's estimate, and the regularizers' per-stage
            # quadrature needs the stage-exposed fixed-step stepper
            raise ValueError(f"adaptive solver {self.solver!r} needs splitting='parallel' and no regularizers")
        if self.adjoint == "backsolve" and (self.splitting != "parallel" or regularized):
            raise ValueError("adjoint='backsolve' needs splitting='parallel' and no regularizers")

    def _validate_shortlist(self):
        ids = np.asarray(self.shortlist)
        if ids.size and (ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"shortlist must be a sequence of integer token ids, got {self.shortlist!r:.80}")
        object.__setattr__(self, "shortlist", tuple(int(i) for i in ids.tolist()))  # hashable, plain ints
        k = len(self.shortlist)
        if k:
            if k >= self.vocab_size:
                raise ValueError(
                    f"a shortlist must leave out at least one token: got {k} ids with vocab_size {self.vocab_size}; "
                    f"for a softmax over every token use shortlist=()"
                )
            if min(self.shortlist) < 0 or max(self.shortlist) >= self.vocab_size:
                raise ValueError(f"shortlist token ids must lie in [0, {self.vocab_size})")
            if len(set(self.shortlist)) != k:
                raise ValueError("shortlist token ids must be distinct")
            if not 0.0 < self.unseen_mass < 1.0:
                raise ValueError(
                    f"a shortlist needs 0 < unseen_mass < 1 (the probability of the tokens outside it), "
                    f"got {self.unseen_mass!r}"
                )
        elif self.unseen_mass != 0.0:
            raise ValueError("unseen_mass is the shortlist's tail probability: set shortlist (token ids) or leave it 0")

    @property
    def regularized(self) -> bool:
        return self.kinetic_energy > 0 or self.jacobian_frobenius > 0

    @property
    def shortlist_size(self) -> int:
        """model.GPTConfig.shortlist_size: 0 (full softmax) or the number of shortlisted tokens, k."""
        return len(self.shortlist)

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width H: mlp_width, or nanoGPT's 4 n_embd (c_fc writes 2H under glu: act(a) * g)."""
        return self.mlp_width or 4 * self.n_embd

    @property
    def fc_width(self) -> int:
        """c_fc's output width: H, or 2H under glu (the activation's input a and the gate g, in that order)."""
        return 2 * self.mlp_hidden if self.glu else self.mlp_hidden

    @property
    def head_size(self) -> int:
        """Query/key/value width per head: head_dim, or nanoGPT's n_embd / n_head."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def attn_width(self) -> int:
        """D = n_head * head_size: the width of q, k and v each, and c_proj's input (n_embd by default)."""
        return self.n_head * self.head_size

    @property
    def norm_bias(self) -> bool:
        """Whether the stream's norms (ln_1, ln_2, ln_f) have a bias: LayerNorm under bias; RMSNorm never."""
        return self.bias and self.norm == "layer"

    @property
    def embedding_rows(self) -> int:
        """Rows of wte: one per token, or one per shortlisted token + one shared by all the others."""
        return self.shortlist_size + 1 if self.shortlist else self.vocab_size


TORCH_CONFIG_FIELDS = (
    "block_size",
    "vocab_size",
    "n_layer",
    "n_head",
    "n_embd",
    "dropout",
    "bias",
    "solver",
    "steps_per_layer",
    "splitting",
    "kinetic_energy",
    "jacobian_frobenius",
    "zero_init_proj",
    "shortlist_size",  # the JAX config holds the ids (`shortlist`); shortlist_size is its length
    "unseen_mass",
    "ngram_buckets",
    "token_noise",
    "head_width",
    "mlp_width",
    "glu",
    "head_dim",
    "norm",
    "qk_norm",
    "mos",
)


def torch_config_kwargs(config: GPTConfig) -> dict:
    """The model.GPTConfig keyword arguments of this config (the JAX-only options dropped). The
    shortlist's ids go to torch through its buffers instead (params_to_torch, GPT.set_shortlist)."""
    return {k: getattr(config, k) for k in TORCH_CONFIG_FIELDS}


def config_from_torch(model_args, state_dict=None, **overrides) -> GPTConfig:
    """The JAX config of a torch model, the inverse of torch_config_kwargs.

    model_args: model.GPTConfig's fields (a model.GPTConfig, or a dict such as a checkpoint's
    "model_args"); state_dict: the model's, read for a shortlist's token ids (its row_tokens buffer),
    so required when shortlist_size > 0; overrides: other fields, e.g. a JAX solver, rtol, adjoint.

        config = config_from_torch(model.config, model.state_dict(), solver="tsit5", splitting="parallel")
    """
    args = asdict(model_args) if not isinstance(model_args, dict) else dict(model_args)
    k = args.pop("shortlist_size", 0)
    shortlist = ()
    if k:
        if state_dict is None or "row_tokens" not in state_dict:
            raise ValueError(
                f"shortlist_size {k}: the token ids are the model's row_tokens buffer; pass its state_dict"
            )
        shortlist = _to_numpy(state_dict["row_tokens"]).tolist()
        if len(shortlist) != k:
            raise ValueError(f"row_tokens holds {len(shortlist)} ids, model_args say shortlist_size {k}")
    return GPTConfig(**{**args, "shortlist": shortlist, **overrides})


def nfe(config: GPTConfig) -> dict:
    """Vector-field evaluations per forward pass of a fixed-step method, per sub-field, all layers.

    Adaptive methods: see `forward_with_stats`, which counts from the solver's own statistics."""
    per_step = evals_per_step(get_method(config.solver), config.splitting, config.regularized)
    extra = 1 if (_direct(config) and get_method(config.solver).fsal) else 0  # FSAL: one more f per solve
    return {k: (v * config.steps_per_layer + extra) * config.n_layer for k, v in per_step.items()}


# ---------------------------------------------------------------------------------------------
# Sub-fields (Flax linen; every default that differs from torch pinned)


def _dense(features, config, name, std):
    init = nn.initializers.zeros if std == 0 else nn.initializers.normal(std)
    return nn.Dense(features, use_bias=config.bias, kernel_init=init, bias_init=nn.initializers.zeros, name=name)


def _layer_norm(config, name=None):
    # torch: eps 1e-5 and the two-pass variance (flax defaults: 1e-6 and E[x^2] - E[x]^2)
    return nn.LayerNorm(epsilon=1e-5, use_bias=config.bias, use_fast_variance=False, name=name)


def _rms_norm(name=None):
    # levers.RMSNorm: x * rsqrt(mean(x^2) + 1e-5) * weight, no bias (flax's default epsilon is 1e-6)
    return nn.RMSNorm(epsilon=1e-5, name=name)


def _norm(config, name=None):
    """The residual stream's norm (ln_1, ln_2, ln_f): LayerNorm, or RMSNorm under norm="rms"."""
    return _rms_norm(name) if config.norm == "rms" else _layer_norm(config, name)


def _proj_std(config) -> float:
    return 0.0 if config.zero_init_proj else 0.02 / math.sqrt(2 * config.n_layer)


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        B, T, C = x.shape
        hs = c.head_size  # C / nh, or head_dim
        q, k, v = jnp.split(_dense(3 * c.attn_width, c, "c_attn", 0.02)(x), 3, axis=-1)  # (B, T, nh hs) each
        q = q.reshape(B, T, c.n_head, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        k = k.reshape(B, T, c.n_head, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        v = v.reshape(B, T, c.n_head, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        if c.qk_norm:  # per head, over hs, gains (hs,) shared by the heads (levers.WideAttention)
            q, k = _rms_norm("q_norm")(q), _rms_norm("k_norm")(k)
        att = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        causal = jnp.tril(jnp.ones((T, T), dtype=bool))  # the diagonal is kept: no fully masked row
        att = jax.nn.softmax(jnp.where(causal, att, -jnp.inf), axis=-1)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, c.attn_width)  # (B, T, nh hs)
        return _dense(C, c, "c_proj", _proj_std(c))(y)  # (B, T, C)


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = GATES[c.glu]
        u = _dense(c.fc_width, c, "c_fc", 0.02)(x)  # (B, T, H), or (B, T, 2H) gated
        if gate is None:
            h = jax.nn.gelu(u, approximate=False)  # exact (erf) GELU
        else:
            a, g = jnp.split(u, 2, axis=-1)  # (B, T, H) each: torch's chunk(2)
            h = gate(a) * g
        return _dense(c.n_embd, c, "c_proj", _proj_std(c))(h)  # (B, T, C)


class Block(nn.Module):
    """One layer's two sub-fields on its unit depth interval."""

    config: GPTConfig

    def setup(self):
        self.ln_1 = _norm(self.config, "ln_1")
        self.attn = CausalSelfAttention(self.config)
        self.ln_2 = _norm(self.config, "ln_2")
        self.mlp = MLP(self.config)

    def attn_field(self, x):
        return self.attn(self.ln_1(x))  # A(x), (B, T, C)

    def mlp_field(self, x):
        return self.mlp(self.ln_2(x))  # M(x), (B, T, C)

    def __call__(self, x):
        return self.attn_field(x) + self.mlp_field(x)  # F = A + M, (B, T, C)


# ---------------------------------------------------------------------------------------------
# Parameters: init, and the torch name map


def init_params(key, config: GPTConfig, dtype=jnp.float32) -> dict:
    """nanoGPT's initialization (N(0, 0.02); residual projections N(0, 0.02/sqrt(2 n_layer)) or
    zero) from a JAX key. To start from the very weights torch draws, use params_from_torch."""
    k_wte, k_wpe, k_h, k_head = jax.random.split(key, 4)
    x = jnp.zeros((1, 1, config.n_embd), dtype)
    h = jax.vmap(lambda k: Block(config).init(k, x)["params"])(jax.random.split(k_h, config.n_layer))
    ln_f = _norm(config).init(k_h, x)["params"]
    params = {
        "wte": 0.02 * jax.random.normal(k_wte, (config.embedding_rows, config.n_embd)),
        "wpe": 0.02 * jax.random.normal(k_wpe, (config.block_size, config.n_embd)),
        "h": h,
        "ln_f": ln_f,
    }
    k_up, k_prior, k_mix = jax.random.split(k_head, 3)  # one key per drawn output-lever matrix
    if config.head_width:  # levers.LeverGPT: head_up as every Linear, head_wide zero (the tied logits at init)
        params["head_up"] = {"kernel": 0.02 * jax.random.normal(k_up, (config.n_embd, config.head_width))}
        params["head_wide"] = {"kernel": jnp.zeros((config.head_width, config.embedding_rows))}
    if config.mos:  # levers.LeverGPT: W as every Linear, each P_k the identity plus N(0, 0.02)
        C, K = config.n_embd, config.mos
        params["head_prior"] = {"kernel": 0.02 * jax.random.normal(k_prior, (C, K))}
        params["head_mix"] = {"kernel": jnp.tile(jnp.eye(C), (1, K)) + 0.02 * jax.random.normal(k_mix, (C, K * C))}
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)


# Linear weights: torch (out, in) <-> Flax kernel (in, out). The only transposed names: these in a block, and the
# output levers' (_head_map's, all Linear weights)
LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _block_map(config: GPTConfig):
    """(torch name within a block, JAX path within params["h"], torch shape) for one layer, in torch's order.

    Widths: D = attn_width (q, k, v each), H = mlp_hidden, c_fc's H_in = fc_width (2H under glu); RMSNorm (ln_1,
    ln_2 under norm="rms"; q_norm, k_norm under qk_norm) has a gain and no bias."""
    C, D, hs = config.n_embd, config.attn_width, config.head_size
    H, H_in = config.mlp_hidden, config.fc_width
    rows = [
        ("ln_1.weight", ("ln_1", "scale"), (C,)),
        ("ln_1.bias", ("ln_1", "bias"), (C,)),
        ("attn.c_attn.weight", ("attn", "c_attn", "kernel"), (3 * D, C)),
        ("attn.c_attn.bias", ("attn", "c_attn", "bias"), (3 * D,)),
        ("attn.c_proj.weight", ("attn", "c_proj", "kernel"), (C, D)),
        ("attn.c_proj.bias", ("attn", "c_proj", "bias"), (C,)),
        ("attn.q_norm.weight", ("attn", "q_norm", "scale"), (hs,)),
        ("attn.k_norm.weight", ("attn", "k_norm", "scale"), (hs,)),
        ("ln_2.weight", ("ln_2", "scale"), (C,)),
        ("ln_2.bias", ("ln_2", "bias"), (C,)),
        ("mlp.c_fc.weight", ("mlp", "c_fc", "kernel"), (H_in, C)),
        ("mlp.c_fc.bias", ("mlp", "c_fc", "bias"), (H_in,)),
        ("mlp.c_proj.weight", ("mlp", "c_proj", "kernel"), (C, H)),
        ("mlp.c_proj.bias", ("mlp", "c_proj", "bias"), (C,)),
    ]
    return [r for r in rows if _mapped(r[0], config)]


def _mapped(name: str, config: GPTConfig) -> bool:
    """Whether torch has this parameter under config: biases under bias (the norms' only under LayerNorm),
    q_norm / k_norm under qk_norm."""
    if name.endswith(".bias"):
        return config.norm_bias if name.split(".")[-2].startswith("ln_") else config.bias
    return config.qk_norm or not name.startswith(("attn.q_norm", "attn.k_norm"))


def _top_map(config: GPTConfig):
    C = config.n_embd
    rows = [
        ("transformer.wte.weight", ("wte",), (config.embedding_rows, C)),
        ("transformer.wpe.weight", ("wpe",), (config.block_size, C)),
        ("transformer.ln_f.weight", ("ln_f", "scale"), (C,)),
        ("transformer.ln_f.bias", ("ln_f", "bias"), (C,)),
    ]
    return [r for r in rows if _mapped(r[0], config)]


def _head_map(config: GPTConfig):
    """The output levers' Linear weights (torch name, JAX path, torch shape), in torch's order after lm_head:
    head_width's A and U, mos's W and the stacked P_k."""
    C, w, K = config.n_embd, config.head_width, config.mos
    rows = []
    if w:
        rows += [
            ("head_up.weight", ("head_up", "kernel"), (w, C)),
            ("head_wide.weight", ("head_wide", "kernel"), (config.embedding_rows, w)),
        ]
    if K:
        rows += [
            ("head_prior.weight", ("head_prior", "kernel"), (K, C)),
            ("head_mix.weight", ("head_mix", "kernel"), (K * C, C)),
        ]
    return rows


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def shortlist_buffers(config: GPTConfig) -> dict:
    """torch's shortlist buffers (GPT.set_shortlist), as int64 numpy arrays in torch's state_dict order:
    token_rows (vocab,): token id -> wte row, k for every token outside the shortlist;
    row_tokens (k,): wte row -> token id. Empty dict under a full softmax."""
    if not config.shortlist:
        return {}
    row_tokens = np.asarray(config.shortlist, dtype=np.int64)
    token_rows = np.full(config.vocab_size, len(row_tokens), dtype=np.int64)
    token_rows[row_tokens] = np.arange(len(row_tokens))
    return {"token_rows": token_rows, "row_tokens": row_tokens}


def params_from_torch(state_dict, config: GPTConfig) -> dict:
    """A torch GPT state_dict -> the params pytree (dtype kept). Every shape is asserted; the
    tied lm_head.weight must equal transformer.wte.weight; a shortlist's buffers must equal the ones
    config.shortlist defines (row_tokens the ids, token_rows their inverse); no key may be left over."""
    sd = {k: _to_numpy(v) for k, v in state_dict.items()}
    used = set()
    for name, expected in shortlist_buffers(config).items():
        assert name in sd, f"{name} missing: a shortlist model's state_dict holds its buffers"
        assert np.array_equal(sd[name], expected), f"{name} differs from the one config.shortlist defines"
        used.add(name)
    params = {}
    for name, path, shape in _top_map(config):
        assert name in sd, f"{name} missing: the state_dict is another config's model"
        assert sd[name].shape == shape, f"{name}: {sd[name].shape} != {shape}"
        _set(params, path, jnp.asarray(sd[name]))
        used.add(name)
    assert np.array_equal(sd["lm_head.weight"], sd["transformer.wte.weight"]), "lm_head must be tied to wte"
    used.add("lm_head.weight")
    for name, path, shape in _head_map(config):
        assert name in sd, (
            f"{name} missing: the state_dict is another config's model (head_width {config.head_width}, mos {config.mos})"
        )
        assert sd[name].shape == shape, f"{name}: {sd[name].shape} != {shape}"
        _set(params, path, jnp.asarray(sd[name].T))
        used.add(name)
    for name, path, shape in _block_map(config):
        layers = []
        for layer in range(config.n_layer):
            full = f"transformer.h.{layer}.{name}"
            assert full in sd, f"{full} missing: the state_dict is another config's model"
            w = sd[full]
            assert w.shape == shape, f"{full}: {w.shape} != {shape}"
            layers.append(w.T if name in LINEAR_WEIGHTS else w)
            used.add(full)
        _set(params, ("h",) + path, jnp.asarray(np.stack(layers)))
    leftover = set(sd) - used
    assert not leftover, (
        f"unmapped torch keys: {sorted(leftover)}: the JAX mirror has no place for them (a lever it does not mirror, "
        "such as ngram_buckets, or another config's model)"
    )
    return params


def params_to_torch(params, config: GPTConfig) -> dict:
    """The params pytree -> a state_dict that model.GPT(config).load_state_dict accepts (strict),
    in torch's key order, lm_head.weight the same tensor as transformer.wte.weight."""
    import torch

    def tensor(a):
        return torch.from_numpy(np.array(a))  # a copy: writable, owns its memory

    sd = {name: torch.from_numpy(buf) for name, buf in shortlist_buffers(config).items()}  # torch: buffers first
    top = {name: (path, shape) for name, path, shape in _top_map(config)}
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        path, shape = top[name]
        sd[name] = tensor(_get(params, path))
        assert tuple(sd[name].shape) == shape, f"{name}: {tuple(sd[name].shape)} != {shape}"
    for layer in range(config.n_layer):
        for name, path, shape in _block_map(config):
            w = np.asarray(_get(params["h"], path)[layer])
            w = w.T if name in LINEAR_WEIGHTS else w
            assert w.shape == shape, f"transformer.h.{layer}.{name}: {w.shape} != {shape}"
            sd[f"transformer.h.{layer}.{name}"] = tensor(w)
    for name in ("transformer.ln_f.weight", "transformer.ln_f.bias"):
        if name in top:
            path, shape = top[name]
            sd[name] = tensor(_get(params, path))
            assert tuple(sd[name].shape) == shape
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied
    for name, path, shape in _head_map(config):
        sd[name] = tensor(np.asarray(_get(params, path)).T)
        assert tuple(sd[name].shape) == shape, f"{name}: {tuple(sd[name].shape)} != {shape}"
    return sd


# ---------------------------------------------------------------------------------------------
# Integration through depth


def _direct(config: GPTConfig) -> bool:
    """Parallel splitting without regularizers: the diffrax solver integrates F = A + M itself."""
    return config.splitting == "parallel" and not config.regularized


def probe_shape(config: GPTConfig, x_shape) -> tuple:
    """Shape of the Hutchinson probes of one forward: (n_layer, steps, sub-steps, stages, B, T, C)."""
    n_sub = len(SPLITTING_SCHEMES[config.splitting])
    return (config.n_layer, config.steps_per_layer, n_sub, get_method(config.solver).stages, *x_shape)


def draw_probes(key, config: GPTConfig, x_shape, dtype=jnp.float32):
    """Fresh Rademacher probes, one per (layer, step, sub-step, stage), as torch draws one per stage."""
    return jax.random.rademacher(key, probe_shape(config, x_shape), dtype=dtype)


def probe_sequence(probes, config: GPTConfig):
    """The probes in the order torch's rk_step draws them (layer, step, sub-step, stage with b != 0)."""
    _, b, _ = get_method(config.solver).coefficients
    layers, steps, subs, stages = probes.shape[:4]
    return [
        probes[layer, n, j, i]
        for layer in range(layers)
        for n in range(steps)
        for j in range(subs)
        for i in range(stages)
        if b[i] != 0
    ]


def integrate(h_params, config: GPTConfig, x, probes=None, regularize: bool = False):
    """Flow the residual stream through all layers. x: (B, T, C).

    Returns (x(L), terms, num_steps): terms = {"kinetic_energy", "jacobian_frobenius"} summed over
    layers (zeros unless `regularize`), num_steps the diffrax steps taken, summed over layers."""
    method = get_method(config.solver)
    block = Block(config)
    dt = 1.0 / config.steps_per_layer
    jacobian = regularize and config.jacobian_frobenius > 0
    if jacobian and probes is None:
        raise ValueError("jacobian_frobenius > 0 needs Hutchinson probes (see draw_probes)")
    if regularize and method.adaptive:
        raise ValueError(f"the regularizers' quadrature needs a fixed-step solver, not {config.solver!r}")

    def attn(t, y, args):
        return block.apply({"params": args["params"]}, y, method="attn_field")

    def mlp(t, y, args):
        return block.apply({"params": args["params"]}, y, method="mlp_field")

    if regularize or not _direct(config):
        terms = diffrax.MultiTerm(diffrax.ODETerm(attn), diffrax.ODETerm(mlp))
        solver = SplitRK(method, config.splitting, dt, regularize=regularize, jacobian=jacobian)
    else:
        terms = diffrax.ODETerm(lambda t, y, args: attn(t, y, args) + mlp(t, y, args))  # F = A + M
        solver = method.solver()
    if method.adaptive:
        controller = diffrax.PIDController(rtol=config.rtol, atol=config.atol)
        max_steps = config.max_steps_per_layer
    else:
        controller = diffrax.ConstantStepSize()
        max_steps = config.steps_per_layer
    adjoint = diffrax.BacksolveAdjoint() if config.adjoint == "backsolve" else diffrax.RecursiveCheckpointAdjoint()

    def layer(carry, inputs):
        x, kinetic, jac = carry
        p, index, layer_probes = inputs
        t0 = index.astype(x.dtype)
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            t0=t0,
            t1=t0 + 1,
            dt0=jnp.asarray(dt, x.dtype),
            y0=x,
            args={"params": p, "probes": layer_probes},
            saveat=diffrax.SaveAt(t1=True, solver_state=regularize),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=max_steps,
            throw=method.adaptive,  # a fixed-step solve cannot fail; skipping the check compiles faster
        )
        if regularize:
            _, dk, dj = sol.solver_state
            kinetic, jac = kinetic + dk, jac + dj
        return (sol.ys[-1], kinetic, jac), sol.stats["num_steps"]

    zero = jnp.zeros((), x.dtype)
    layer_probes = probes if jacobian else jnp.zeros((config.n_layer,), x.dtype)
    xs = (h_params, jnp.arange(config.n_layer), layer_probes)
    (x, kinetic, jac), num_steps = jax.lax.scan(layer, (x, zero, zero), xs)
    return x, {"kinetic_energy": kinetic, "jacobian_frobenius": jac}, jnp.sum(num_steps)


# ---------------------------------------------------------------------------------------------
# Forward


def embed(params, config: GPTConfig, idx):
    b, t = idx.shape
    if t > config.block_size:
        raise ValueError(f"cannot forward a sequence of length {t}, block size is {config.block_size}")
    rows = _token_rows(config)[idx] if config.shortlist else idx  # (b, t)
    return params["wte"][rows] + params["wpe"][:t][None]  # (b, t, n_embd)


def _token_rows(config: GPTConfig):
    """token id -> wte row (k outside the shortlist), a compile-time constant (vocab,)."""
    return jnp.asarray(shortlist_buffers(config)["token_rows"], jnp.int32)


def shortlist_log_probs(config: GPTConfig) -> tuple:
    """(log P(the shortlist), log P(one given token outside it)) = (log1p(-eps), log(eps / (V - k)))."""
    eps = config.unseen_mass
    return math.log1p(-eps), math.log(eps / (config.vocab_size - config.shortlist_size))


def cross_entropy(logits, targets, reduction: str = "mean"):
    """Cross-entropy over targets != -1, as F.cross_entropy(..., ignore_index=-1, reduction=...).

    logsumexp(logits) - logits[target]: never materializes the (b, t, vocab) log-probabilities,
    which log_softmax + gather does (measured on the canonical config, 2-core CPU: the head's
    value-and-grad 317 -> 171 ms)."""
    valid = targets != -1
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    total = jnp.sum(jnp.where(valid, nll, 0))
    return total if reduction == "sum" else total / jnp.sum(valid)


def _head(params, config, x, targets):
    """Final states x (b, t, C) -> (logits, loss) as model.GPT.head: targets None -> the last
    position's logits (b, 1, vocab) and None; else the logits (b, t, vocab) and the mean
    cross-entropy over targets != -1. Under a shortlist see _shortlist_head."""
    x = _norm(config).apply({"params": params["ln_f"]}, x)
    if targets is None:
        x = x[:, -1:, :]  # inference needs the last position only
    if config.shortlist:
        return _shortlist_head(params, config, x, targets)
    logits = raw_logits(params, config, x)  # (b, t, vocab)
    return logits, None if targets is None else cross_entropy(logits, targets)


def raw_logits(params, config: GPTConfig, x, rows=None):
    """x: (b, t, C) after ln_f -> the output layer's logits of wte's first `rows` rows (all if None), (b, t, rows):
    the tied E h, plus U gelu(A h) under head_width (levers.LeverGPT.raw_logits; exact erf GELU as torch's F.gelu).
    Under mos, the mixture's log-probabilities over those rows: logsumexp_k(log pi_k + log_softmax(E tanh(P_k h)))."""
    h = x  # (b, t, C)
    if config.mos:  # P_k h side by side (b, t, K C), as torch's stacked rows -> (b, t, K, C)
        h = jnp.tanh(x @ params["head_mix"]["kernel"]).reshape(*x.shape[:-1], config.mos, config.n_embd)
    logits = h @ params["wte"][:rows].T  # (b, t, [K,] rows)
    if config.head_width:
        z = jax.nn.gelu(x @ params["head_up"]["kernel"], approximate=False)  # (b, t, w)
        z = z @ params["head_wide"]["kernel"][:, :rows]  # (b, t, rows)
        logits = logits + (z[..., None, :] if config.mos else z)
    if not config.mos:
        return logits
    log_prior = jax.nn.log_softmax(x @ params["head_prior"]["kernel"], axis=-1)[..., None]  # (b, t, K, 1)
    return jax.nn.logsumexp(log_prior + jax.nn.log_softmax(logits, axis=-1), axis=-2)  # (b, t, rows)


def _shortlist_head(params, config, x, targets):
    """model.GPT.head under a shortlist. x: (b, t, C) after ln_f -> (logits over all vocab_size tokens
    (b, t, vocab): log-probabilities minus log P(the shortlist), as model.GPT.full_logits; None if targets
    is None else the mean NLL over targets >= 0).

    The softmax covers wte's first k rows (row k is an input embedding only) and carries
    1 - unseen_mass; a token outside the shortlist has log-probability log(unseen_mass / (V - k))
    whatever x is. As cross_entropy, the NLL is logsumexp - picked logit: no (b, t, k) log-softmax.
    Under jit the (b, t, vocab) tensor costs nothing when the caller drops it (XLA removes it)."""
    k = config.shortlist_size
    log_in, log_out = shortlist_log_probs(config)
    logits = raw_logits(params, config, x, k)  # (b, t, k)
    logp = jax.nn.log_softmax(logits, axis=-1)  # log P(token | shortlist), (b, t, k)
    full = jnp.full((*logp.shape[:-1], config.vocab_size), log_out - log_in, logp.dtype)  # (b, t, vocab)
    full = full.at[..., jnp.asarray(config.shortlist, jnp.int32)].set(logp)
    if targets is None:
        return full, None
    valid = targets >= 0  # torch's shortlist_loss: ignore_index=-1 as F.cross_entropy
    rows = _token_rows(config)[jnp.where(valid, targets, 0)]  # (b, t), k outside the shortlist
    inside = valid & (rows < k)
    picked = jnp.take_along_axis(logits, jnp.where(inside, rows, 0)[..., None], axis=-1)[..., 0]  # (b, t)
    nll_in = jnp.where(inside, jax.nn.logsumexp(logits, axis=-1) - picked - log_in, 0)  # (b, t)
    # each outside target costs the same -log_out: count x constant, one rounding. Summed as a run of
    # equal float32 addends (XLA's CPU reduction) their rounding errors add up instead
    # (measured, float32, 512 targets 94% outside: |loss - float64 loss| 9.2e-6 summed, 3.0e-7 counted;
    # torch's pairwise sum 1.3e-6)
    n_out = jnp.sum(valid & ~inside).astype(nll_in.dtype)
    return full, (jnp.sum(nll_in) + n_out * -log_out) / jnp.sum(valid)


def _forward(params, config, idx, targets, probes, regularize):
    if config.dropout != 0:
        raise NotImplementedError("the JAX mirror is deterministic: dropout must be 0")
    if config.ngram_buckets or config.token_noise:
        raise NotImplementedError(
            "ngram_buckets and token_noise (issue #16's input levers) are not mirrored in JAX yet: they must be 0"
        )
    x, terms, num_steps = integrate(params["h"], config, embed(params, config, idx), probes, regularize)
    logits, loss = _head(params, config, x, targets)
    return logits, loss, terms, num_steps


@partial(jax.jit, static_argnames="config")
def forward(params, config: GPTConfig, idx, targets=None):
    """(logits, loss) as model.GPT.forward in eval mode: logits of the last position only (b, 1,
    vocab) and loss None when targets is None; else all positions' logits (b, t, vocab) and the
    mean cross-entropy over targets != -1 (pure: no regularizers).

    Under a shortlist, as torch: targets None -> the last position's logits over the whole vocabulary
    (b, 1, vocab; log-probabilities up to one constant) and None; with targets -> logits None and the loss."""
    logits, loss, _, _ = _forward(params, config, idx, targets, None, regularize=False)
    return logits, loss


@partial(jax.jit, static_argnames=("config", "regularize"))
def forward_with_stats(params, config: GPTConfig, idx, targets=None, probes=None, regularize: bool = False):
    """(logits, loss, stats), logits and loss as `forward`: stats holds the regularization terms
    (zero unless `regularize`; torch computes them in a training forward whenever a weight is > 0),
    the diffrax steps taken (`num_steps`, all layers) and the vector-field evaluations they cost
    (`nfe`, all layers, A and M counted separately as in model.GPT.nfe)."""
    logits, loss, terms, num_steps = _forward(params, config, idx, targets, probes, regularize)
    method = get_method(config.solver)
    per_step = evals_per_step(method, config.splitting, regularize)
    fsal_extra = config.n_layer if (not regularize and _direct(config) and method.fsal) else 0
    nfe_total = num_steps * sum(per_step.values()) + fsal_extra * len(per_step)
    return logits, loss, {**terms, "num_steps": num_steps, "nfe": nfe_total}


def loss_terms(params, config: GPTConfig, idx, targets, probes=None):
    """(total, (loss, terms)) for training: total = loss + lambda_K K + lambda_J J, as
    train_mps.train_step adds model.regularization_loss() to the cross-entropy."""
    _, loss, terms, _ = _forward(params, config, idx, targets, probes, regularize=config.regularized)
    total = loss
    if config.regularized:
        total = loss + (
            config.kinetic_energy * terms["kinetic_energy"] + config.jacobian_frobenius * terms["jacobian_frobenius"]
        )
    return total, (loss, terms)
