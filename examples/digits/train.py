"""Train the digits classifier and write the digits as PNG files: the demo's model and data.

Run alone: ``python examples/digits/train.py OUT_DIR`` writes OUT_DIR/model.pkl,
OUT_DIR/images/0000.png ... and OUT_DIR/labels.csv.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression


def train_model(path: Path) -> float:
    """Fit on scikit-learn's bundled digits (pixels scaled to 0..1); save it; return training accuracy."""
    digits = load_digits()
    x = digits.data / 16.0
    model = LogisticRegression(max_iter=2000)
    model.fit(x, digits.target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(model))
    return float(model.score(x, digits.target))


def write_images(folder: Path, count: int | None = None) -> dict[str, int]:
    """The digits as 8×8 greyscale PNGs named 0000.png, 0001.png, ... (cycling past 1,797);
    returns file name → true label."""
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    count = len(digits.images) if count is None else count
    width = max(4, len(str(count - 1)))
    labels = {}
    for i in range(count):
        k = i % len(digits.images)
        pixels = np.clip(np.rint(digits.images[k] * 255.0 / 16.0), 0, 255).astype(np.uint8)
        name = f"{i:0{width}d}.png"
        Image.fromarray(pixels, mode="L").save(folder / name)
        labels[name] = int(digits.target[k])
    return labels


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "digits-data")
    print("training accuracy", train_model(out / "model.pkl"))
    labels = write_images(out / "images")
    (out / "labels.csv").write_text("".join(f"{name},{label}\n" for name, label in labels.items()))
    print(f"wrote {len(labels)} images to {out / 'images'}")
