"""Substring matching of normalized alt-text against one language's entries (docs/semantics.md,
section 3).

Automata are built in memory from the entry list (in each Spark worker, once per language) and
never serialized.

Keys split in two kinds:
- token-aligned keys, padded with a space on both sides (" new york "). In a normalized text
  (tokens joined by single spaces, padded) such a key occurs exactly where its tokens occur as
  consecutive tokens, so they are found by walking a trie over token ids. Most entries and most
  matches (single words, stop words) take this path.
- every other key (next to a no-space character: "東京", " C++") is found by an overlapping
  Aho-Corasick automaton (ahocorasick-rs) over the normalized text.

`match` handles one text in plain Python. `match_many` and `match_arrow` work a batch at a time
in compiled kernels (`curation._match_kernel`): tokenize and look tokens up, walk the trie, merge
in the automaton's matches (one automaton call per batch), sort and de-duplicate ids per text.
Tests check both paths against the literal definition.
"""

from __future__ import annotations

import gc
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice

import numpy as np
import pyarrow as pa
from ahocorasick_rs import AhoCorasick, Implementation, MatchKind

from curation import _match_kernel as kernel
from curation.text import SPACED_PUNCTUATION, entry_key, normalize

BATCH_TEXTS = 8192
GATHER_BELOW = 0.75  # the automaton scans only the texts with an anchor when fewer than this
_SURROGATE = re.compile("[\ud800-\udfff]")
_IS_SPACE = np.array([chr(cp).isspace() for cp in range(0x3001)], dtype=np.bool_)
_IS_PUNCT = np.array([chr(cp) in SPACED_PUNCTUATION for cp in range(128)], dtype=np.bool_)


