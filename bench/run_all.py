"""Every benchmark: the end-to-end table first (what users run), then, with --all, the in-process ones.

Run: python bench/run_all.py [--repeat 3] [--quick] [--no-distributed] [--all]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
IN_PROCESS = ["bench_engine.py", "bench_local.py", "bench_graph.py", "bench_limits.py"]
IN_PROCESS += ["bench_distributed.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000-step end-to-end rows only")
    parser.add_argument("--no-distributed", action="store_true")
    parser.add_argument("--all", action="store_true", help="also the in-process benchmarks")
    args = parser.parse_args()
    e2e = [sys.executable, str(BENCH / "bench_e2e.py"), "--repeat", str(args.repeat)]
    e2e += ["--quick"] * args.quick + ["--no-distributed"] * args.no_distributed
    code = subprocess.run(e2e, check=False).returncode
    for script in IN_PROCESS if args.all else []:
        if args.no_distributed and script == "bench_distributed.py":
            continue
        print(f"\n== {script}", flush=True)
        code = subprocess.run([sys.executable, str(BENCH / script)], check=False).returncode or code
    return code


if __name__ == "__main__":
    sys.exit(main())
