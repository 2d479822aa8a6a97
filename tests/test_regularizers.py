"""Differential regularizers against direct computations (float64, CPU)."""

import pytest
import torch

from model import GPT, GPTConfig


def tiny_double_model(n_layer=1, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=8, vocab_size=32, n_layer=n_layer, n_head=2, n_embd=8, bias=True, **kw)
    return GPT(cfg).double().eval()


def integrate_with_stats(model, x, jacobian):
    stats = model.regularization_stats(want_jacobian=jacobian, train=False)
    with torch.enable_grad():
        model.integrate(x, stats)
    return stats


def test_kinetic_energy_matches_direct_euler_lie():
    model = tiny_double_model(n_layer=2, solver="euler", splitting="lie", steps_per_layer=3)
    x = model.embed(torch.randint(0, 32, (2, 8)))
    stats = integrate_with_stats(model, x, jacobian=False)
    h, n_tok, direct = 1 / 3, 2 * 8, 0.0
    with torch.no_grad():
        for block in model.transformer.h:
            for _ in range(3):
                for field in (block.attn_field, block.mlp_field):
                    k = field(x)
                    direct += h * k.pow(2).sum().item() / n_tok
                    x = x + h * k
    assert stats["kinetic_energy"].item() == pytest.approx(direct, rel=1e-12)


def test_kinetic_energy_matches_direct_heun_parallel():
    model = tiny_double_model(solver="heun", splitting="parallel", steps_per_layer=2)
    x = model.embed(torch.randint(0, 32, (2, 8)))
    stats = integrate_with_stats(model, x, jacobian=False)
    f, h, direct = model.transformer.h[0].both_field, 0.5, 0.0
    with torch.no_grad():
        for _ in range(2):
            k1 = f(x)
            k2 = f(x + h * k1)
            direct += h * 0.5 * (k1.pow(2).sum() + k2.pow(2).sum()).item() / 16
            x = x + h * 0.5 * (k1 + k2)
    assert stats["kinetic_energy"].item() == pytest.approx(direct, rel=1e-12)


def test_hutchinson_converges_to_exact_jacobian_frobenius():
    model = tiny_double_model(solver="euler", splitting="parallel", steps_per_layer=1)
    x = model.embed(torch.randint(0, 32, (1, 4)))  # state of 1 * 4 * 8 = 32 numbers
    field = model.transformer.h[0].both_field
    jac = torch.autograd.functional.jacobian(field, x).reshape(x.numel(), x.numel())
    exact = jac.pow(2).sum().item() / 4  # per token, h = 1, b = 1
    torch.manual_seed(1)
    samples = torch.tensor([integrate_with_stats(model, x, True)["jacobian_frobenius"].item() for _ in range(3000)])
    mean, stderr = samples.mean().item(), (samples.std() / len(samples) ** 0.5).item()
    assert abs(mean - exact) < 5 * stderr
    assert abs(mean - exact) / exact < 0.03
    assert samples.std().item() > 0  # probes do vary: a deterministic (wrong) estimator would fail the above


def test_regularization_gradients_flow_to_weights():
    model = tiny_double_model(kinetic_energy=1.0, jacobian_frobenius=1.0).train()
    idx = torch.randint(0, 32, (2, 8))
    model(idx, idx)
    model.regularization_loss().backward()
    grad = model.transformer.h[0].mlp.c_fc.weight.grad
    assert grad is not None and grad.abs().sum() > 0
