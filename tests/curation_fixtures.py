"""Metadata tables built from real captions, shared by the curation, report and fault tests."""

import json
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import shared_path


def caption_rows(cc3m: int, wit_languages) -> list[tuple[str, str | None, str, str]]:
    """(url, page_url, text, lang) of the first `cc3m` CC3M captions and every WIT caption of
    the given languages, from ../shared/data (skips the test when absent)."""
    rows = []
    with shared_path("cc3m_val_10k.tsv").open(encoding="utf-8") as f:
        for line in list(f)[:cc3m]:
            caption, url = line.rstrip("\n").split("\t")
            rows.append((url, None, caption, "en"))
    for lang in wit_languages:
        with shared_path("wit", f"test_{lang}.jsonl").open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows.append(
                    (row["image_url"], row["page_url"], row["caption_reference_description"], lang)
                )
    return rows


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
