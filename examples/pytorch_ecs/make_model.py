"""Train a small convolutional digit classifier with PyTorch and save it as TorchScript, the
model ``code/score.py`` scores: OUT_DIR/model.pt, registered as ``digits-torch``. Needs torch (``pip install torch``: not a parallelrun dependency); trains on
scikit-learn's bundled digits, offline, in seconds on a CPU.

Run: ``python examples/pytorch_ecs/make_model.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def make_model(out: Path, epochs: int = 30) -> float:
    """Train, save ``out/model.pt`` (TorchScript); return the training accuracy."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # pixels 0..1, as score.py reads them
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(out / "model.pt"))
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "digits-torch-model")
    print("training accuracy", make_model(target))
    print("wrote", target / "model.pt")
