"""Every parity tolerance, in one table: TOLERANCES[dtype][quantity].

How each quantity is measured (parity_tests.harness):
  absolute  max |jax - torch| over all entries              logits, loss, regularizer values, lr
  relative  max |jax - torch| / max |torch|, per tensor,     gradients, parameters after optimizer
            worst tensor                                      or training steps

float64 is the real test: both sides compute the same operations in a different order, so they
agree to a few hundred ulps; float32 is the dtype that trains, with rounding drift of ~1e-7 per op.
For scale, trusted suites compare forward passes at 1e-5 (HF transformers PT<->Flax, Flax lm1b
Linen<->NNX); see /work/shared/PARITY.md.
"""

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
    "float32": {
        "logits": 1e-5,
        "loss": 1e-5,
        "grads": 1e-4,
        "regularizers": 1e-5,
        "optimizer": 1e-4,
        "training": 1e-4,
    },
}


def tol(dtype: str, quantity: str) -> float:
    return TOLERANCES[dtype][quantity]
