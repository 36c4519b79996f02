"""How long `gte` takes to start (issues #10, #24): help and argument errors; `import gte` against the
`import torch, transformers` it cannot avoid; `gte embed "hello"` from a fresh process; `gte serve` until
/health answers.

    python benchmarks/cli_startup.py --repeats 5
    python benchmarks/cli_startup.py --importtime        # the slowest imports under `import gte`

Each case runs as a fresh process, the cases interleaved (a change of load hits them all), best of --repeats.
The targets are issue #24's: `import gte` at most 0.5 s above `import torch, transformers`, `gte embed "hello"`
under 3 s and `gte serve` ready under 4 s, with the default (embedded) model unless --model names another.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

GTE = ["-m", "gte_cli"]
CASES = {  # case -> the python arguments that run it
    "gte --help": [*GTE, "--help"],
    "gte embed --help": [*GTE, "embed", "--help"],
    "gte serve --help": [*GTE, "serve", "--help"],
    "gte rerank --top-k 0 (an argument error)": [*GTE, "rerank", "-q", "q", "--top-k", "0"],
    "import torch, transformers": ["-c", "import torch, transformers"],
    "import gte": ["-c", "import gte"],
}
EMBED = 'gte embed "hello"'  # with --model when given, as SERVE
SERVE = "gte serve, until /health answers"
BASELINE = "import torch, transformers"
IMPORT_ALLOWANCE_S = 0.5  # `import gte` may cost this much more than BASELINE
TARGETS_S = {EMBED: 3.0, SERVE: 4.0}


def seconds(arguments: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def seconds_to_ready(model_arguments: list[str], timeout: float = 300) -> float:
    """From starting `gte serve` to its first 200 from /health; the server is stopped afterwards."""
    port = _free_port()
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, *GTE, "serve", *model_arguments, "--port", str(port), "--log-level",
                               "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while time.perf_counter() - start < timeout:
            if server.poll() is not None:
                raise RuntimeError(f"gte serve exited with {server.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.02)
        raise TimeoutError(f"gte serve was not ready within {timeout:.0f} s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(repeats: int, model: str | None = None, serve: bool = True) -> dict[str, float]:
    """Best seconds of each case (and of `gte serve`'s start, when `serve`)."""
    model_arguments = ["--model", model] if model else []
    runs = {**CASES, EMBED: [*GTE, "embed", *model_arguments, "hello"]}
    best: dict[str, float] = {}
    for _ in range(repeats):
        for case, arguments in runs.items():
            took = seconds(arguments)
            best[case] = min(took, best.get(case, took))
        if serve:
            took = seconds_to_ready(model_arguments)
            best[SERVE] = min(took, best.get(SERVE, took))
    return best


def table(best: dict[str, float]) -> str:
    targets = dict(TARGETS_S)
    if BASELINE in best:
        targets["import gte"] = best[BASELINE] + IMPORT_ALLOWANCE_S
    rows = ["| case | seconds | target | met |", "|---|---:|---:|---|"]
    for case, took in best.items():
        target = targets.get(case)
        met = "" if target is None else "yes" if took <= target else "no"
        rows.append(f"| {case} | {took:.2f} | {'' if target is None else f'{target:.2f}'} | {met} |")
    return "\n".join(rows)


def slowest_imports(count: int = 25) -> str:
    """The `count` imports under `import gte` with the most cumulative time (python -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gte"], capture_output=True, text=True,
                          env=os.environ | {"PYTHONWARNINGS": "ignore"})  # fmt: skip
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((int(cumulative), name.strip()))
    rows.sort(reverse=True)
    return "\n".join(["| cumulative (s) | module |", "|---:|---|"] + [f"| {us / 1e6:.3f} | `{name}` |" for us, name in rows[:count]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each case (best kept)")
    parser.add_argument("--model", help="the model of `gte embed` and `gte serve` (default: gte's default)")
    parser.add_argument("--importtime", action="store_true", help="only list the slowest imports under `import gte`")
    args = parser.parse_args(argv)
    print(slowest_imports() if args.importtime else table(measure(args.repeats, args.model)))


if __name__ == "__main__":
    main()
