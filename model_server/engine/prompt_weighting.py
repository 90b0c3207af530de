"""Prompt emphasis and prompts past the text encoder's 77 tokens, as AUTOMATIC1111 encodes them.

A prompt is read into weighted fragments (``model_server/prompt_syntax.py``), tokenized fragment by
fragment, and cut into chunks of 75 tokens (at a comma within the last 20 tokens when there is one,
and wherever BREAK says). Each chunk is encoded alone between its start and end tokens, exactly as
diffusers encodes a whole short prompt (SDXL: both encoders' penultimate layers side by side, the
pooled embedding from the first chunk), then scaled token by token by its weights and brought back to
its mean before scaling, as A1111 does (unless that mean is near zero); the chunks are laid end to end
(the UNet's cross-attention takes any length) and the prompt and the negative prompt padded to the same
number with empty ones.

A prompt with none of the syntax and at most 75 tokens (the most) never comes here: it is encoded
by diffusers as before, so its images are the same.
"""

from __future__ import annotations

import torch

from model_server.prompt_syntax import is_plain, parse

CHUNK = 75  # tokens between a chunk's start and end tokens: the encoders' 77 positions
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack


def _tokenizers_and_encoders(pipe) -> list[tuple[object, object]]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def needs_weighting(pipe, prompt: str, negative_prompt: str) -> bool:
    """Whether diffusers' own encoding would miss something: emphasis, BREAK, escapes or a prompt past 75 tokens."""
    tokenizer = _tokenizers_and_encoders(pipe)[0][0]
    return any(not is_plain(text) or len(tokenizer(text, add_special_tokens=False).input_ids) > CHUNK
               for text in (prompt, negative_prompt) if text)


def chunks(tokenizer, prompt: str) -> list[list[tuple[int, float]]]:
    """``prompt``'s (token id, weight) pairs in chunks of at most CHUNK."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    out: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    last_comma = -1
    for text, weight in parse(prompt):
        if weight is None:  # BREAK
            out.append(current)
            current, last_comma = [], -1
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if len(current) == CHUNK:
                cut = last_comma + 1 if last_comma >= 0 and CHUNK - last_comma <= COMMA_BACKTRACK else CHUNK
                out.append(current[:cut])
                current, last_comma = current[cut:], -1
            current.append((token, weight))
            if token == comma:
                last_comma = len(current) - 1
    out.append(current)
    return out


def _ids_and_weights(tokenizer, chunk: list[tuple[int, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk as diffusers pads a prompt: start, tokens, end, padding to 77."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id] + [pad] * (CHUNK - len(chunk))
    weights = [1.0, *(w for _, w in chunk)] + [1.0] * (CHUNK + 1 - len(chunk))
    return torch.tensor([ids]), torch.tensor(weights)


def _encode_chunk(pairs, chunk_per_encoder) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One chunk through each encoder: (hidden states 1 x 77 x D, the pooled embedding or None, weights)."""
    hidden, pooled, weights = [], None, None
    sdxl = len(pairs) > 1
    for (tokenizer, encoder), chunk in zip(pairs, chunk_per_encoder):
        ids, weights = _ids_and_weights(tokenizer, chunk)
        out = encoder(ids, output_hidden_states=sdxl)
        if sdxl:
            hidden.append(out.hidden_states[-2])
            if out[0].ndim == 2:  # the projection encoder's pooled output, as diffusers takes it
                pooled = out[0]
        else:
            hidden.append(out[0])
    return torch.cat(hidden, dim=-1), pooled, weights


def _encode(pipe, prompt: str, count: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``prompt``'s weighted chunks (at least ``count``, padded with empty ones), and its pooled embedding."""
    pairs = _tokenizers_and_encoders(pipe)
    per_encoder = [chunks(tokenizer, prompt) for tokenizer, _ in pairs]
    total = max(len(per_encoder[0]), count or 0)
    out, pooled = [], None
    for index in range(total):
        here = [c[index] if index < len(c) else [] for c in per_encoder]
        z, chunk_pooled, weights = _encode_chunk(pairs, here)
        if index == 0:
            pooled = chunk_pooled
        weighted = z * weights.to(z.dtype).view(1, -1, 1)
        ratio = z.mean() / weighted.mean()
        # A1111 divides by the new mean unguarded; where it is near zero (an encoder whose last layer norm has
        # no bias, such as the tiny test models') that would blow the embedding up, so it is left as weighted.
        out.append(weighted * ratio if torch.isfinite(ratio) and 0.1 <= abs(float(ratio)) <= 10 else weighted)
    return out, pooled


@torch.inference_mode()
def weighted_embeddings(pipe, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
    """The pipeline's embedding arguments for ``prompt`` and ``negative_prompt`` (see the module's doc)."""
    positive, pooled = _encode(pipe, prompt)
    zeros = not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False)
    if zeros:  # SDXL's rule for an empty negative prompt, as diffusers applies it
        negative = [torch.zeros_like(z) for z in positive]
        negative_pooled = torch.zeros_like(pooled) if pooled is not None else None
    else:
        negative, negative_pooled = _encode(pipe, negative_prompt or "", len(positive))
    if len(positive) < len(negative):
        positive += _encode(pipe, "", len(negative) - len(positive))[0][:len(negative) - len(positive)]
    out = {"prompt_embeds": torch.cat(positive, dim=1), "negative_prompt_embeds": torch.cat(negative, dim=1)}
    if pooled is not None:
        out.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    return out
