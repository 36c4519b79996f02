"""How long `gte` takes to answer help and argument errors, against the start-up it had before (issue #10).

    python benchmarks/cli_startup.py --repeats 5

Each case runs as a fresh process, contenders interleaved, best of --repeats. The baseline,
`python -m gte.cli`, starts the way the `gte` command used to: from a module inside the package, whose
__init__ imports torch and transformers. `gte_cli` is where the command starts now.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CASES = {
    "gte --help": ["--help"],
    "gte embed --help": ["embed", "--help"],
    "gte serve --help": ["serve", "--help"],
    "gte rerank --top-k 0 (an argument error)": ["rerank", "-q", "q", "--top-k", "0"],
}
STARTS = {"before: python -m gte.cli": ["-m", "gte.cli"], "now: gte_cli (the gte command)": ["-m", "gte_cli"]}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[tuple[str, str], float]:
    best: dict[tuple[str, str], float] = {}
    for _ in range(repeats):
        for case, argv in CASES.items():
            for start, module in STARTS.items():  # interleaved: a load change hits both
                took = seconds([sys.executable, *module, *argv])
                best[case, start] = min(took, best.get((case, start), took))
    return best


def table(best: dict[tuple[str, str], float]) -> str:
    before, now = STARTS
    rows = ["| case | before (s) | now (s) | speed-up |", "|---|---:|---:|---:|"]
    for case in CASES:
        rows.append(f"| {case} | {best[case, before]:.2f} | {best[case, now]:.2f} | {best[case, before] / best[case, now]:.1f}x |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each case and start (best kept)")
    print(table(measure(parser.parse_args().repeats)))


if __name__ == "__main__":
    main()
