"""The columns extraction gives every alt-text, filled in for a table that lacks them: the
image uid (curation/identity.py) and the language (curation/alt_text/lid.py). The curation job
calls this for input that has only url and text, where its map tasks read the records."""

from __future__ import annotations

import pyarrow as pa

from curation.identity import image_uid


def derive_columns(records: pa.Table, derive: tuple[str, ...], lid_model: str | None) -> pa.Table:
    """uid from (url, page_url) and lang by LID, for input that lacks those columns."""
    if "uid" in derive:

        def uid(url, page_url):
            try:
                return None if url is None else image_uid(url, page_url)
            except ValueError:  # not an http(s) image
                return None

        urls, pages = records.column("url").to_pylist(), records.column("page_url").to_pylist()
        uids = pa.array([uid(u, p) for u, p in zip(urls, pages)], pa.string())
        records = records.set_column(records.schema.get_field_index("uid"), "uid", uids)
    if "lang" in derive:
        # deferred on purpose: lid.176 (and its numba kernels) load only for lang-less input,
        # not in every worker of every curation run
        from curation.alt_text.lid import get_identifier

        texts = ["" if t is None else t for t in records.column("text").to_pylist()]
        _, _, langs = get_identifier(lid_model).predict(texts)
        langs = pa.array(langs, pa.string())
        records = records.set_column(records.schema.get_field_index("lang"), "lang", langs)
    return records
