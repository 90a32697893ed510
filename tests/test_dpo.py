"""Unit tests of magicid.dpo beyond the notebook's own checks."""
import math
import numpy as np
import pytest
import torch
from magicid.dpo import (optimal_policy, implicit_reward, kl_objective, log_partition, dpo_loss,
                         diffusion_dpo_margin, diffusion_dpo_loss)

def test_numpy_and_torch_agree():
    rng = np.random.default_rng(1)
    ref, r = rng.dirichlet(np.ones(5), 3), rng.standard_normal((3, 5))
    np.testing.assert_allclose(optimal_policy(torch.tensor(ref), torch.tensor(r), 0.3).numpy(), optimal_policy(ref, r, 0.3), atol=1e-12)
    np.testing.assert_allclose(log_partition(torch.tensor(ref), torch.tensor(r), 0.3).numpy(), log_partition(ref, r, 0.3), atol=1e-12)

def test_optimal_policy_limits():
    ref, r = np.array([.7, .2, .1]), np.array([0., 1., 2.])
    np.testing.assert_allclose(optimal_policy(ref, r, 1e6), ref, atol=1e-5)    # β → ∞: stay at π_ref
    assert optimal_policy(ref, r, 1e-3).argmax() == 2                           # β → 0: best outcome
    assert kl_objective(optimal_policy(ref, r, .5), ref, r, .5) >= kl_objective(ref, ref, r, .5)

def test_implicit_reward_of_reference_is_zero():
    ref = np.array([.5, .5])
    np.testing.assert_array_equal(implicit_reward(ref, ref, 2.0), 0)

@pytest.mark.parametrize('fn', [lambda b: optimal_policy([.5, .5], [0, 1], b), lambda b: dpo_loss(*[torch.zeros(2)]*4, b),
                                lambda b: diffusion_dpo_margin(*[torch.zeros(2)]*4, b)])
@pytest.mark.parametrize('beta', [0, -1.0])
def test_beta_must_be_positive(fn, beta):
    with pytest.raises(ValueError, match=r'beta=.* must be > 0'): fn(beta)

def test_dpo_loss_values():
    z = torch.zeros(4)
    assert math.isclose(dpo_loss(z, z, z, z, 1.0).item(), math.log(2), rel_tol=1e-6)      # no preference yet: log 2
    assert dpo_loss(torch.ones(4), z, z, z, 1.0) < math.log(2)                              # winner up: loss down
    assert dpo_loss(z, torch.ones(4), z, z, 1.0) > math.log(2)                              # loser up: loss up

def test_diffusion_dpo_direction():
    "Lower winner error than the reference (and not the loser) lowers the loss; the reverse raises it."
    ref = torch.full((8,), .5)
    better = diffusion_dpo_loss(ref - .1, ref, ref, ref, 50.)
    worse = diffusion_dpo_loss(ref + .1, ref, ref, ref, 50.)
    assert better < math.log(2) < worse
    m = diffusion_dpo_margin(ref - .1, ref, ref, ref, 50.)
    torch.testing.assert_close(m, torch.full((8,), 2.5))                                     # −½·50·(−0.1)
