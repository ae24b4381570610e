#!/usr/bin/env python
"""Chaos: jobs whose worker processes are SIGKILLed at random points while DynamoDB cancels
transactions with conflicts and every request waits as on AWS; prints lost and duplicated rows
as JSON (the goal is 0 and 0 however many runs, and no attempt spent but by a kill).

    .venv/bin/python scripts/chaos.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import sys

from parallelrun.client import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--files", type=int, default=24, help="inputs per run (2 per mini-batch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chance", type=float, default=0.05, help="probability of dying at each of the 4 points")
    parser.add_argument("--conflict-every", type=int, default=2,
                        help="cancel one DynamoDB transaction in N with a TransactionConflict (0: none)")
    parser.add_argument("--latency", choices=["aws", "none"], default="aws",
                        help="every request waits as from Lambda on AWS (aws), or not at all")
    args = parser.parse_args()
    result = chaos.run(args.runs, args.files, args.workers, args.chance, conflict_every=args.conflict_every,
                       latency=None if args.latency == "none" else args.latency)
    print(json.dumps(result, indent=2))
    exact = result["lost"] == result["duplicated"] == result["out_of_order"] == 0
    return 0 if exact and result["retries"] <= result["worker_kills"] else 1


if __name__ == "__main__":
    sys.exit(main())
