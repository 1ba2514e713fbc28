"""Metadata tables built from real captions, shared by the curation, report and fault tests."""

import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq


def wit_entries(captions, lang):
    """Entries taken from the captions: words seen 3+ times and bigrams seen 3+ times."""
    grams = Counter()
    for caption in captions:
        if lang == "ja":
            for run_ in re.findall(r"[\u4e00-\u9fff]+", caption):
                grams.update(run_[i : i + 2] for i in range(len(run_) - 1))
        else:
            words = caption.split()
            grams.update(words)
            grams.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    return sorted(g for g, c in grams.items() if c >= 3 and g.strip(",.;:?!`"))


def write_metadata(root, entries_by_lang):
    rows = {"lang": [], "entry_id": [], "entry": [], "source": []}
    for lang, entries in entries_by_lang.items():
        for entry_id, entry in enumerate(sorted(set(entries))):
            rows["lang"].append(lang)
            rows["entry_id"].append(entry_id)
            rows["entry"].append(entry)
            rows["source"].append("test")
    table = pa.table(rows).cast(
        pa.schema(
            [
                ("lang", pa.string()),
                ("entry_id", pa.int32()),
                ("entry", pa.string()),
                ("source", pa.string()),
            ]
        )
    )
    pq.write_to_dataset(table, str(root), partition_cols=["lang"])
    return {lang: sorted(set(e)) for lang, e in entries_by_lang.items()}
