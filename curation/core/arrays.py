"""Small Arrow helpers the stages share."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc


def run_starts(*columns) -> np.ndarray:
    """True where a row differs from the previous one in any of the (sorted) columns; a null
    never equals its neighbour, so it starts a run of its own."""
    n = len(columns[0])
    starts = np.ones(n, dtype=np.bool_)
    if n > 1:
        same = None
        for column in columns:
            equal = pc.equal(column.slice(1), column.slice(0, n - 1))
            same = equal if same is None else pc.and_(same, equal)
        starts[1:] = ~pc.fill_null(same, False).to_numpy(zero_copy_only=False)
    return starts
