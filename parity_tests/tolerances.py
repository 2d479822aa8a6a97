"""Every parity tolerance, in one table: TOLERANCES[dtype][quantity].

How each quantity is measured (parity_tests.harness):
  absolute  max |jax - torch| over all entries              logits, loss, regularizer values, lr
  relative  max |jax - torch| / max |torch|, per tensor,     gradients, parameters after optimizer
            worst tensor                                      or training steps

float64 is the real test: both sides compute the same operations in a different order, so they
agree to a few hundred ulps. float32 is the dtype that trains; its tolerances are bounds derived from
the computation (its sizes and how it reduces), not measured on one CPU: two float32 computations of one
quantity in different orders (another vector width, blocking or thread split, another library) differ by
at most the sum of their rounding bounds. The bounds and their derivation are the functions below; the
tests in tests/ use them for every float32 comparison too.
For scale, trusted suites compare forward passes at 1e-5 (HF transformers PT<->Flax, Flax lm1b
Linen<->NNX); see /work/shared/PARITY.md.
"""

import math

TOLERANCES = {
    "float64": {
        "logits": 1e-10,  # absolute
        "loss": 1e-10,  # absolute
        "grads": 1e-9,  # relative
        "regularizers": 1e-10,  # absolute, K and J
        "lr": 1e-12,  # absolute, multiplier of the peak (every step 0..10000)
        "optimizer": 1e-9,  # relative, parameters after each of 20 optimizer steps
        "training": 1e-9,  # relative, parameters after 5 training steps (losses: "loss")
        # torch.optim.Muon orthogonalizes in bfloat16 whatever the parameter dtype; the emulated
        # bf16 Newton-Schulz matches each op's rounding, but float32 accumulation order differs
        # between oneDNN and XLA, so an entry can land one bf16 ulp (2^-8) apart and the update
        # moves by lr * adjust * 2^-8. The rest of Muon is tested in float64 at "optimizer".
        "muon_bf16": 1e-2,  # relative, parameters after 20 Muon steps with bf16 Newton-Schulz (measured 1.2e-3
        # to 3.9e-3, depending on XLA's codegen flags; a real error, e.g. a wrong orientation or
        # momentum form, moves them by ~0.3)
        "tableau": 0.0,  # exact: both sides write the same decimal fractions
        "order": 0.15,  # |fitted log-log slope - order|
    },
    "float32": {},  # derived below from the float32 cases' sizes (float32_table)
}


# -- float32: bounds derived from the computation ------------------------------------------------------------------
# Higham, Accuracy and Stability of Numerical Algorithms (2nd ed., 2002), sections 3.1 to 3.5: a float32 sum or dot
# product of n terms, in ANY order, is within gamma(n) * sum |terms| of the exact value, and n roundings compounded
# along a chain stay within gamma(n) relative. These are worst cases: they hold on every CPU, vector width and
# thread count, and on XLA's side too.
U32 = 2.0**-24  # float32's unit roundoff
# Long chains (a whole forward pass: ~10^4 roundings) get the probabilistic bound of Higham and Mary ("A new approach
# to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Theorem 2.4): with rounding errors
# independent and of mean zero, n of them compounded stay within exp(lambda sqrt(n) u + n u^2 / (1 - u)) - 1
# relative, except with probability at most 2 exp(-lambda^2 (1 - u)^2 / 2): at LAMBDA = 6, 3e-8 per chain.
LAMBDA = 6.0


