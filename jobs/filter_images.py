"""Filter WebDataset shards before training: de-duplicate (exact and perceptual-hash
near-copies, across the whole set), remove evaluation images, blocklisted hashes and URLs and
NSFW images, blur faces.

    python jobs/filter_images.py --shards out/shards --output out/filtered \\
        [--eval-sets DIR ...] [--block-hashes FILE] [--block-urls FILE]
    spark-submit jobs/filter_images.py --shards s3://b/shards --output s3://b/filtered

Writes OUT/shards/ (NNNNN.tar + NNNNN.parquet in the input's layout, sizes.json, manifest.json
with drop counts by reason and the evaluation images found) and OUT/image_filter/ (Parquet, a
row per input sample: uid, key, sha256, md5, pdq, phash, nsfw_score, face_boxes, decision, reason,
duplicate_of). Rerunning the same command analyzes and writes only what is missing.
Rules and measurements: docs/filtering.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from curation.core.jobs import run_job  # noqa: E402
from curation.core.uris import absolute  # noqa: E402
from curation.image_filter import hashes, nsfw  # noqa: E402
from curation.image_filter.job import FilterConfig, run  # noqa: E402


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: list[str] | None) -> FilterConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--shards", required=True, help="URI of the input shard folder (NNNNN.tar)")
    p.add_argument("--output", required=True, help="URI of the output folder")
    p.add_argument(
        "--eval-sets",
        nargs="+",
        default=[],
        metavar="DIR",
        help="evaluation sets in CLIP_benchmark's layout (DIR/test/N.tar, as "
        "`python -m trainer.datasets` writes them): training images within "
        "--near-duplicate-bits of any of their images are removed and listed in the manifest",
    )
    p.add_argument(
        "--block-hashes",
        metavar="FILE",
        help="hashes to drop, one a line: MD5 (32 hex), SHA-256 or PDQ (64 hex; matched both "
        f"ways, PDQ within {hashes.BLOCKLIST_PDQ_BITS} bits), or prefixed md5:/sha256:/pdq:",
    )
    p.add_argument(
        "--block-urls",
        metavar="FILE",
        help="URLs (exact, after normalisation) or domains (with their subdomains) to drop, "
        "one a line",
    )
    p.add_argument(
        "--nsfw-threshold",
        type=float,
        default=nsfw.DEFAULT_THRESHOLD,
        help="drop images whose NSFW score (NudeNet's exposed-body-part detector, 0-1) is at "
        "or above this",
    )
    p.add_argument(
        "--no-nsfw", action="store_true", help="do not run the NSFW detector (no score, no drop)"
    )
    p.add_argument(
        "--no-blur-faces",
        action="store_true",
        help="do not detect and blur faces (default: dlib's HOG detector, DataComp's blur)",
    )
    p.add_argument(
        "--near-duplicate-bits",
        type=int,
        default=hashes.DEFAULT_NEAR_DUPLICATE_BITS,
        help="pHash Hamming distance (of 256 bits) up to which two images are near-copies, for "
        "de-duplication and --eval-sets (measured: edits of a photograph <= 70, distinct "
        "photographs >= 102)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete OUTPUT's results first instead of resuming"
    )
    args = p.parse_args(argv)
    return FilterConfig(
        shards=absolute(args.shards),
        output=absolute(args.output),
        eval_sets=tuple(absolute(d) for d in args.eval_sets),
        block_hashes=absolute(args.block_hashes) if args.block_hashes else None,
        block_urls=absolute(args.block_urls) if args.block_urls else None,
        nsfw=not args.no_nsfw,
        nsfw_threshold=args.nsfw_threshold,
        blur_faces=not args.no_blur_faces,
        near_duplicate_bits=args.near_duplicate_bits,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    return run_job("filter_images", lambda: run(parse_args(argv)) and 0)


if __name__ == "__main__":
    sys.exit(main())
