"""Create the ``digits-torch`` endpoint: ``code/score.py`` on ECS, on a GPU when the stack's ECS
workers have one. ``SETTINGS`` are its deployment's settings, compute beside run settings; the
same as the command line's

    parallelrun endpoints create digits-torch --code examples/pytorch_ecs/code --entry-script score.py \
        --model digits-torch --compute ecs --cpu 4096 --memory 16384 --gpu 1 \
        --set mini_batch_size=128 --set run_invocation_timeout=3600

Run: ``python examples/pytorch_ecs/deploy.py OUT_DIR/model.pt`` (from make_model.py),
with ``--stack NAME`` for a deployed stack (else the running local stack).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parallelrun.client.api import Client

HERE = Path(__file__).resolve().parent
ENDPOINT = MODEL = "digits-torch"
SETTINGS = {
    # A task on a GPU instance (g4dn.xlarge: 4 vCPU, 16 GiB, 1 NVIDIA T4), as the stack's
    # EcsWorkers=gpu gives with EcsTaskCpu=4096 EcsTaskMemory=15360 EcsTaskGpus=1 or more.
    "compute": "ecs", "cpu": 4096, "memory": 15360, "gpu": 1,
    # Many images per mini-batch (one tensor on the GPU), and up to an hour each: past Lambda's 15 minutes.
    "mini_batch_size": 128, "run_invocation_timeout": 3600,
}


def deploy(client: Client, model_file: Path) -> str:
    """Register the model and create the endpoint; returns the model's reference."""
    model = client.register_model(model_file, MODEL, description="TorchScript digit classifier (make_model.py)")
    client.create_endpoint(ENDPOINT, HERE / "code", "score.py", f"{MODEL}:{model.version}", dict(SETTINGS))
    return f"{MODEL}:{model.version}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_file", type=Path, help="OUT_DIR/model.pt from make_model.py")
    parser.add_argument("--stack", default=None)
    args = parser.parse_args()
    print("created endpoint", ENDPOINT, "with model", deploy(Client.connect(args.stack), args.model_file))
