"""Run every benchmark in this directory one after the other and print their figures.

    .venv/bin/python bench/run_all.py            # full runs
    .venv/bin/python bench/run_all.py --quick    # small runs, a minute or two in all

Benchmarks are not part of `make test`: figures on a shared 2-core machine are noisy, so each benchmark also
measures its own floor (raw NATS request/reply rate, or the equivalent) in the same run and reports ratios.
"""

import os
import pathlib
import platform
import subprocess
import sys


def main(argv):
    here = pathlib.Path(__file__).resolve().parent
    print(f"machine: {platform.machine()}, {os.cpu_count() or 0} cores, Python {platform.python_version()}")
    failed = []
    for bench in sorted(here.glob("bench_*.py")):
        print(f"\n=== {bench.name} {' '.join(argv)}", flush=True)
        if subprocess.run([sys.executable, str(bench), *argv], check=False).returncode != 0:
            failed.append(bench.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
