"""The columns extraction gives every alt-text, filled in for a table that lacks them: the
image uid (curation/identity.py) and the language (curation/alt_text/lid.py). The curation job
calls this where its map tasks read the records: for input that has only url and text, and for
the rows of any input whose uid or lang is null (a caption table with a partly filled lang
column: its null rows are identified, not sent to `other`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.identity import image_uid


def derive_columns(records: pa.Table, derive: tuple[str, ...], lid_model: str | None) -> pa.Table:
    """uid from (url, page_url) and lang by LID: every row for a column in `derive` (the input
    lacks it), else the rows where it is null."""
    uid_rows = _rows_to_fill(records, "uid", derive)
    if uid_rows is not None:

        def uid(url, page_url):
            try:
                return None if url is None else image_uid(url, page_url)
            except ValueError:  # not an http(s) image
                return None

        urls = records.column("url").take(uid_rows).to_pylist()
        pages = records.column("page_url").take(uid_rows).to_pylist()
        records = _filled(records, "uid", uid_rows, [uid(u, p) for u, p in zip(urls, pages)])
    lang_rows = _rows_to_fill(records, "lang", derive)
    if lang_rows is not None:
        # deferred on purpose: lid.176 (and its numba kernels) load only for input without a
        # language, not in every worker of every curation run
        from curation.alt_text.lid import get_identifier

        texts = records.column("text").take(lang_rows).to_pylist()
        _, _, langs = get_identifier(lid_model).predict(["" if t is None else t for t in texts])
        records = _filled(records, "lang", lang_rows, list(langs))
    return records


def _rows_to_fill(records: pa.Table, name: str, derive: tuple[str, ...]) -> np.ndarray | None:
    """Row indices whose `name` is derived here, or None when there is none."""
    if name in derive:
        return np.arange(records.num_rows) if records.num_rows else None
    column = records.column(name)
    if not column.null_count:
        return None
    return np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))


def _filled(records: pa.Table, name: str, rows: np.ndarray, values: list) -> pa.Table:
    if rows.size == records.num_rows:
        column = pa.array(values, pa.string())
    else:
        filled = np.array(records.column(name).to_pylist(), dtype=object)
        filled[rows] = values
        column = pa.array(filled.tolist(), pa.string())
    return records.set_column(records.schema.get_field_index(name), name, column)
