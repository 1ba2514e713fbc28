"""Substring matching of normalized alt-text against one language's entries (section 3).

The automaton is built in memory from the entry list every time (in each Spark worker, once per
language); it is never serialized.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ahocorasick_rs import AhoCorasick, Implementation, MatchKind

from curation.text import entry_key, normalize


class EntryMatcher:
    """Finds which entries occur in a text; entry id i is ``entries[i]``.

    Entries with the same key (e.g. "cat" and " cat ") each get their own id and match together.
    """

    def __init__(self, entries: Sequence[str]):
        keys = [entry_key(entry) for entry in entries]
        key_index: dict[str, int] = {}
        ids_of_key: list[list[int]] = []
        for entry_id, key in enumerate(keys):
            index = key_index.setdefault(key, len(ids_of_key))
            if index == len(ids_of_key):
                ids_of_key.append([entry_id])
            else:
                ids_of_key[index].append(entry_id)
        self.num_entries = len(keys)
        self._has_shared_keys = len(ids_of_key) != len(keys)
        self._ids_of_key = ids_of_key
        self._automaton = (
            AhoCorasick(
                list(key_index),
                matchkind=MatchKind.Standard,
                implementation=Implementation.ContiguousNFA,
            )
            if key_index
            else None
        )

    def __len__(self) -> int:
        return self.num_entries

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries whose key occurs in ``normalize(text)``."""
        if self._automaton is None:
            return []
        found = self._automaton.find_matches_as_indexes(normalize(text), overlapping=True)
        if not found:
            return []
        key_ids = {key_id for key_id, _, _ in found}
        if self._has_shared_keys:
            return sorted(i for key_id in key_ids for i in self._ids_of_key[key_id])
        return sorted(key_ids)

    def match_many(self, texts: Iterable[str]) -> list[list[int]]:
        match = self.match
        return [match(text) for text in texts]