def gamma(n: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the worst-case relative error of n compounded float32 roundings."""
    return n * U32 / (1 - n * U32)


def gamma_prob(n: float) -> float:
    """Higham and Mary's probabilistic gamma~_n(LAMBDA): ~sqrt(n) u instead of n u, for long chains."""
    return math.expm1(LAMBDA * math.sqrt(n) * U32 + n * U32**2 / (1 - U32))


def field_chain(
    n_embd: int, n_head: int, seq: int, mlp_hidden: int = 0, head_size: int = 0, qk_norm=False, gated=False
) -> int:
    """The reduction lengths one evaluation of a layer's attention + MLP chains, summed: LayerNorm (C) and the q, k, v
    projection (C), the scores (head size hs), softmax and the weighted values (2 T), the output projection (its
    input width n_head hs, C by default); LayerNorm (C), the MLP's input (C) and output (its hidden width H, 4 C by
    default) projections. Issue #35's levers (chain_widths) set H and hs, and add QK-norm's RMSNorm over hs and the
    gated MLP's product (1 rounding); RMSNorm reduces over C as LayerNorm. A sub-field alone (under lie or strang)
    costs less; counting each as a whole evaluation keeps the bound an upper one."""
    hs = head_size or n_embd // n_head
    H = mlp_hidden or 4 * n_embd
    return 4 * n_embd + n_head * hs + H + hs + 2 * seq + (hs if qk_norm else 0) + (1 if gated else 0)


def chain_widths(config) -> dict:
    """field_chain's widths of a config (levers.LeverConfig, model.GPTConfig or jax_impl.GPTConfig): nanoGPT's where a
    config has no capacity levers (issue #35)."""
    return {
        "mlp_hidden": getattr(config, "mlp_width", 0) or 4 * config.n_embd,
        "head_size": getattr(config, "head_dim", 0) or config.n_embd // config.n_head,
        "qk_norm": bool(getattr(config, "qk_norm", False)),
        "gated": bool(getattr(config, "glu", "")),
    }


def forward_rel(n_embd: int, n_head: int, seq: int, evaluations: float, rounding=gamma, **widths) -> float:
    """Relative error bound of a float32 forward pass to the logits, to first order: `evaluations` field evaluations
    (attention and MLP counted apart, as GPT.nfe does: every sub-field evaluation is charged a whole field_chain),
    then the final LayerNorm and the logits' dot products (2 C). Rounding errors add along the residual stream;
    the bound takes the layers' gain on them as 1 (the tiny models here are near the identity per step).
    widths: field_chain's (chain_widths), nanoGPT's by default."""
    return rounding(evaluations * field_chain(n_embd, n_head, seq, **widths) + 2 * n_embd)


def logit_scale(model) -> float:
    """An upper bound on |logit| of a model.py GPT from its weights: the largest output row's norm times the largest
    norm a LayerNorm'd (or RMSNorm'd) state can have (sqrt(C) max |weight| + |bias|), plus the head_width features'
    share."""
    ln = model.transformer.ln_f
    state = math.sqrt(ln.weight.numel()) * ln.weight.abs().max().item()
    bias = getattr(ln, "bias", None)  # levers.RMSNorm has none
    state += bias.norm().item() if bias is not None else 0.0
    rows = model.lm_head.weight.norm(dim=1).max().item()
    if getattr(model.config, "head_width", 0):
        wide = model.head_wide.weight.norm(dim=1).max().item() * model.head_up.weight.norm(dim=1).max().item()
        rows += wide * math.sqrt(model.config.head_width)  # |gelu(z)| <= |z|
    return rows * state


def loss_bound(n_embd, n_head, seq, evaluations, n_classes, n_positions, loss, scale, **widths) -> float:
    """Absolute bound (nats) on a float32 mean cross-entropy against its exact value: the forward's relative error
    (forward_rel, probabilistic: a forward pass is a long chain) on logits of magnitude <= scale, twice (the
    target's logit and the log-sum-exp), then nll over n_classes. Two float32 computations of one such loss (other
    batch shapes, so other GEMM blocking; another thread split; another order of the mean) differ by at most twice
    this. widths: field_chain's (chain_widths)."""
    rel = forward_rel(n_embd, n_head, seq, evaluations, rounding=gamma_prob, **widths)
    return 2 * rel * scale + nll(n_classes, n_positions, loss, rounding=gamma_prob)


def model_log_probs(model) -> float:
    """Absolute bound on one float32 log-probability of a model.py GPT (its logit and its row's log-sum-exp)."""
    c = model.config
    evaluations = sum(model.nfe().values())
    rel = forward_rel(c.n_embd, c.n_head, c.block_size, evaluations, rounding=gamma_prob, **chain_widths(c))
    return 2 * rel * logit_scale(model) + gamma_prob((c.shortlist_size or c.vocab_size) + 3)


def model_loss(model, n_positions: int, loss: float) -> float:
    """loss_bound for a model.py GPT under its integrator, its logits bounded by its weights (logit_scale)."""
    c = model.config
    evaluations = sum(model.nfe().values())
    classes = c.shortlist_size or c.vocab_size
    scale = logit_scale(model)
    return loss_bound(
        c.n_embd, c.n_head, c.block_size, evaluations, classes, n_positions, loss, scale, **chain_widths(c)
    )


def nll(n_classes: int, n_positions: int, loss: float, rounding=gamma) -> float:
    """Absolute error bound (nats) of a float32 mean cross-entropy over n_positions from exact logits: per position a
    max-shifted log-sum-exp over n_classes (the shift, exp and log: 3 roundings, the sum gamma(n_classes)
    relative, so gamma(n_classes + 3) nats), then the mean (gamma(n_positions) of the loss)."""
    return rounding(n_classes + 3) + rounding(n_positions) * abs(loss)


# The n-gram teacher's dense target in float32 (levers.NgramTeacher.target): computed in float64 on exact counts (at
# most 14 roundings of 2**-53 on values <= 1) and rounded once to float32: within gamma(1) + 14 * 2**-53 of its exact
# value; gamma(2) bounds both.
TEACHER = gamma(2)


def float32_table(evaluations: int = 18, **widths) -> dict:
    """TOLERANCES['float32'] for the parity grids' float32 cases (harness.TINY: n_embd 16, 2 heads, 2 layers,
    sequences of 8, vocabulary 128), from their worst case: bosh3 under strang, 1 step (3 stages of M/2, A, M/2 per
    layer: 18 sub-field evaluations); logits of these untrained models lie within +-1 (N(0, 0.02) weights on
    LayerNorm'd states), so an absolute bound on them is the relative one. A backward pass runs the chain again in
    reverse and sums each weight's gradient over the batch's positions (2 x 8); an optimizer step adds a few
    roundings per element (AdamW: ~10), a training step is a forward, a backward and a step.
    evaluations, widths: another case's sub-field evaluations and field_chain widths (a test checks that the table
    bounds the capacity levers' float32 case)."""
    n_embd, n_head, seq, vocab, positions = 16, 2, 8, 128, 16
    forward = forward_rel(n_embd, n_head, seq, evaluations=evaluations, **widths)
    backward = 2 * forward + gamma(positions)
    return {
        "logits": forward,
        "loss": forward + nll(vocab, positions, loss=6.0),  # an untrained model: log(128) ~ 4.9 nats
        "grads": backward,
        "regularizers": forward,
        "optimizer": gamma(10) * 20,  # 20 steps of AdamW's elementwise update, relative to the parameters
        "training": 5 * (backward + gamma(10)),  # 5 training steps
    }


TOLERANCES["float32"] = float32_table()


def tol(dtype: str, quantity: str) -> float:
    return TOLERANCES[dtype][quantity]
