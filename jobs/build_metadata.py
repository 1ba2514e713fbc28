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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from curation import metadata  # noqa: E402
from curation.languages import load_languages  # noqa: E402
from curation.metadata_build import BuildConfig, build  # noqa: E402
from curation.spark import absolute, error_line, get_spark, size_shuffle_partitions  # noqa: E402
from curation.tables import HadoopFS  # noqa: E402
from curation.wordnet import load_omw_table  # noqa: E402


def parse_args(argv):
    d = metadata.METACLIP2
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
        choices=sorted(metadata.RECIPES),
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


def requested_languages(args, known: list[str]) -> list[str]:
    if args.languages:
        codes = [c.strip() for c in args.languages.split(",") if c.strip()]
    elif args.languages_file:
        from curation.uris import open_binary

        with open_binary(args.languages_file) as f:
            codes = f.read().decode("utf-8").split()
    else:
        codes = list(known)
    unknown = sorted(set(codes) - set(known))
    if unknown:
        raise ValueError(f"unknown Wikipedia language codes: {', '.join(unknown)}")
    return codes


def main(argv=None) -> int:
    args = parse_args(argv)
    args.output = absolute(args.output)
    args.wordnet = absolute(args.wordnet) if args.wordnet else None
    args.languages_file = absolute(args.languages_file) if args.languages_file else None
    args.omw = [absolute(u) for u in args.omw]
    args.wikipedia_dumps = [absolute(u) for u in args.wikipedia_dumps]
    args.pageviews = [absolute(u) for u in args.pageviews]
    started = time.perf_counter()
    try:
        languages = load_languages()
        codes = requested_languages(args, [lang.code for lang in languages])
        selection = metadata.Selection(
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
        config = BuildConfig(
            output=args.output,
            languages=codes,
            no_space=frozenset(lang.code for lang in languages if lang.no_space),
            wordnet=args.wordnet,
            omw=args.omw,
            omw_codes=load_omw_table() if args.omw else {},
            dumps=args.wikipedia_dumps,
            pageviews=args.pageviews,
            use_wordfreq=not args.no_wordfreq,
            selection=selection,
            selection_en=metadata.METACLIP1 if args.en_recipe == "metaclip1" else None,
            max_languages=args.max_languages,
        )
        spark = get_spark("build_metadata", args.master, {"spark.ui.showConsoleProgress": "false"})
        fs = HadoopFS(spark)
        if args.wordnet and not fs.exists(args.wordnet):
            raise FileNotFoundError(f"--wordnet {args.wordnet}: no such directory")
        if args.shuffle_partitions:
            spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        else:
            size_shuffle_partitions(spark, sum(fs.glob_bytes(u) for u in args.wikipedia_dumps))
        fs.check_writable(args.output)
        report = build(spark, config)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"build_metadata: error: {error_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed Spark task: say why in one line
        print(f"build_metadata: error: {error_line(error)}", file=sys.stderr)
        return 1
    print(
        f"done in {time.perf_counter() - started:.0f}s: {len(report.entries)} languages, "
        f"{sum(report.entries.values())} entries, {len(report.warnings)} warnings"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
