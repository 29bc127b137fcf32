#!/usr/bin/env python3
"""Writes a `{question, answer}` JSONL file for `selfroute-train --task jsonl:PATH` from one of
reasoning-gym's generators (default: the GSM-style `gsm_symbolic`), seeded and reproducible.

    python3 -m venv .venv && .venv/bin/pip install reasoning-gym==0.1.19
    .venv/bin/python trainer/scripts/make_jsonl.py --out runs/gsm.jsonl --size 2000 --seed 0

The data is generated, not committed: the file is a few hundred KB per thousand problems.
"""

import argparse
import json

import reasoning_gym


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--dataset", default="gsm_symbolic", help="reasoning-gym dataset name")
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = reasoning_gym.create_dataset(args.dataset, size=args.size, seed=args.seed)
    with open(args.out, "w", encoding="utf-8") as out:
        for item in data:
            out.write(json.dumps({"question": item["question"], "answer": item["answer"]}) + "\n")
    print(f"wrote {args.size} problems from {args.dataset} (seed {args.seed}) to {args.out}")


if __name__ == "__main__":
    main()
