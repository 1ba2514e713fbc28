"""The compiled inner loops of EntryMatcher's batch path (numba).

Texts arrive as one array of code points (UTF-32) with per-text offsets. `tokenize` applies the
normalization rules (whitespace runs split tokens; each of , . ; : ? ! ` is a token of its own)
and looks tokens up in an open-addressing hash table of the trie's vocabulary; it can also write
the normalized texts for the Aho-Corasick pass. `collect_matches` walks the token trie from every
position, adds the automaton's matches, expands keys to entry ids, sorts and de-duplicates.
Outputs are CSR: per-text offsets into one flat array.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_SPACE = 32


@njit(cache=True, nogil=True)
def _grow(array, needed):
    if needed <= array.size:
        return array
    bigger = np.empty(max(needed, 2 * array.size), dtype=array.dtype)
    bigger[: array.size] = array
    return bigger


@njit(cache=True, nogil=True)
def _hash(chars, start, end):
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(chars[i])) * _FNV_PRIME  # wraps mod 2**64
    return h


@njit(cache=True, nogil=True)
def build_table(vocab_chars, vocab_offsets):
    """Open-addressing table (power-of-two size, linear probing) of token ids."""
    n = vocab_offsets.size - 1
    size = 1
    while size < 2 * n + 2:
        size *= 2
    table = np.full(size, -1, dtype=np.int64)
    mask = np.uint64(size - 1)
    for token in range(n):
        slot = _hash(vocab_chars, vocab_offsets[token], vocab_offsets[token + 1]) & mask
        while table[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = token
    return table


@njit(cache=True, nogil=True)
def _lookup(chars, start, end, table, vocab_chars, vocab_offsets):
    mask = np.uint64(table.size - 1)
    slot = _hash(chars, start, end) & mask
    length = end - start
    while True:
        token = table[slot]
        if token < 0:
            return -1
        v0 = vocab_offsets[token]
        if vocab_offsets[token + 1] - v0 == length:
            same = True
            for i in range(length):
                if vocab_chars[v0 + i] != chars[start + i]:
                    same = False
                    break
            if same:
                return token
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True, nogil=True)
def tokenize(
    chars, text_offsets, is_space, is_punct, table, vocab_chars, vocab_offsets, normalized
):
    """Token ids per text (-1: not in the vocabulary); normalized texts too if asked."""
    n_texts = text_offsets.size - 1
    token_ids = np.empty(max(16, chars.size // 2), dtype=np.int64)
    token_offsets = np.zeros(n_texts + 1, dtype=np.int64)
    norm = np.empty(chars.size * 3 + 2 * n_texts + 16 if normalized else 0, dtype=np.uint32)
    norm_offsets = np.zeros(n_texts + 1, dtype=np.int64)
    n_tokens = 0
    n_norm = 0
    space_limit = is_space.size
    punct_limit = is_punct.size
    for text in range(n_texts):
        if normalized:
            norm[n_norm] = _SPACE
            n_norm += 1
        start = -1
        end_text = text_offsets[text + 1]
        i = text_offsets[text]
        while i <= end_text:
            boundary = i == end_text
            punct = False
            if not boundary:
                cp = np.int64(chars[i])
                if cp < space_limit and is_space[cp]:
                    boundary = True
                elif cp < punct_limit and is_punct[cp]:
                    boundary = True
                    punct = True
            if boundary and start >= 0:
                token_ids = _grow(token_ids, n_tokens + 1)
                token_ids[n_tokens] = _lookup(chars, start, i, table, vocab_chars, vocab_offsets)
                n_tokens += 1
                if normalized:
                    for j in range(start, i):
                        norm[n_norm] = chars[j]
                        n_norm += 1
                    norm[n_norm] = _SPACE
                    n_norm += 1
                start = -1
            if punct:
                token_ids = _grow(token_ids, n_tokens + 1)
                token_ids[n_tokens] = _lookup(chars, i, i + 1, table, vocab_chars, vocab_offsets)
                n_tokens += 1
                if normalized:
                    norm[n_norm] = chars[i]
                    norm[n_norm + 1] = _SPACE
                    n_norm += 2
            elif not boundary and start < 0:
                start = i
            i += 1
        if normalized and n_norm - norm_offsets[text] == 1:
            norm[n_norm] = _SPACE  # an empty text normalizes to two spaces
            n_norm += 1
        token_offsets[text + 1] = n_tokens
        norm_offsets[text + 1] = n_norm
    return token_ids[:n_tokens], token_offsets, norm[:n_norm], norm_offsets


@njit(cache=True, nogil=True)
def _child(node, token, edge_offsets, edge_tokens, edge_children):
    lo, hi = edge_offsets[node], edge_offsets[node + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if edge_tokens[mid] < token:
            lo = mid + 1
        else:
            hi = mid
    if lo < edge_offsets[node + 1] and edge_tokens[lo] == token:
        return edge_children[lo]
    return -1


@njit(cache=True, nogil=True)
def collect_matches(
    token_ids,
    token_offsets,
    root_child,
    edge_offsets,
    edge_tokens,
    edge_children,
    terminal_key,
    auto_texts,
    auto_keys,
    key_offsets,
    key_entries,
):
    n_texts = token_offsets.size - 1
    out_offsets = np.zeros(n_texts + 1, dtype=np.int64)
    out = np.empty(max(16, token_ids.size * 2), dtype=np.int64)
    keys = np.empty(64, dtype=np.int64)
    n_out = 0
    auto = 0
    for text in range(n_texts):
        n_keys = 0
        end = token_offsets[text + 1]
        for start in range(token_offsets[text], end):
            token = token_ids[start]
            if token < 0:
                continue
            node = root_child[token]
            position = start
            while node >= 0:
                key = terminal_key[node]
                if key >= 0:
                    keys = _grow(keys, n_keys + 1)
                    keys[n_keys] = key
                    n_keys += 1
                position += 1
                if position >= end or token_ids[position] < 0:
                    break
                node = _child(node, token_ids[position], edge_offsets, edge_tokens, edge_children)
        while auto < auto_texts.size and auto_texts[auto] == text:
            keys = _grow(keys, n_keys + 1)
            keys[n_keys] = auto_keys[auto]
            n_keys += 1
            auto += 1
        n_ids = 0
        for k in range(n_keys):
            n_ids += key_offsets[keys[k] + 1] - key_offsets[keys[k]]
        out = _grow(out, n_out + n_ids)
        write = n_out
        for k in range(n_keys):
            for j in range(key_offsets[keys[k]], key_offsets[keys[k] + 1]):
                out[write] = key_entries[j]
                write += 1
        if n_ids > 1:
            out[n_out:write] = np.sort(out[n_out:write])
            unique = n_out + 1
            for j in range(n_out + 1, write):
                if out[j] != out[unique - 1]:
                    out[unique] = out[j]
                    unique += 1
            write = unique
        n_out = write
        out_offsets[text + 1] = n_out
    return out_offsets, out[:n_out].copy()