class EntryMatcher:
    """Finds which entries occur in a text; entry id i is ``entries[i]``.

    Entries with the same key (e.g. "cat" and " cat ") each get their own id and match together.
    """

    def __init__(self, entries: Sequence[str]):
        key_index: dict[str, int] = {}
        ids_of_key: list[list[int]] = []
        for entry_id, entry in enumerate(entries):
            key = entry_key(entry)
            index = key_index.setdefault(key, len(ids_of_key))
            if index == len(ids_of_key):
                ids_of_key.append([entry_id])
            else:
                ids_of_key[index].append(entry_id)
        self.num_entries = len(entries)
        self._ids_of_key = ids_of_key
        self._key_offsets, self._key_entries = _csr(ids_of_key)
        self._trie = _TokenTrie()
        substring_keys: list[str] = []
        substring_key_ids: list[int] = []
        for key, index in key_index.items():
            if len(key) > 2 and key[0] == " " and key[-1] == " ":
                self._trie.add(key[1:-1].split(" "), index)
            else:
                substring_keys.append(key)
                substring_key_ids.append(index)
        self._trie.freeze()
        self._substring_key_ids = np.asarray(substring_key_ids, dtype=np.int64)
        self._automaton = (
            AhoCorasick(
                substring_keys,
                matchkind=MatchKind.Standard,
                implementation=Implementation.ContiguousNFA,
            )
            if substring_keys
            else None
        )
        self._anchors = _anchor_table(substring_keys, key_index)

    def __len__(self) -> int:
        return self.num_entries

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries whose key occurs in ``normalize(text)``."""
        normalized = normalize(text)
        found = self._trie.find(normalized[1:-1].split(" "))
        if self._automaton is not None:
            key_ids = self._substring_key_ids
            found.update(int(key_ids[i]) for i, _, _ in _find_all(self._automaton, normalized))
        return sorted({i for key in found for i in self._ids_of_key[key]})

    def match_many(self, texts: Iterable[str]) -> list[list[int]]:
        """`match` for each text, computed a batch at a time."""
        results: list[list[int]] = []
        iterator = iter(texts)
        # Building millions of small lists would trigger the cyclic GC over and over (a third of
        # the run time); these lists cannot form cycles, so it is paused, then restored.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            while batch := list(islice(iterator, BATCH_TEXTS)):
                offsets, ids = self._match_batch(batch)
                values = ids.tolist()
                bounds = offsets.tolist()
                results.extend(values[a:b] for a, b in zip(bounds, bounds[1:]))
        finally:
            if gc_was_enabled:
                gc.enable()
        return results

    def match_arrow(self, texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Matches of an Arrow string array as list<int32> (null texts match nothing), decoded
        from its UTF-8 buffers without making Python strings."""
        offsets, ids = self._match_code_points(*_arrow_code_points(texts))
        return pa.ListArray.from_arrays(
            pa.array(offsets, type=pa.int32()), pa.array(ids, type=pa.int32())
        )

    def _match_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._match_code_points(*_code_points(texts))

    def _match_code_points(self, chars, text_offsets) -> tuple[np.ndarray, np.ndarray]:
        trie = self._trie
        token_ids, token_offsets, normalized, norm_offsets = kernel.tokenize(
            chars,
            text_offsets,
            _IS_SPACE,
            _IS_PUNCT,
            trie.table,
            trie.vocab_chars,
            trie.vocab_offsets,
            self._automaton is not None,
        )
        auto_texts, auto_keys = self._automaton_matches(normalized, norm_offsets)
        return kernel.collect_matches(
            token_ids,
            token_offsets,
            trie.root_child,
            trie.node_info,
            trie.stride,
            trie.edge_keys,
            trie.edge_values,
            trie.max_depth,
            auto_texts,
            auto_keys,
            self._key_offsets,
            self._key_entries,
        )

    def _automaton_matches(self, normalized, norm_offsets) -> tuple[np.ndarray, np.ndarray]:
        """One scan over the batch's normalized texts that hold an anchor, back to back; (text,
        key) per match.

        No key spans two texts: that would need two spaces in a row, which no key has.
        """
        none = np.empty(0, np.int64), np.empty(0, np.int64)
        if self._automaton is None:
            return none
        # only texts holding an anchor can hold a key: the others are not scanned
        rows = np.flatnonzero(kernel.texts_with_any(normalized, norm_offsets, self._anchors))
        if not rows.size:
            return none
        if rows.size < GATHER_BELOW * (norm_offsets.size - 1):
            normalized, norm_offsets = kernel.gather_texts(normalized, norm_offsets, rows)
        else:  # most texts: copying them would cost more than scanning the rest
            rows = np.arange(norm_offsets.size - 1)
        text = normalized.tobytes().decode("utf-32-le", "surrogatepass")
        found = _find_all(self._automaton, text)
        if not found:
            return none
        matches = np.array(found, dtype=np.int64).reshape(-1, 3)
        text_idx = np.searchsorted(norm_offsets, matches[:, 1], side="right") - 1
        return rows[text_idx], self._substring_key_ids[matches[:, 0]]


def _anchor_table(substring_keys: list[str], all_keys: Iterable[str]) -> np.ndarray:
    """Marks, over code points, one character of each substring key, its anchor: a text that
    holds no anchor holds no key, so the automaton skips it (in English most texts: its few
    substring keys are anchored on an apostrophe or a period). The anchor is the key's likeliest
    rare character: punctuation and symbols before digits before letters, then the one least
    frequent among all the language's keys. Lone surrogates are scanned as U+FFFD (`_find_all`),
    so those are marked too when U+FFFD is an anchor."""
    frequency = Counter("".join(all_keys))  # one pass: per-character counts would be one each

    def rarity(char: str) -> tuple:
        kind = 2 if char.isalpha() else 1 if char.isdigit() else 0
        return kind, frequency[char], char

    anchors = {min((c for c in key if c != " "), key=rarity) for key in substring_keys}
    if "\ufffd" in anchors:
        anchors.update(chr(cp) for cp in range(0xD800, 0xE000))
    table = np.zeros(max(map(ord, anchors), default=-1) + 1, dtype=np.bool_)
    table[[ord(c) for c in anchors]] = True
    return table


