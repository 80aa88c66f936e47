"""Twin networks for the guided rule: the same weights, ReLUs as modules or as functions.

``ModuleNet`` uses ``nn.ReLU`` modules (one in place), which Captum's
``GuidedBackprop`` hooks; ``FunctionalNet`` has the same weights (load the state dict)
with each ReLU in another functional form, which module hooks miss. A residual sum
feeds the third ReLU, so the guided rule has a branch to get right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ThreeConvNet(nn.Module):
    """Three 3x3 convolutions (6 channels) and a linear head to 4 classes, seeded.

    ``relus`` holds the four activation modules a subclass's ``forward`` applies (ReLUs
    here; other activations where a test needs them).
    """

    def __init__(self, activations: list[nn.Module], seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.conv3, self.fc = nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 4)
        self.relus = nn.ModuleList(activations)


class ModuleNet(ThreeConvNet):
    def __init__(self) -> None:
        super().__init__([nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU(), nn.ReLU()], seed=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relus[0](self.conv1(x))
        h = self.relus[1](self.conv2(h))
        h = self.relus[2](self.conv3(h) + h)
        return self.fc(self.relus[3](h.mean((2, 3))))


class FunctionalNet(ModuleNet):
    """The same weights, each ReLU in another functional form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = torch.relu_(self.conv2(h))
        h = (self.conv3(h) + h).relu()
        return self.fc(F.relu(h.mean((2, 3)), inplace=True))


def twin_nets() -> tuple[ModuleNet, FunctionalNet]:
    """A ``ModuleNet`` and a ``FunctionalNet`` holding the same weights."""
    modules, functional = ModuleNet(), FunctionalNet()
    functional.load_state_dict(modules.state_dict())
    return modules, functional
