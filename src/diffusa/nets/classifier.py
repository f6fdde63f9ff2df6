"""A small CNN digit classifier: the feature network for Frechet distance / KID on digit data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    """Conv(32)x2 - pool - Conv(64)x2 - pool - FC(128) - FC(10) on 28x28 digits in [-1, 1].

    `features(x)` is the 128-d penultimate layer used for Frechet distance and KID.
    """

    feature_dim = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, 128)."""
        if x.shape[-1] != 28 or x.shape[-2] != 28:
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
