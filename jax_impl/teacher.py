"""levers.NgramTeacher in the JAX trainer: the interpolated Kneser-Ney trigram used as a soft target
(Recipe.ngram_distill, Recipe.ngram_loo), written again from its formulas (Chen & Goodman 1998, one absolute
discount per order, D = n1 / (n1 + 2 n2) from counts of counts):

    p3(w | u v) = max(c(uvw) - D3, 0) / c(uv.) + D3 N1+(uv.) / c(uv.) * p2(w | v)
    p2(w | v)   = max(N1+(.vw) - D2, 0) / N1+(.v.) + D2 N1+(v.) / N1+(.v.) * p1(w)
    p1(w)       = N1+(.w) / N1+(..)

The parity suite compares this module with levers.NgramTeacher, so it shares none of its code: the counts are
scipy sparse matrices (one row per trigram context, per bigram context; a column per token), a position's counts
are its context's row, and leave-one-out subtracts the position's own occurrence from those rows and recomputes
every total and type count from what is left (torch instead corrects y's entries after the fact).

Pure functions: fit_teacher(tokens) -> TeacherCounts once; teacher_target(counts, xb, yb) -> (P, n_rows) on the
host per batch (numpy, outside autograd as in torch); distill_loss_terms, the jitted step's loss."""

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .model import GPTConfig, _forward, shortlist_buffers


class TeacherCounts(NamedTuple):
    """The training split's n-gram counts, in token space (columns are token ids); the rows of the model's output
    are applied when a target is built. trigram: (n_contexts + 1, V) c(uvw), the last row empty (a context
    never seen, or none: the window's first position); contexts: (u, v) -> its row. continuation: (V, V)
    N1+(.vw), the distinct u before (v, w). unigram: (V,) N1+(.w), the distinct v before w; n_types N1+(..)."""

    vocab_size: int
    n_rows: int
    token_rows: np.ndarray  # (V,) token id -> output row
    contexts: dict
    trigram: sp.csr_matrix
    continuation: sp.csr_matrix
    unigram: np.ndarray
    n_types: int
    discount2: float
    discount3: float


