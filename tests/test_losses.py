"""Loss terms against brute force and hand-computed values; gradients reach every trainable part."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedgate.adapters import AdapterSpec, GatedLoRALinear
from fedgate.inject import adapter_modules, inject_adapters
from fedgate.losses import (
    LossWeights,
    bernoulli_kl,
    frobenius_penalty,
    gate_kl,
    structural_sparsity,
    task_loss,
    total_loss,
)


class _Net(nn.Module):
    """Two linear layers ("a.0", "b.1") get adapters; a head stays outside."""

    def __init__(self, spec: AdapterSpec = AdapterSpec(r=2, alpha=4.0)):
        super().__init__()
        self.a = nn.ModuleList([nn.Linear(6, 6)])
        self.b = nn.ModuleList([nn.Identity(), nn.Linear(6, 4)])
        self.head = nn.Linear(4, 5)
        inject_adapters(self, spec, regex=r"^(a\.0|b\.1)$")

    def forward(self, x):
        return self.head(torch.tanh(self.b[1](torch.tanh(self.a[0](x)))))


def _randomise(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapter_modules(net).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g))
            if m.gate_weight is not None:
                m.gate_weight.copy_(torch.randn(m.gate_weight.shape, generator=g) * 0.5)
                m.gate_bias.fill_(float(torch.randn((), generator=g)))
            if m.struct_logit is not None:
                m.struct_logit.fill_(float(torch.randn((), generator=g)))


def test_frobenius_sq_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for d_in, d_out, r in [(5, 7, 2), (16, 3, 4), (9, 9, 1)]:
        layer = GatedLoRALinear(nn.Linear(d_in, d_out), AdapterSpec(r=r))
        with torch.no_grad():
            layer.lora_A.copy_(torch.randn(r, d_in, generator=g))
            layer.lora_B.copy_(torch.randn(d_out, r, generator=g))
        brute = torch.linalg.matrix_norm(layer.lora_B @ layer.lora_A) ** 2
        torch.testing.assert_close(layer.frobenius_sq(), brute, rtol=1e-5, atol=1e-5)


def test_frobenius_penalty_sums_adapters():
    net = _Net()
    _randomise(net)
    brute = sum(torch.linalg.matrix_norm(m.lora_B @ m.lora_A) ** 2 for m in adapter_modules(net).values())
    torch.testing.assert_close(frobenius_penalty(net), brute, rtol=1e-5, atol=1e-5)
    assert float(frobenius_penalty(nn.Linear(2, 2))) == 0.0  # no adapters


def test_bernoulli_kl_hand_values():
    assert float(bernoulli_kl(torch.tensor(0.5), 0.5)) == pytest.approx(0.0, abs=1e-7)
    # KL(Bern(0.9) || Bern(0.5)) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5)
    expected = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert float(bernoulli_kl(torch.tensor(0.9, dtype=torch.float64), 0.5)) == pytest.approx(expected, rel=1e-6)
    # asymmetric: KL(Bern(0.2) || Bern(0.7))
    expected = 0.2 * math.log(0.2 / 0.7) + 0.8 * math.log(0.8 / 0.3)
    got = bernoulli_kl(torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # elementwise, non-negative, finite at the edges
    q = torch.tensor([0.0, 0.3, 1.0])
    kl = bernoulli_kl(q, 0.4)
    assert kl.shape == (3,) and torch.isfinite(kl).all() and (kl >= 0).all()


def _forward(net: nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(seed))  # (batch, seq, d)
    return net(x)


def test_gate_kl_uses_last_batch_means_and_per_layer_prior():
    net = _Net()
    _randomise(net)
    _forward(net)
    mods = adapter_modules(net)
    assert list(mods) == ["a.0", "b.1"]
    q = {n: float(m.last_token_gate_mean.detach()) for n, m in mods.items()}

    def kl(qv, pv):
        return qv * math.log(qv / pv) + (1 - qv) * math.log((1 - qv) / (1 - pv))

    prior = {"a.0": 0.8, "b.1": 0.3}
    assert float(gate_kl(net, prior).detach()) == pytest.approx(kl(q["a.0"], 0.8) + kl(q["b.1"], 0.3), rel=1e-5)
    assert float(gate_kl(net, 0.6).detach()) == pytest.approx(kl(q["a.0"], 0.6) + kl(q["b.1"], 0.6), rel=1e-5)
    # layers missing from the mapping fall back to the default prior
    assert float(gate_kl(net, {"a.0": 0.8}, default=0.2).detach()) == pytest.approx(
        kl(q["a.0"], 0.8) + kl(q["b.1"], 0.2), rel=1e-5)
    # a disabled adapter contributes nothing
    mods["b.1"].enabled = False
    assert float(gate_kl(net, prior).detach()) == pytest.approx(kl(q["a.0"], 0.8), rel=1e-5)


def test_gate_kl_zero_without_token_gates():
    net = _Net(AdapterSpec(r=2, token_gate=False))
    _forward(net)
    assert float(gate_kl(net, 0.5).detach()) == 0.0


def test_structural_sparsity_is_sum_of_sigmoids():
    net = _Net()
    with torch.no_grad():
        net.a[0].struct_logit.fill_(-1.0)
        net.b[1].struct_logit.fill_(0.5)
    expected = 1 / (1 + math.exp(1.0)) + 1 / (1 + math.exp(-0.5))
    assert float(structural_sparsity(net).detach()) == pytest.approx(expected, rel=1e-6)
    assert float(structural_sparsity(_Net(AdapterSpec(r=2, structural_gate=False)))) == 0.0


def test_task_loss_is_mse():
    pred = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 3.0, 2.0]])
    assert float(task_loss(pred, target)) == pytest.approx((1 + 0 + 4 + 0 + 4) / 5)
    w = torch.tensor([[1.0, 0.0, 0.5, 0.0, 0.0]])
    assert float(task_loss(pred, target, w)) == pytest.approx((1 + 2) / 5)


def test_task_loss_adds_the_alignment_logits_bce():
    pred = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 3.0, 2.0, 1.0], [1.0, 1.0, 0.0, 3.0, 2.0, -1.0]])
    mse = (1 + 0 + 4 + 0 + 4) / 5
    # BCE: aligned at logit 0 -> log 2; misaligned at logit 2 -> log(1 + e^2)
    bce = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert float(task_loss(pred, target)) == pytest.approx(mse + bce)
    assert float(task_loss(pred, target, alignment=0.5)) == pytest.approx(mse + 0.5 * bce)
    assert float(task_loss(pred, target, alignment=0.0)) == pytest.approx(mse)


def test_total_loss_parts_and_gradients():
    torch.manual_seed(0)
    net = _Net()
    _randomise(net)
    w = LossWeights(lambda_f=0.01, beta=0.1, lambda_s=0.05, gate_prior=0.4)
    pred = _forward(net).mean(1)  # (batch, 5)
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    prior = {"a.0": 0.7}
    loss, parts = total_loss(pred, target, net, w, prior)
    assert set(parts) == {"task", "frobenius", "gate_kl", "sparsity"}
    assert parts["task"] == pytest.approx(float(((pred - target) ** 2).mean().detach()), rel=1e-6)
    assert parts["frobenius"] == pytest.approx(0.01 * float(frobenius_penalty(net).detach()), rel=1e-6)
    mods = adapter_modules(net)
    expected_kl = (float(bernoulli_kl(mods["a.0"].last_token_gate_mean, 0.7).detach())
                   + float(bernoulli_kl(mods["b.1"].last_token_gate_mean, 0.4).detach()))  # b.1: default gate_prior
    assert parts["gate_kl"] == pytest.approx(0.1 * expected_kl, rel=1e-5)
    assert parts["sparsity"] == pytest.approx(0.05 * float(structural_sparsity(net).detach()), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(sum(parts.values()), rel=1e-6)

    loss.backward()
    for name, m in mods.items():
        for p in ("lora_A", "lora_B", "gate_weight", "gate_bias", "struct_logit"):
            grad = getattr(m, p).grad
            assert grad is not None and grad.abs().sum() > 0, f"{name}.{p} got no gradient"
    assert net.head.weight.grad is not None


def test_regulariser_gradients_without_task_signal():
    """Each regulariser alone drives its own parameters (B != 0 so A gets a gradient)."""
    net = _Net()
    _randomise(net)
    _forward(net)
    gate_kl(net, 0.1).backward()
    for m in adapter_modules(net).values():
        assert m.gate_weight.grad.abs().sum() > 0 and m.gate_bias.grad.abs() > 0
    net.zero_grad()
    structural_sparsity(net).backward()
    for m in adapter_modules(net).values():
        s = torch.sigmoid(m.struct_logit.detach())
        torch.testing.assert_close(m.struct_logit.grad, s * (1 - s))  # d sigmoid / dz
    net.zero_grad()
    frobenius_penalty(net).backward()
    for m in adapter_modules(net).values():
        torch.testing.assert_close(m.lora_B.grad, 2 * m.lora_B.detach() @ m.lora_A.detach() @ m.lora_A.detach().T,
                                   rtol=1e-4, atol=1e-5)


def test_total_loss_weights_switch_terms_off():
    net = _Net()
    pred = _forward(net).mean(1)
    _, parts = total_loss(pred, torch.zeros(3, 5), net, LossWeights(lambda_f=0.0, beta=0.0, lambda_s=0.0))
    assert set(parts) == {"task"}


def test_task_loss_alone_reaches_gates_and_lora():
    """The task gradient must flow through the token gate's output, not only through the KL term."""
    net = _Net()
    _randomise(net)
    pred = _forward(net).mean(1)
    loss, parts = total_loss(pred, torch.ones(3, 5), net, LossWeights(lambda_f=0.0, beta=0.0, lambda_s=0.0))
    assert set(parts) == {"task"}
    loss.backward()
    for name, m in adapter_modules(net).items():
        for p in ("lora_A", "lora_B", "gate_weight", "gate_bias", "struct_logit"):
            grad = getattr(m, p).grad
            assert grad is not None and grad.abs().sum() > 0, f"{name}.{p} got no task gradient"


def test_bradley_terry_loss_matches_hand_values():
    from fedgate.losses import bradley_terry_loss

    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2  # -log sigmoid(2), -log sigmoid(-1)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    with_margin = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))
    assert with_margin.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2, rel=1e-6)
    big = torch.tensor([100.0]), torch.tensor([-100.0])
    assert bradley_terry_loss(*big).item() == pytest.approx(0.0, abs=1e-30) and torch.isfinite(bradley_terry_loss(*big[::-1]))
