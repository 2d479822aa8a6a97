"""odegpt in JAX: a Flax/diffrax mirror of model.py and an optax mirror of train_mps.py.

Public API (re-exported from the modules below):
  GPTConfig, config_from_torch, torch_config_kwargs, params_from_torch, params_to_torch,
  shortlist_buffers, init_params, forward, forward_with_stats, loss_terms, nfe   jax_impl.model
  METHODS, get_method, SPLITTING_SCHEMES, SplitRK, RK4, RK438, Kutta3       jax_impl.solvers
  make_optimizer, lr_multiplier, lr_schedule, adamw_torch, muon_torch,
  clip_by_global_norm_torch, decay_mask, muon_labels, ema_update          jax_impl.optim
  TeacherCounts, fit_teacher, teacher_target, distill_loss_terms          jax_impl.teacher
  `python -m jax_impl.train`                               jax_impl.train
"""

from .model import (
    LINEAR_WEIGHTS,
    TORCH_CONFIG_FIELDS,
    GPTConfig,
    config_from_torch,
    draw_probes,
    forward,
    forward_with_stats,
    init_params,
    integrate,
    loss_terms,
    nfe,
    params_from_torch,
    params_to_torch,
    probe_sequence,
    shortlist_buffers,
    torch_config_kwargs,
)
from .optim import (
    adamw_torch,
    clip_by_global_norm_torch,
    decay_mask,
    ema_update,
    lr_multiplier,
    lr_schedule,
    make_optimizer,
    muon_labels,
    muon_torch,
)
from .solvers import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    METHODS,
    RK4,
    RK438,
    SPLITTING_SCHEMES,
    SPLITTINGS,
    Kutta3,
    Method,
    SplitRK,
    get_method,
)
from .teacher import TeacherCounts, distill_loss_terms, fit_teacher, teacher_target

__all__ = [
    "adamw_torch",
    "clip_by_global_norm_torch",
    "decay_mask",
    "ema_update",
    "lr_multiplier",
    "lr_schedule",
    "make_optimizer",
    "muon_labels",
    "muon_torch",
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "GPTConfig",
    "LINEAR_WEIGHTS",
    "METHODS",
    "Kutta3",
    "Method",
    "RK4",
    "RK438",
    "SPLITTINGS",
    "SPLITTING_SCHEMES",
    "SplitRK",
    "TORCH_CONFIG_FIELDS",
    "config_from_torch",
    "draw_probes",
    "forward",
    "forward_with_stats",
    "get_method",
    "init_params",
    "integrate",
    "loss_terms",
    "nfe",
    "params_from_torch",
    "params_to_torch",
    "probe_sequence",
    "shortlist_buffers",
    "torch_config_kwargs",
    "TeacherCounts",
    "distill_loss_terms",
    "fit_teacher",
    "teacher_target",
]