def discount(counts: np.ndarray) -> float:
    """Absolute discount of one order from its counts of counts, n1 / (n1 + 2 n2); 0.5 without either."""
    n1, n2 = int(np.count_nonzero(counts == 1)), int(np.count_nonzero(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5


def fit_teacher(tokens, vocab_size: int, token_rows=None, n_rows: int = 0) -> TeacherCounts:
    """The counts of the trigrams of `tokens` (the training split). token_rows: token id -> row of the model's
    output (the shortlist's), None: rows are token ids; n_rows: the number of rows (0: vocab_size)."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.size < 3:
        raise ValueError(f"the n-gram teacher needs at least 3 training tokens, got {t.size}")
    V = vocab_size
    rows = np.arange(V) if token_rows is None else np.asarray(token_rows, dtype=np.int64)
    n_rows = n_rows or V
    if rows.shape != (V,) or rows[t].max() >= n_rows or rows.min() < 0:
        raise ValueError(f"token_rows must map every token id to a row in [0, {n_rows}), the training tokens included")
    u, v, w = t[:-2], t[1:-1], t[2:]
    contexts: dict = {}
    ctx = np.fromiter((contexts.setdefault(k, len(contexts)) for k in zip(u.tolist(), v.tolist())), np.int64, len(u))
    n_ctx = len(contexts)
    trigram = sp.csr_matrix((np.ones(len(w)), (ctx, w)), shape=(n_ctx + 1, V))  # duplicates summed: c(uvw)
    trigram.sum_duplicates()
    # each stored (context, w) is one trigram type: counted per (v, w) it gives the distinct u before (v, w)
    ctx_v = np.empty(n_ctx, np.int64)
    ctx_v[ctx] = v
    coo = trigram.tocoo()
    continuation = sp.csr_matrix((np.ones(coo.nnz), (ctx_v[coo.row], coo.col)), shape=(V, V))
    continuation.sum_duplicates()
    unigram = np.bincount(continuation.indices, minlength=V).astype(np.float64)  # distinct v before w
    return TeacherCounts(
        vocab_size=V,
        n_rows=n_rows,
        token_rows=rows,
        contexts=contexts,
        trigram=trigram,
        continuation=continuation,
        unigram=unigram,
        n_types=continuation.nnz,
        discount2=discount(continuation.data),
        discount3=discount(trigram.data),
    )


def _at(m: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
    """m[p, cols[p]] for every row p, dense (P,)."""
    return np.asarray(m[np.arange(m.shape[0]), cols]).ravel()


def _discounted(m: sp.csr_matrix, d: float, scale: np.ndarray) -> sp.csr_matrix:
    """Row p of max(m - d, 0) * scale[p] (m's zeros stay zero: max(0 - d, 0) = 0)."""
    m = m.copy()
    m.eliminate_zeros()
    m.data = np.maximum(m.data - d, 0.0)
    return sp.diags(scale) @ m


def teacher_target(counts: TeacherCounts, xb, yb=None, leave_one_out: bool = False) -> np.ndarray:
    """xb: (b, t) inputs, yb: (b, t) their targets (needed under leave_one_out) -> the teacher's distribution of
    the next row at each position, (b * t, n_rows) float64. The context of position j is xb[j - 1], xb[j]; the
    window's first position has no u and takes the bigram level. leave_one_out: where the position's trigram
    (u, v, y) is in the counts, that one occurrence leaves every count it entered before the prediction."""
    xb = np.asarray(xb, dtype=np.int64)
    b, t = xb.shape
    P, V, none = b * t, counts.vocab_size, counts.trigram.shape[0] - 1
    v = xb.reshape(-1)  # (P,)
    u = np.concatenate([np.full((b, 1), -1), xb[:, :-1]], axis=1).reshape(-1)  # (P,), -1: no u in the window
    ctx = np.array([counts.contexts.get(k, none) if k[0] >= 0 else none for k in zip(u.tolist(), v.tolist())])
    tri = counts.trigram[ctx]  # (P, V) c(uvw) of each position's context, an empty row where unseen or none
    cont = counts.continuation[v]  # (P, V) N1+(.vw)
    n_types = np.full(P, float(counts.n_types))
    unigram_out = np.zeros(P)  # 1 where y's N1+(.y) loses its (v, y) type
    if leave_one_out:
        if yb is None:
            raise ValueError("a leave-one-out teacher needs the targets yb: each position's own occurrence leaves")
        y = np.asarray(yb, dtype=np.int64).reshape(-1)
        pos = np.arange(P)
        own3 = _at(tri, y)  # c(uvy); 0 where (u, v, y) is not in the counts (or no u): nothing to take out
        taken = (own3 > 0).astype(np.float64)
        tri = tri - sp.csr_matrix((taken, (pos, y)), shape=(P, V))
        tri.eliminate_zeros()
        type3_gone = taken * (own3 == 1)  # the trigram type (u, v, y) was that occurrence alone
        own2 = _at(cont, y)
        cont = cont - sp.csr_matrix((type3_gone, (pos, y)), shape=(P, V))
        cont.eliminate_zeros()
        unigram_out = type3_gone * (own2 == 1)  # and (v, y) had no other u: the bigram type goes too
        n_types = n_types - unigram_out
    d2, d3 = counts.discount2, counts.discount3
    # the counts each level sees, read off what is left
    c_ctx = np.asarray(tri.sum(axis=1)).ravel()  # c(uv.)
    types3 = np.diff(tri.indptr).astype(np.float64)  # N1+(uv.)
    n_v = np.asarray(cont.sum(axis=1)).ravel()  # N1+(.v.)
    types2 = np.diff(cont.indptr).astype(np.float64)  # N1+(v.)
    inv3 = np.divide(1.0, c_ctx, out=np.zeros(P), where=c_ctx > 0)
    inv2 = np.divide(1.0, n_v, out=np.zeros(P), where=n_v > 0)
    back3 = np.where(c_ctx > 0, d3 * types3 * inv3, 1.0)  # the weight p3 leaves to p2 (all of it: unseen)
    back2 = np.where(n_v > 0, d2 * types2 * inv2, 1.0)  # the weight p2 leaves to p1
    weight1 = back3 * back2 / n_types  # (P,) multiplies N1+(.w)
    higher = _discounted(tri, d3, inv3) + _discounted(cont, d2, back3 * inv2)  # (P, V) the p3 and p2 terms
    if leave_one_out:
        higher = higher - sp.csr_matrix((weight1 * unigram_out, (np.arange(P), y)), shape=(P, V))  # N1+(.y) - 1
    # token -> row; a token with no row (outside the shortlist) has no count: it never occurs in the split
    has_row = np.flatnonzero(counts.token_rows < counts.n_rows)
    to_rows = sp.csr_matrix((np.ones(len(has_row)), (has_row, counts.token_rows[has_row])), shape=(V, counts.n_rows))
    out = (higher @ to_rows).toarray()  # (P, n_rows)
    unigram_rows = np.bincount(counts.token_rows[has_row], weights=counts.unigram[has_row], minlength=counts.n_rows)
    return out + weight1[:, None] * unigram_rows[None, :]


# ---------------------------------------------------------------------------------------------
# the loss


def row_log_probs(config: GPTConfig, head_out):
    """The head's output (_forward's first value) -> log-probabilities of the model's output rows (b, t, n_rows):
    a full softmax's logits normalized; under a shortlist its k tokens' log-probabilities (1 - unseen_mass in all),
    in row order, as model.GPT.last_log_probs."""
    if config.shortlist:
        return head_out[..., jnp.asarray(config.shortlist, jnp.int32)]  # the (b, t, vocab) log-probabilities' rows
    return jax.nn.log_softmax(head_out, axis=-1)


def teacher_cross_entropy(row_logp, teacher_probs):
    """Mean over positions of -sum_rows teacher * log p_model. row_logp: (b, t, n_rows); teacher_probs: (b * t,
    n_rows), teacher_target's."""
    flat = row_logp.reshape(-1, row_logp.shape[-1])  # (P, n_rows)
    return -jnp.sum(teacher_probs.astype(flat.dtype) * flat) / flat.shape[0]


@partial(jax.jit, static_argnames=("config", "distill"))
def distill_loss_terms(params, config: GPTConfig, idx, targets, teacher_probs, distill: float, probes=None):
    """loss_terms under Recipe.ngram_distill = a: (total, (loss, terms)) with total = (1 - a) CE(targets)
    + a CE(teacher) + lambda_K K + lambda_J J (train_mps.train_step); loss stays the pure cross-entropy."""
    out, loss, terms, _ = _forward(params, config, idx, targets, probes, regularize=config.regularized)
    total = loss + distill * (teacher_cross_entropy(row_log_probs(config, out), teacher_probs) - loss)
    if config.regularized:  # as loss_terms
        total = total + (
            config.kinetic_energy * terms["kinetic_energy"] + config.jacobian_frobenius * terms["jacobian_frobenius"]
        )
    return total, (loss, terms)


def make_teacher(config: GPTConfig, train_tokens, distill: float) -> Optional[TeacherCounts]:
    """levers.make_teacher for a JAX config: the teacher over the model's output rows (a shortlist's k rows,
    token_rows from its ids), or None when distill is 0."""
    if distill == 0:
        return None
    if not config.shortlist:
        return fit_teacher(train_tokens, config.vocab_size)
    token_rows = shortlist_buffers(config)["token_rows"]  # k for a token outside the shortlist: it has no row
    return fit_teacher(train_tokens, config.vocab_size, token_rows, config.shortlist_size)
