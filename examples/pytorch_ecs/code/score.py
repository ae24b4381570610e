"""A PyTorch image classifier in ParallelRunStep's shape, for a deployment with compute: ecs.

``init()`` loads the TorchScript model (``make_model.py``) once per worker process onto the GPU
when ``torch.cuda.is_available()`` (a task of the stack's gpu ECS workers; with several GPUs,
`parallelrun worker --processes N` gives each process its own through CUDA_VISIBLE_DEVICES), else
the CPU; ``run(mini_batch)`` scores the mini-batch's PNG files as one tensor and returns
``<file name>: <class> <probability>`` per file. torch comes from the worker image (the PyTorch
CUDA base, docker/Dockerfile), not from a requirements.txt.
"""

import os

import numpy as np
import torch
from PIL import Image

import parallelrun

model = None
device = None
SIZE = 8  # the classifier's input: 8x8 greyscale, as examples/digits/train.py writes the digits


def init():
    global model, device
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch.jit.load(parallelrun.get_model_path("digits-torch"), map_location=device)
    model.eval()


def run(mini_batch):
    pixels = np.stack([np.asarray(Image.open(path).convert("L").resize((SIZE, SIZE)), dtype=np.float32) / 255.0
                       for path in mini_batch])
    batch = torch.from_numpy(pixels).unsqueeze(1).to(device)  # N x 1 x 8 x 8
    with torch.inference_mode():
        probabilities = torch.softmax(model(batch), dim=1)
    best, classes = probabilities.max(dim=1)
    return [f"{os.path.basename(path)}: {int(c)} {float(p):.3f}"
            for path, c, p in zip(mini_batch, classes.cpu(), best.cpu())]
