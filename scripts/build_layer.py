"""Build a deployment's requirements as a Lambda layer, as `parallelrun deployments create` does
on a deployed stack, and say whether it fits Lambda's limits on its own.

    python scripts/build_layer.py path/to/requirements.txt --out layer.zip

pip runs as `pip install --target python/ --platform manylinux2014_x86_64 --python-version 3.11
--implementation cp --only-binary=:all: ...` (wheels only: a package with no wheel for Lambda's
platform is refused, naming it). What `deployments create` checks besides, the stack's worker's
own code and layers sharing the 250 MB, needs the stack; this prints the layer's share.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parallelrun.aws.workers import unzipped_size
from parallelrun.core.environments import LambdaSizes, check, parse_requirements_file
from parallelrun.core.errors import ParallelRunError
from parallelrun.scoring.environments import build_layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", type=Path, help="a requirements.txt (plain requirement lines)")
    parser.add_argument("--out", type=Path, default=Path("layer.zip"), help="the layer zip to write")
    args = parser.parse_args(argv)
    try:
        requirements = check(parse_requirements_file(args.requirements.read_text()))
        layer = build_layer(requirements, args.out).read_bytes()
    except ParallelRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = LambdaSizes(len(layer), unzipped_size(layer), shared_unzipped=0, shared_layers=0)
    print(f"{args.out}: {len(layer) / 2**20:.1f} MB zipped, {sizes.layer_unzipped / 2**20:.1f} MB unzipped")
    for problem in sizes.problems():
        print(f"too large: {problem}", file=sys.stderr)
    return 1 if sizes.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
