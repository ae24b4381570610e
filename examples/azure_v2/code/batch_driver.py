"""A batch driver in the style of Azure ML v2 batch deployments, for the digits model registered
as a folder named ``model`` (``examples/azure_v2/make_model.py``). It runs on parallelrun
unchanged: Azure sets AZUREML_MODEL_DIR to the model version's folder, in which the registered
folder sits under its own name, and run() returns a DataFrame (one row per file).
"""

import glob
import os
import pickle

import numpy as np
import pandas as pd
from PIL import Image


def init():
    global model
    # AZUREML_MODEL_DIR is the path to the model's version folder; the registered folder is inside it.
    model_folder = glob.glob(os.environ["AZUREML_MODEL_DIR"] + "/*/")[0]
    with open(os.path.join(model_folder, "model.pkl"), "rb") as handle:
        model = pickle.load(handle)
    print(f"loaded the model from {model_folder}")


def run(mini_batch):
    print(f"run method start: {__file__}, run({len(mini_batch)} files)")
    pixels = np.stack([np.asarray(Image.open(path).convert("L"), dtype=np.float64).ravel() / 255.0
                       for path in mini_batch])
    return pd.DataFrame({"file": [os.path.basename(path) for path in mini_batch],
                         "prediction": model.predict(pixels)})
