"""Train the digits classifier (``examples/digits/train.py``) and save it as a folder model named
``model``, the shape Azure ML v2 deployments register and ``code/batch_driver.py`` expects.

Run alone: ``python examples/azure_v2/make_model.py OUT_DIR`` writes OUT_DIR/model/model.pkl;
then ``parallelrun models register OUT_DIR/model --name digits-folder``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from parallelrun.client.demo import load_example


def make_model_folder(out: Path) -> Path:
    """The folder model ``out/model`` (holding ``model.pkl``); returns its path."""
    folder = out / "model"
    load_example("digits", "train").train_model(folder / "model.pkl")
    return folder


if __name__ == "__main__":
    print("wrote", make_model_folder(Path(sys.argv[1] if len(sys.argv) > 1 else "digits-folder-model")))
