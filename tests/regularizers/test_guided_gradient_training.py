"""GuidedGradientRegularizer in training: DistributedDataParallel and the effect it is for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from captum_regularized.models import SimpleCNN
from captum_regularized.regularizers import GuidedGradientRegularizer
from tests.distributed import run_distributed

STEPS = 2


def _model() -> SimpleCNN:
    # No BatchNorm: per-rank batch statistics would differ from the concatenated batch's.
    return SimpleCNN(4, width=4, batch_norm=False)


def _train(model: torch.nn.Module, reg_model: torch.nn.Module, x, labels) -> None:
    reg = GuidedGradientRegularizer(reg_model, weight=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(STEPS):
        optimizer.zero_grad()
        logits, penalty = reg(x, labels)
        (F.cross_entropy(logits, labels) + penalty).backward()
        optimizer.step()


def _ddp_rank(
    rank: int, world_size: int, state: dict, x: torch.Tensor, labels: torch.Tensor
) -> dict:
    model = _model()
    model.load_state_dict(state)
    ddp = DistributedDataParallel(model)
    rows = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    _train(ddp, ddp, x[rows], labels[rows])
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.slow
def test_ddp_keeps_ranks_identical_and_equal_to_one_process_on_the_whole_batch():
    torch.manual_seed(0)
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, labels = torch.rand(8, 3, 12, 12), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    ranks = run_distributed(_ddp_rank, state, x, labels, world_size=2)
    _train(model, model, x, labels)
    moved = False
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-6, msg=name)
        moved = moved or not torch.equal(value, state[name])
    assert moved
