import math

import pytest
import torch

from selftok.rl.grpo import exact_kl, group_advantages, grpo_loss, k3_kl, token_entropy


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    # group 1: mean 0.5, population std 0.5 -> +-1; group 2: constant -> 0 (eps avoids 0/0)
    assert torch.allclose(adv[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.equal(group_advantages(rewards, 4)[4:], torch.zeros(4))
    noisy = torch.rand(12, generator=torch.Generator().manual_seed(0))
    assert float(group_advantages(noisy, 3).view(4, 3).mean(1).abs().max()) < 1e-5


def test_group_advantages_rejects_ragged_groups() -> None:
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)


def test_k3_by_hand_and_properties() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # ratio ref/pi = 0.5: 0.5 - log(0.5) - 1
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([0.5 - math.log(0.5) - 1]))
    assert torch.equal(k3_kl(ref, ref), torch.zeros(1))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_k3_is_unbiased_for_kl() -> None:
    pi, ref = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = k3_kl(pi.log()[samples], ref.log()[samples]).mean()
    exact = (pi * (pi / ref).log()).sum()
    assert abs(float(estimate - exact)) < 0.01


def test_exact_kl_by_hand() -> None:
    pi, ref = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    expected = sum(p * math.log(p / q) for p, q in zip(pi.tolist(), ref.tolist(), strict=True))
    assert float(exact_kl(pi.log(), ref.log())) == pytest.approx(expected, rel=1e-5)
    logits = torch.randn(4, 6, 10)
    assert torch.allclose(exact_kl(logits, logits), torch.zeros(4, 6), atol=1e-6)
    assert exact_kl(logits, torch.randn(4, 6, 10)).shape == (4, 6)


def test_exact_kl_sees_mass_moved_off_the_sampled_tokens() -> None:
    """Raising a token the sampler never draws: k3 on the drawn token barely moves, the exact KL does."""
    ref = torch.tensor([0.0, 0.0, -8.0])
    drifted = torch.zeros(3)  # token 2 (never drawn) went from 0.02% to a third of the mass
    drawn = torch.tensor(0)
    k3 = k3_kl(torch.log_softmax(drifted, -1)[drawn], torch.log_softmax(ref, -1)[drawn])
    assert float(k3) < 0.15 and float(exact_kl(drifted, ref)) > 2.0  # ~0.095 against ~2.26


def test_kl_gradient_pulls_towards_the_reference() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0]]], requires_grad=True)
    logp = torch.log_softmax(logits, -1)[..., 0]
    parts = grpo_loss(logp, exact_kl(logits, torch.zeros(1, 1, 3)), torch.zeros(1), beta=1.0)
    parts.loss.backward()
    assert logits.grad[0, 0, 0] > 0 and logits.grad[0, 0, 2] < 0  # descent flattens towards the uniform reference


def test_loss_gradient_pushes_up_positive_advantages() -> None:
    logits = torch.zeros(2, 3, 5, requires_grad=True)
    tokens = torch.tensor([[0, 1, 2], [3, 4, 0]])
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    parts = grpo_loss(logp, k3_kl(logp, logp.detach()), torch.tensor([1.0, -1.0]), beta=0.04)
    parts.loss.backward()
    assert float(parts.kl) == 0.0 and float(parts.loss.detach()) == 0.0  # the mean advantage is 0 and the ratio 1
    assert (logits.grad[0].gather(-1, tokens[0].unsqueeze(-1)) < 0).all()  # descent raises these
    assert (logits.grad[1].gather(-1, tokens[1].unsqueeze(-1)) > 0).all()


def test_the_mask_leaves_tokens_out_of_loss_and_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    kl = torch.tensor([[5.0, 1.0]])
    masked = grpo_loss(logp, kl, torch.tensor([2.0]), beta=0.5, mask=torch.tensor([[0.0, 1.0]]))
    assert float(masked.loss.detach()) == pytest.approx(-2.0 + 0.5 * 1.0)  # the ratio is 1: -advantage + beta x KL of token 2
    masked.loss.backward()
    assert logp.grad.tolist() == [[0.0, -2.0]]


def test_entropy_of_uniform() -> None:
    assert torch.allclose(token_entropy(torch.zeros(4, 8)), torch.full((4,), math.log(8)))
