"""`python -m bench [--quick] [--targets ...]`: run the side-by-side benchmark (as root) and report it.

Usually started through `bash bench/run.sh`, which installs what the harness needs first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.metrics import TARGET_ORDER, Results
from bench.report import write_docs
from bench.scenarios import Sizes

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="small sizes (16 MiB files, 200 small files), 1 repetition")
    p.add_argument("--targets", default=",".join(TARGET_ORDER),
                   help=f"comma-separated subset of {','.join(TARGET_ORDER)} (default: all)")
    p.add_argument("--suites", default="write,small,reads,list,dedup",
                   help="comma-separated subset of write,small,reads,list,dedup; "
                        "a partial run writes no docs")
    p.add_argument("--reps", type=int, help="repetitions per scenario (default: 3, quick: 1)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_WORK", "/var/tmp/mountd-bench")),
                   help="work directory: server data, mounts, caches, logs (default /var/tmp/mountd-bench)")
    p.add_argument("--out", type=Path, help="results JSON (default WORK/results.json)")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                   help="write docs/benchmarks.md and docs/benchmarks.png (default: on for a full run)")
    p.add_argument("--mountd-commit", metavar="REV",
                   help="benchmark mountd as of this git commit (exported under WORK) "
                        "instead of the working tree")
    p.add_argument("--report", type=Path, metavar="RESULTS",
                   help="only regenerate the docs from a results file")
    a = p.parse_args(argv)

    md, png = DOCS / "benchmarks.md", DOCS / "benchmarks.png"
    if a.report:
        write_docs(Results.load(a.report), md, png)
        print(f"bench: wrote {md} and {png}")
        return 0
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    bad = [n for n in names if n not in TARGET_ORDER]
    if bad:
        p.error(f"unknown target(s) {', '.join(bad)}; choose from {', '.join(TARGET_ORDER)}")
    if os.geteuid() != 0:
        print("bench: error: run as root (it mounts FUSE file systems and drops the page cache)",
              file=sys.stderr)
        return 2
    if not os.path.exists("/dev/fuse"):
        print("bench: error: /dev/fuse is missing (load the fuse module or run with --device /dev/fuse)",
              file=sys.stderr)
        return 2
    sizes = Sizes.quick() if a.quick else Sizes.full()
    if a.reps:
        sizes = Sizes(**{**sizes.__dict__, "reps": a.reps})
    out = a.out or a.work / "results.json"
    from bench.runner import SUITES

    suites = tuple(x.strip() for x in a.suites.split(",") if x.strip())
    if bad := [x for x in suites if x not in SUITES]:
        p.error(f"unknown suite(s) {', '.join(bad)}; choose from {', '.join(SUITES)}")

    from bench.runner import run

    res = run(a.work, sizes, names, out, "quick" if a.quick else "full",
              log=lambda s: print(s, file=sys.stderr, flush=True), mountd_commit=a.mountd_commit,
              suites=suites)
    if a.docs if a.docs is not None else not a.quick and set(suites) == set(SUITES):
        write_docs(res, md, png)
        print(f"bench: wrote {md} and {png}", file=sys.stderr)
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
