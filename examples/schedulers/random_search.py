#!/usr/bin/env python3
"""A small scheduler program for `runaway sched`: random search over two parameters.

    runaway sched local train.sh "python3 examples/schedulers/random_search.py -n 20"

It hands out N points `--x=X --y=Y` drawn uniformly in the given ranges, records what comes
back (exit code and features; the first feature is the objective, minimized), answers
SEARCH_FINISHED_RESPONSE once N points are out, and at SHUTDOWN_REQUEST prints the best point
to stderr (which runaway shows, prefixed) and exits. After `runaway sched --resume` it is fed
the recorded history first: points it did not hand out itself count towards N. With
--results FILE every recorded output is also appended there as one JSON line.

The protocol, one JSON object per line: requests arrive on stdin, each gets exactly one
response on stdout. Diagnostics go to stderr, never to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys


def answer(kind: str, **body: object) -> None:
    sys.stdout.write(json.dumps({kind: body}) + "\n")
    sys.stdout.flush()


def interval(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    return float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--points", type=int, default=10, help="points to try")
    parser.add_argument("--x", type=interval, default=(-5.0, 5.0), metavar="LOW:HIGH")
    parser.add_argument("--y", type=interval, default=(-5.0, 5.0), metavar="LOW:HIGH")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--results", help="append every recorded output here (JSON lines)")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    handed, best = 0, None  # best: (objective, parameters)
    mine: set[str] = set()  # points handed out by this process

    for line in sys.stdin:
        if not line.strip():
            continue
        ((kind, body),) = json.loads(line).items()
        if kind == "GET_PARAMETERS_REQUEST":
            if handed >= options.points:
                answer("SEARCH_FINISHED_RESPONSE")
                continue
            handed += 1
            mine.add(body["uuid"])
            x, y = rng.uniform(*options.x), rng.uniform(*options.y)
            answer("GET_PARAMETERS_RESPONSE", parameters=f"--x={x:.6g} --y={y:.6g}")
        elif kind == "RECORD_OUTPUT_REQUEST":
            if body["uuid"] not in mine:  # handed out before a resume: it counts too
                mine.add(body["uuid"])
                handed += 1
            values = body.get("feature_values")
            if values is None:  # an original runaway sends only the `features` string
                values = [float(v) for v in body.get("features", "").split()]
            ok = body.get("ecode") == 0 and values and values[0] is not None
            if ok and (best is None or values[0] < best[0]):
                best = (values[0], body["parameters"])
            if options.results:
                with open(options.results, "a") as out:
                    out.write(json.dumps(body) + "\n")
            answer("RECORD_OUTPUT_RESPONSE")
        elif kind == "SHUTDOWN_REQUEST":
            if best is None:
                print("random search: no successful point", file=sys.stderr)
            else:
                print(f"random search: best {best[0]:g} at {best[1]}", file=sys.stderr)
            answer("SHUTDOWN_RESPONSE")
            return 0
        else:
            answer("ERROR_RESPONSE", message=f"unknown request {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
