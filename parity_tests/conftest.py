"""Parity tests run on CPU in float64 (and a float32 subset): x64 must be on before any array.

Compilation dominates the suite's time (one XLA compile per solver x splitting x steps x dtype),
so the CPU backend compiles with LLVM's optimizations off: the same HLO, cheaper machine code
(measured on the 2-core machine: -15 to -30% per forward-and-gradient check). Runs are
microseconds here, so slower code costs nothing."""

import os

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402  (XLA_FLAGS must be set before the backend starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")  # parity is defined on CPU (PARITY.md: GPU matmuls differ)
