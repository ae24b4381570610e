"""An entry script in the style of Azure's many-models solution accelerator: one model per
store, found by the partition's name. It runs on parallelrun unchanged with
``partition_keys=store`` on a TabularDataset, deployed with the model ``sales-{store}`` (so each
mini-batch's partition brings its own model; a store with no model fails only its rows).
"""

import pickle

from azureml.core.model import Model
from azureml_user.parallel_run import EntryScript


def init():
    global logger, models
    logger = EntryScript().logger
    models = {}  # a store's model stays loaded for its later mini-batches


def run(input_data, mini_batch_context):
    store = mini_batch_context.partition_key_value["store"]
    name = f"sales-{store}"
    if name not in models:
        with open(Model.get_model_path(name), "rb") as handle:
            models[name] = pickle.load(handle)
        logger.info("loaded model %s", name)
    result = input_data[["id", "store"]].copy()
    result["forecast"] = models[name].predict(input_data[["week", "promo"]].to_numpy()).round(3)
    return result
