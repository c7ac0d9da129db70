"""``loss/policy`` is the policy term the step optimises: with the truncated importance weights of a
sampler that is not the trainer (``--rollout-is-cap``), as the loss itself has them (verl's pg_loss too).
Before, it left them out and could differ from ``loss/step`` even in sign."""

from __future__ import annotations

import torch

from openrft.algo.losses import policy_loss, resolve_loss


def test_loss_policy_carries_the_importance_weights_the_loss_has():
    torch.manual_seed(0)
    B, T = 3, 5
    logprobs_BT = -torch.rand(B, T)
    old_BT = logprobs_BT + 0.05 * torch.randn(B, T)
    adv_B = torch.tensor([1.0, -0.5, 0.25])
    mask_BT = torch.ones(B, T, dtype=torch.bool)
    weights_BT = torch.rand(B, T) * 2.0
    for method in ("dapo", "gspo-token"):
        _, spec = resolve_loss(method)
        plain, unweighted = policy_loss(spec, logprobs_BT, old_BT, adv_B, mask_BT)
        loss, weighted = policy_loss(spec, logprobs_BT, old_BT, adv_B, mask_BT, weights_BT=weights_BT)
        assert abs(weighted["loss/policy"] - float(loss)) < 1e-6  # no KL term: the policy term is the loss
        assert abs(unweighted["loss/policy"] - float(plain)) < 1e-6
        assert abs(weighted["loss/policy"] - unweighted["loss/policy"]) > 1e-4  # the weights count
