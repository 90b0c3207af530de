"""The tiny models' tokenizer, built locally (byte-level CLIP BPE over a small vocabulary, 77-token
context like SD's), so no tiny model needs the network; and the marker file every tiny model folder has."""

from __future__ import annotations

MARKER = "tiny_model.json"


def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte -> printable-character map that GPT-2/CLIP byte-level BPE uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP vocabulary of every byte (plain and word-final) plus a few common merges."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["t h", "th e</w>", "a n", "i n", "c a", "ca t</w>", "o n</w>", "e r</w>"]
    for merge in merges:
        tokens.append(merge.replace(" ", ""))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def local_tokenizer():
    """A CLIP tokenizer built from the local vocabulary (77-token context, like SD v1)."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tokenizer.model_max_length = 77
    return tokenizer
