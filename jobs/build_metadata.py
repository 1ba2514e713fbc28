"""Build the per-language metadata tables (the entries alt-text is matched against).

Writes <output>/metadata (Parquet partitioned by lang: lang, entry_id, entry, source) and
<output>/metadata_stats (per lang and source: candidates, kept, dropped per reason). Reruns
overwrite only the language partitions they rebuild.

  python jobs/build_metadata.py --languages en,el --wordnet /usr/share/wordnet \\
      --wikipedia-dumps 'data/elwiki-*-pages-articles*.xml.bz2' --output out/meta
  spark-submit jobs/build_metadata.py --wikipedia-dumps 's3://bucket/dumps/*.xml.bz2' \\
      --output s3://bucket/metaclip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from curation.core.jobs import MetadataError, run_job  # noqa: E402
from curation.core.uris import absolute, open_binary  # noqa: E402
from curation.metadata import entries  # noqa: E402
from curation.metadata.job import BuildConfig, run, session  # noqa: E402


def parse_args(argv):
    d = entries.METACLIP2
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", required=True, help="base URI; metadata/ and metadata_stats/")
    p.add_argument("--languages", help="comma-separated Wikipedia codes (default: all 330)")
    p.add_argument("--languages-file", help="URI of a file with one Wikipedia code per line")
    p.add_argument(
        "--max-languages",
        type=int,
        help="build at most N languages (those with WordNet or a dump first, then by code)",
    )
    p.add_argument(
        "--wordnet", help="Princeton WordNet directory URI, for en (Debian or NLTK layout)"
    )
    p.add_argument(
        "--omw",
        action="append",
        default=[],
        help="glob URI of OMW wn-data-<iso>.tab files (repeatable)",
    )
    p.add_argument(
        "--wikipedia-dumps",
        action="append",
        default=[],
        help="glob URI of *wiki-*-pages-articles*.xml[.bz2|.xz|.gz] dumps (repeatable)",
    )
    p.add_argument(
        "--pageviews",
        action="append",
        default=[],
        help="glob URI of Wikimedia pageview files (repeatable); else titles rank by in-links",
    )
    p.add_argument(
        "--no-wordfreq",
        action="store_true",
        help="do not use wordfreq word lists as unigrams for languages without a dump",
    )
    p.add_argument(
        "--en-recipe",
        choices=sorted(entries.RECIPES),
        default="metaclip2",
        help="selection for English: metaclip2 (default) or the MetaCLIP 1 recipe",
    )
    p.add_argument("--unigram-fraction", type=float, default=d.unigram_fraction,
                   help="keep this top fraction of distinct unigrams by count")  # fmt: skip
    p.add_argument(
        "--unigram-max", type=int, default=d.unigram_max, help="at most this many unigrams"
    )
    p.add_argument("--unigram-min-count", type=int, default=d.unigram_min_count,
                   help="drop unigrams seen fewer times")  # fmt: skip
    p.add_argument("--bigram-min-pmi", type=float, default=d.bigram_min_pmi,
                   help="keep bigrams with PMI (count*N/(count_a*count_b)) above this")  # fmt: skip
    p.add_argument("--bigram-min-count", type=int, default=d.bigram_min_count,
                   help="keep bigrams seen at least this often")  # fmt: skip
    p.add_argument("--bigram-max", type=int, default=d.bigram_max,
                   help="at most this many bigrams (most frequent first)")  # fmt: skip
    p.add_argument("--title-fraction", type=float, default=d.title_fraction,
                   help="keep this top fraction of article titles by popularity")  # fmt: skip
    p.add_argument("--title-max", type=int, default=d.title_max, help="at most this many titles")
    p.add_argument("--title-min-popularity", type=int, default=d.title_min_popularity,
                   help="drop titles with fewer pageviews (or in-links)")  # fmt: skip
    p.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument(
        "--shuffle-partitions",
        type=int,
        help="spark.sql.shuffle.partitions (default: the cluster's; 4 per core in local mode)",
    )
    return p.parse_args(argv)


def languages_of(args) -> tuple[str, ...] | None:
    """--languages, else the codes in --languages-file, else None (every language)."""
    if args.languages is not None:
        return tuple(c.strip() for c in args.languages.split(",") if c.strip())
    if args.languages_file:
        try:
            with open_binary(absolute(args.languages_file)) as f:
                return tuple(f.read().decode("utf-8").split())
        except OSError as error:
            raise MetadataError(f"--languages-file: {error}") from None
    return None


def config_from_args(args) -> BuildConfig:
    selection = entries.Selection(
        unigram_fraction=args.unigram_fraction,
        unigram_max=args.unigram_max,
        unigram_min_count=args.unigram_min_count,
        bigram_min_pmi=args.bigram_min_pmi,
        bigram_min_count=args.bigram_min_count,
        bigram_max=args.bigram_max,
        title_fraction=args.title_fraction,
        title_max=args.title_max,
        title_min_popularity=args.title_min_popularity,
    )
    return BuildConfig(
        output=absolute(args.output),
        languages=languages_of(args),
        wordnet=absolute(args.wordnet) if args.wordnet else None,
        omw=tuple(absolute(u) for u in args.omw),
        dumps=tuple(absolute(u) for u in args.wikipedia_dumps),
        pageviews=tuple(absolute(u) for u in args.pageviews),
        use_wordfreq=not args.no_wordfreq,
        selection=selection,
        selection_en=entries.METACLIP1 if args.en_recipe == "metaclip1" else None,
        max_languages=args.max_languages,
        shuffle_partitions=args.shuffle_partitions,
    )


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        report = run(config_from_args(args), session(args.master))
        print(report.summary())
        return 0

    return run_job("build_metadata", body)


if __name__ == "__main__":
    sys.exit(main())
