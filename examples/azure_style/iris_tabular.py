"""An Azure ML ParallelRunStep entry script for a TabularDataset, written as Azure's samples
write them, that runs on parallelrun unchanged: run() gets a pandas DataFrame and returns one.

Deploy with: --set arguments="--model_name iris" --set input_type=tabular
"""

import argparse
import pickle

from azureml.core.model import Model
from azureml_user.parallel_run import EntryScript


def init():
    global model, logger
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name", dest="model_name", required=True)
    args, _ = parser.parse_known_args()
    logger = EntryScript().logger
    with open(Model.get_model_path(args.model_name), "rb") as handle:
        model = pickle.load(handle)
    logger.info("model %s loaded", args.model_name)


def run(mini_batch):
    logger.info("scoring %d rows", len(mini_batch))
    features = mini_batch[["sepal_length", "sepal_width", "petal_length", "petal_width"]].to_numpy()
    result = mini_batch[["id"]].copy()
    result["species"] = model.predict(features)
    return result
