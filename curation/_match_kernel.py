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

from curation.core import _key_table as key_table

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
    """Open-addressing table of the vocabulary's token ids."""
    n = vocab_offsets.size - 1
    hashes = np.empty(n, dtype=np.uint64)
    for token in range(n):
        hashes[token] = _hash(vocab_chars, vocab_offsets[token], vocab_offsets[token + 1])
    return key_table.build(hashes)


@njit(cache=True, nogil=True)
def _lookup(chars, start, end, table, vocab_chars, vocab_offsets):
    h = _hash(chars, start, end)
    return key_table.find(chars, start, end, h, table, vocab_chars, vocab_offsets)


@njit(cache=True, nogil=True)
def tokenize(
    chars, text_offsets, is_space, is_punct, table, vocab_chars, vocab_offsets, normalized
):
    """Token ids per text (-1: not in the vocabulary); normalized texts too if asked."""
    n_texts = text_offsets.size - 1
    token_ids = np.empty(chars.size + 1, dtype=np.int64)  # a token has at least one char
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
def _sort_in_place(values, start, stop):
    """Insertion sort for the few ids of one text; numpy's sort beyond that."""
    if stop - start > 32:
        values[start:stop].sort()
        return
    for i in range(start + 1, stop):
        value = values[i]
        j = i - 1
        while j >= start and values[j] > value:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = value


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def build_edge_table(codes, children):
    """Open-addressing table of trie edges: code = node * stride + token -> child node."""
    size = 1
    while size < 2 * codes.size + 2:
        size *= 2
    keys = np.full(size, -1, dtype=np.int64)
    values = np.empty(size, dtype=np.int64)
    mask = np.uint64(size - 1)
    for i in range(codes.size):
        slot = (np.uint64(codes[i]) * _GOLDEN >> np.uint64(32)) & mask
        while keys[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        keys[slot] = codes[i]
        values[slot] = children[i]
    return keys, values


@njit(cache=True, nogil=True)
def _child(node, token, stride, edge_keys, edge_values):
    code = node * stride + token
    mask = np.uint64(edge_keys.size - 1)
    slot = (np.uint64(code) * _GOLDEN >> np.uint64(32)) & mask
    while True:
        key = edge_keys[slot]
        if key == code:
            return edge_values[slot]
        if key < 0:
            return -1
        slot = (slot + np.uint64(1)) & mask


@njit(cache=True, nogil=True)
def collect_matches(
    token_ids,
    token_offsets,
    root_child,
    node_info,
    stride,
    edge_keys,
    edge_values,
    max_depth,
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
        begin, end = token_offsets[text], token_offsets[text + 1]
        auto_end = auto
        while auto_end < auto_texts.size and auto_texts[auto_end] == text:
            auto_end += 1
        # buffers grow here, never inside the walk: at most max_depth keys start at a token
        bound = (end - begin) * max_depth + (auto_end - auto)
        if bound > keys.size:
            keys = np.empty(2 * bound, dtype=np.int64)
        n_keys = 0
        for start in range(begin, end):
            token = token_ids[start]
            if token < 0:
                continue
            node = root_child[token]
            position = start
            while node >= 0:
                info = node_info[node]  # (terminal key + 1) << 1 | has children
                if info > 1:
                    keys[n_keys] = (info >> 1) - 1
                    n_keys += 1
                position += 1
                if position >= end or token_ids[position] < 0 or not info & 1:
                    break
                node = _child(node, token_ids[position], stride, edge_keys, edge_values)
        for k in range(auto, auto_end):
            keys[n_keys] = auto_keys[k]
            n_keys += 1
        auto = auto_end
        n_ids = 0
        for k in range(n_keys):
            n_ids += key_offsets[keys[k] + 1] - key_offsets[keys[k]]
        if n_out + n_ids > out.size:
            out = _grow(out, n_out + n_ids)
        write = n_out
        for k in range(n_keys):
            for j in range(key_offsets[keys[k]], key_offsets[keys[k] + 1]):
                out[write] = key_entries[j]
                write += 1
        if n_ids > 1:
            _sort_in_place(out, n_out, write)
            unique = n_out + 1
            for j in range(n_out + 1, write):
                if out[j] != out[unique - 1]:
                    out[unique] = out[j]
                    unique += 1
            write = unique
        n_out = write
        out_offsets[text + 1] = n_out
    return out_offsets, out[:n_out].copy()


@njit(cache=True, nogil=True)
def texts_with_any(chars, offsets, table):
    """Which texts hold at least one code point that `table` marks."""
    n_texts = offsets.size - 1
    found = np.zeros(n_texts, dtype=np.bool_)
    limit = table.size
    for text in range(n_texts):
        for i in range(offsets[text], offsets[text + 1]):
            cp = np.int64(chars[i])
            if cp < limit and table[cp]:
                found[text] = True
                break
    return found


@njit(cache=True, nogil=True)
def gather_texts(chars, offsets, rows):
    """Texts `rows` (ascending) back to back, with their offsets."""
    total = 0
    for row in rows:
        total += offsets[row + 1] - offsets[row]
    out = np.empty(total, dtype=chars.dtype)
    out_offsets = np.zeros(rows.size + 1, dtype=np.int64)
    write = 0
    for k in range(rows.size):
        row = rows[k]
        for i in range(offsets[row], offsets[row + 1]):
            out[write] = chars[i]
            write += 1
        out_offsets[k + 1] = write
    return out, out_offsets


@njit(cache=True, nogil=True)
def decode_utf8(data, offsets, valid):
    """Arrow string data (UTF-8 bytes, per-string byte offsets) as code points and per-string
    offsets into them; a null string (valid[i] False) is empty. Also the index of the first
    string that is not valid UTF-8 (-1: none): there each byte that starts no valid sequence,
    and each encoded surrogate, decodes to U+FFFD, but callers refuse such input."""
    n = offsets.size - 1
    chars = np.empty(max(0, offsets[n] - offsets[0]), dtype=np.uint32)
    char_offsets = np.zeros(n + 1, dtype=np.int64)
    first_bad = -1
    write = 0
    for s in range(n):
        i, end = offsets[s], offsets[s + 1]
        if valid.size and not valid[s]:
            i = end
        while i < end:
            b = np.int64(data[i])
            if b < 0x80:
                cp, size = b, 1
            elif 0xC2 <= b < 0xE0:
                cp, size = b & 0x1F, 2
            elif 0xE0 <= b < 0xF0:
                cp, size = b & 0x0F, 3
            elif 0xF0 <= b < 0xF5:
                cp, size = b & 0x07, 4
            else:
                cp, size = -1, 1
            if size > 1:
                if i + size > end:
                    cp, size = -1, 1
                else:
                    for k in range(1, size):
                        c = np.int64(data[i + k])
                        if c & 0xC0 != 0x80:
                            cp, size = -1, 1
                            break
                        cp = (cp << 6) | (c & 0x3F)
                    if size == 3 and (cp < 0x800 or 0xD800 <= cp < 0xE000):
                        cp, size = -1, 1  # overlong, or a surrogate
                    elif size == 4 and not 0x10000 <= cp < 0x110000:
                        cp, size = -1, 1  # overlong, or beyond Unicode
            if cp < 0:
                cp = 0xFFFD
                if first_bad < 0:
                    first_bad = s
            chars[write] = cp
            write += 1
            i += size
        char_offsets[s + 1] = write
    return chars[:write], char_offsets, first_bad
