#!/usr/bin/env python3
"""Prints one `hetensor bench` argument line per config of a peer config file that has a
"hetensor" entry (configs-precision.json), for the ring sizes asked; run_all.sh runs each.

    python3 scripts/peers/hetensor_runs.py CONFIG LOG_N      # e.g. ... configs-precision.json 13,14
    -> ckks-13 --log-n 13 --scheme ckks --precision --scale-bits 40 --depth 2

Prints nothing when no config has a "hetensor" entry (run_all.sh then runs hetensor once
with HETENSOR_ARGS, as before). Stdlib only.
"""
import json
import sys


def main():
    config, log_n = sys.argv[1], sys.argv[2]
    wanted = {int(x) for x in log_n.split(",") if x.strip()}
    with open(config) as f:
        configs = json.load(f)["configs"]
    for c in configs:
        h = c.get("hetensor")
        if h is None or c["log_n"] not in wanted:
            continue
        print(f"{c['id']} --log-n {c['log_n']} --scheme {c['scheme']} --precision "
              f"--scale-bits {h['scale_bits']} --depth {h['depth']}")


if __name__ == "__main__":
    main()
