"""Export the curated table to WebDataset shards with img2dataset.

    python jobs/export_shards.py --curated out/run1/curated --output out/shards
    spark-submit jobs/export_shards.py --distributor pyspark \\
        --curated s3://b/run1/curated --output s3://b/shards

Writes OUT/_url_list/ (the flat Parquet img2dataset reads), OUT/NNNNN.{tar,parquet,_stats.json},
OUT/sizes.json and OUT/manifest.json. Rerunning the same command finishes only missing shards.
"""

from __future__ import annotations

import argparse
import os
import sys

from curation.core.jobs import run_job
from curation.core.uris import absolute
from curation.shards import export as shards


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = shards.ExportConfig(curated="", output="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--curated", required=True, help="URI of the curated/ table (Parquet or Delta)")
    p.add_argument(
        "--pool",
        choices=["curated", "matched"],
        default="curated",
        help="curated: the run's balanced sample (offline curation); matched: every image with "
        "a matched text, from the run's matches/, its KEY.json carrying all candidates "
        "[{text, lang, entry_ids}] for trainer/train.py --online-curation",
    )
    p.add_argument("--output", required=True, help="URI of the shard folder to write")
    p.add_argument(
        "--languages",
        help="comma-separated wiki codes: export only these languages' pairs (default: all). "
        "The download list is built in this process, ~0.9 KB of memory per pair: past "
        "~30M pairs per 32 GiB, export language groups into separate --output folders",
    )
    p.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="resize target in pixels"
    )
    p.add_argument(
        "--resize-mode",
        default=defaults.resize_mode,
        choices=["keep_ratio", "keep_ratio_largest", "center_crop", "border", "no"],
        help="img2dataset resize mode (default keep_ratio: shorter side = size, no crop)",
    )
    p.add_argument(
        "--samples-per-shard", type=int, default=defaults.samples_per_shard, help="rows per shard"
    )
    p.add_argument(
        "--distributor",
        choices=["auto", "multiprocessing", "pyspark"],
        default="auto",
        help="auto: pyspark under spark-submit, multiprocessing otherwise",
    )
    p.add_argument(
        "--processes", type=int, default=defaults.processes, help="worker processes (local)"
    )
    p.add_argument(
        "--threads", type=int, default=defaults.threads, help="download threads per process"
    )
    p.add_argument("--timeout", type=int, default=defaults.timeout, help="seconds per HTTP request")
    p.add_argument("--retries", type=int, default=defaults.retries, help="retries per URL")
    p.add_argument(
        "--user-agent-token",
        default=None,
        help="token added to the User-Agent (also the agent that X-Robots-Tag rules name)",
    )
    p.add_argument(
        "--disallowed-header-directives",
        default=",".join(defaults.disallowed_header_directives),
        help="X-Robots-Tag directives that forbid use of an image (comma-separated)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=defaults.max_image_pixels,
        help="refuse images larger than this before decoding (decompression bombs)",
    )
    p.add_argument(
        "--extract-exif", action="store_true", help="keep EXIF in the sample json (off: privacy)"
    )
    p.add_argument(
        "--allow-local",
        action="store_true",
        help="also fetch loopback/private addresses (tests and the demo only)",
    )
    p.add_argument(
        "--resolve-hosts",
        action="store_true",
        help="also resolve every host once and drop those that resolve to a non-public address "
        "or not at all (names pointing inside the network; recommended inside a cloud VPC)",
    )
    p.add_argument(
        "--serve-local",
        metavar="DIR",
        default=None,
        help="demo: serve DIR's images on 127.0.0.1 and map every URL onto one of them "
        "(implies --allow-local); 'skimage' serves scikit-image's bundled CC0 photographs",
    )
    p.add_argument(
        "--serve-variants",
        action="store_true",
        help="with --serve-local: give each URL its own variant of one of the photographs (a "
        "crop, turned, its brightness modulated), so that the image filter's de-duplication "
        "does not collapse the demo to a dozen pictures",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete OUTPUT first instead of resuming"
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="export a curated table that has no _SUCCESS marker",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> shards.ExportConfig:
    distributor = args.distributor
    if distributor == "auto":
        under_spark = "PYSPARK_GATEWAY_PORT" in os.environ or "SPARK_SUBMIT_OPTS" in os.environ
        distributor = "pyspark" if under_spark else "multiprocessing"
    return shards.ExportConfig(
        curated=args.curated,
        output=args.output,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        samples_per_shard=args.samples_per_shard,
        processes=args.processes,
        threads=args.threads,
        timeout=args.timeout,
        retries=args.retries,
        distributor=distributor,
        pool=args.pool,
        user_agent_token=args.user_agent_token,
        disallowed_header_directives=tuple(
            d.strip() for d in args.disallowed_header_directives.split(",") if d.strip()
        ),
        allow_local=args.allow_local or args.serve_local is not None,
        serve_local=args.serve_local,
        serve_variants=args.serve_variants,
        resolve_hosts=args.resolve_hosts,
        max_image_pixels=args.max_image_pixels,
        extract_exif=args.extract_exif,
        overwrite=args.overwrite,
        require_success=not args.allow_incomplete,
        languages=tuple(x.strip() for x in args.languages.split(",") if x.strip())
        if args.languages
        else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.curated, args.output = absolute(args.curated), absolute(args.output)

    def body() -> int:
        shards.run(config_from_args(args))
        return 0

    return run_job("export_shards", body)


if __name__ == "__main__":
    sys.exit(main())
