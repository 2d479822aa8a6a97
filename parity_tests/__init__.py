"""Torch <-> JAX parity suite (pytest) and report (`python -m parity_tests.report`)."""