def _find_all(automaton: AhoCorasick, text: str) -> list[tuple[int, int, int]]:
    """Overlapping matches; lone surrogates (broken input) are scanned as U+FFFD, same offsets."""
    try:
        return automaton.find_matches_as_indexes(text, overlapping=True)
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
        return automaton.find_matches_as_indexes(text, overlapping=True)


def _code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The batch as one UTF-32 code point array, and each text's start offset in it."""
    chars = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), out=offsets[1:])
    return chars, offsets


def _arrow_code_points(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """`_code_points` of an Arrow string array, straight from its buffers. Bytes that are not
    UTF-8 are a ValueError, as they were for `to_pylist`."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not len(texts):
        return np.empty(0, np.uint32), np.zeros(1, np.int64)
    if not pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.large_string())  # string and string_view: int64 offsets
    _, offsets, data = texts.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    valid = np.empty(0, np.bool_)
    if texts.null_count:
        valid = texts.is_valid().to_numpy(zero_copy_only=False)
    chars, char_offsets, first_bad = kernel.decode_utf8(data, offsets, valid)
    if first_bad >= 0:  # Parquet readers do not check: to_pylist would have raised here too
        sample = texts[first_bad].as_buffer().to_pybytes()[:60]
        raise ValueError(f"alt-text {first_bad} of a batch is not valid UTF-8: {sample!r}")
    return chars, char_offsets


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for row in rows for i in row), dtype=np.int64, count=int(offsets[-1]))
    return offsets, flat


class _TokenTrie:
    """Token-aligned keys as a trie over token ids, stored as sorted CSR edges per node."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self._children: dict[tuple[int, int], int] = {}
        self._terminal: dict[int, int] = {}
        self._nodes = 1  # node 0 is the root
        self.max_depth = 1

    def add(self, tokens: list[str], key_id: int) -> None:
        self.max_depth = max(self.max_depth, len(tokens))
        node = 0
        for token in tokens:
            token_id = self.vocab.setdefault(token, len(self.vocab))
            child = self._children.get((node, token_id))
            if child is None:
                child = self._children[(node, token_id)] = self._nodes
                self._nodes += 1
            node = child
        self._terminal[node] = key_id

    def freeze(self) -> None:
        self.vocab_chars, self.vocab_offsets = _code_points(list(self.vocab))
        self.table = kernel.build_table(self.vocab_chars, self.vocab_offsets)
        self.stride = max(len(self.vocab), 1)
        n = len(self._children)
        parents = np.fromiter((node for node, _ in self._children), dtype=np.int64, count=n)
        tokens = np.fromiter((tok for _, tok in self._children), dtype=np.int64, count=n)
        children = np.fromiter(self._children.values(), dtype=np.int64, count=n)
        self.edge_keys, self.edge_values = kernel.build_edge_table(
            parents * self.stride + tokens, children
        )
        self.root_child = np.full(self.stride, -1, dtype=np.int64)
        roots = parents == 0
        self.root_child[tokens[roots]] = children[roots]
        # one array per node, so a trie step touches one cache line: (key + 1) << 1 | branches
        self.node_info = np.zeros(self._nodes, dtype=np.int64)
        self.node_info[np.fromiter(self._terminal, dtype=np.int64)] = (
            np.fromiter(self._terminal.values(), dtype=np.int64) + 1
        ) << 1
        self.node_info[parents] |= 1

    def find(self, tokens: list[str]) -> set[int]:
        """Keys occurring as consecutive tokens of one text."""
        found = set()
        vocab, children, terminal = self.vocab, self._children, self._terminal
        for start in range(len(tokens)):
            node = 0
            for token in tokens[start:]:
                node = children.get((node, vocab.get(token, -1)))
                if node is None:
                    break
                if node in terminal:
                    found.add(terminal[node])
        return found
