"""`make demo`: every pipeline stage on the embedded sample, one `make` target after another.

Each stage is the same target a user runs by hand (`make metadata`, `make curate`, ...), so the
demo exercises the real commands. A stage whose target does not exist yet is reported as not
built; a failing stage stops the demo with its name and exit code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (make target, extra make variables for the demo, what it leaves behind)
STAGES = [
    (
        "metadata",
        {"METADATA_ARGS": "--languages an,ar,bg,da,el,en,et,id,ja,ko,tr,uk,vi"},
        ["metadata", "metadata_stats"],
    ),
    ("alt-text", {}, ["alt_text", "drops"]),
    ("curate", {}, ["matches", "entry_counts", "thresholds", "curated", "run.json"]),
    (
        "shards",
        {
            "SHARDS_ARGS": "--serve-local skimage --serve-variants --processes 2 --threads 16 "
            "--timeout 5 --samples-per-shard 500"
        },
        ["shards"],
    ),
    ("filter", {}, ["filtered/shards", "filtered/image_filter"]),
    ("train", {"TRAIN_DATA": "{out}/filtered/shards"}, ["train"]),
    ("report", {}, ["report.html"]),
]


def has_target(target: str) -> bool:
    result = subprocess.run(["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True)
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--only", help="comma-separated stages to run (default: all)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    out = args.output
    started = time.perf_counter()
    ran, missing = [], []
    for target, variables, outputs in STAGES:
        if only and target not in only:
            continue
        if not has_target(target):
            print(f"== {target}: not built yet (no `make {target}` target)", flush=True)
            missing.append(target)
            continue
        print(f"== {target}", flush=True)
        stage_started = time.perf_counter()
        settings = [f"{k}={v.format(out=out)}" for k, v in variables.items()]
        command = ["make", "-s", target, f"OUT={out}", *settings]
        result = subprocess.run(command, cwd=ROOT)
        if result.returncode:
            print(
                f"== {target} failed (exit {result.returncode}); later stages need its output",
                file=sys.stderr,
            )
            return result.returncode
        print(
            f"== {target} done in {time.perf_counter() - stage_started:.0f}s: "
            + ", ".join(str(out / o) for o in outputs),
            flush=True,
        )
        ran.append(target)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s; outputs under {out}/")
    for target, _, outputs in STAGES:
        if target in ran:
            print(f"  {target:9s} " + "  ".join(str(out / o) for o in outputs))
    if missing:
        print("not built yet: " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
