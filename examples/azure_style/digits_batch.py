"""An Azure ML ParallelRunStep entry script, written as Azure's samples write them, that runs on
parallelrun unchanged: argparse in init(), Model.get_model_path, EntryScript's logger and
output_dir, run(mini_batch, mini_batch_context) returning a DataFrame.

Deploy with: --set arguments="--model_name digits"
"""

import argparse
import os
import pickle

import numpy as np
import pandas as pd
from azureml.core import Model
from azureml_user.parallel_run import EntryScript
from PIL import Image


def init():
    global model, logger, output_dir
    parser = argparse.ArgumentParser(description="digits batch scoring")
    parser.add_argument("--model_name", dest="model_name", required=True)
    args, _ = parser.parse_known_args()
    entry_script = EntryScript()
    logger = entry_script.logger
    output_dir = entry_script.output_dir
    model_path = Model.get_model_path(args.model_name)
    with open(model_path, "rb") as handle:
        model = pickle.load(handle)
    logger.info("loaded model %s from %s (AZUREML_MODEL_DIR=%s)", args.model_name, model_path,
                os.environ.get("AZUREML_MODEL_DIR"))


def run(mini_batch, mini_batch_context):
    logger.info("scoring mini-batch %s: %d files", mini_batch_context.minibatch_index, len(mini_batch))
    pixels = np.stack([np.asarray(Image.open(path).convert("L"), dtype=np.float64).ravel() / 255.0
                       for path in mini_batch])
    result = pd.DataFrame({"file": [os.path.basename(p) for p in mini_batch], "digit": model.predict(pixels)})
    # The script's own side output, collected into the job's output folder.
    result.to_csv(os.path.join(output_dir, f"minibatch-{mini_batch_context.minibatch_index:04d}.csv"), index=False)
    return result
