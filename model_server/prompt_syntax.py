"""AUTOMATIC1111's prompt emphasis syntax, read into (text, weight) fragments; torch-free.

The rules A1111 users write by (its wiki, "Attention/emphasis"):

- ``(words)`` multiplies their weight by 1.1, ``[words]`` divides it by 1.1; they nest: ``((words))`` is 1.21;
- ``(words:1.5)`` multiplies it by 1.5 (any number, ``(words:0.25)`` too);
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the characters themselves;
- a bracket left open applies to the rest of the prompt; one closed without opening is text;
- ``BREAK`` (upper case, on its own) starts a new 75-token chunk.

``parse`` returns the fragments with adjacent equal weights merged and BREAK as ``(BREAK, None)``;
``is_plain`` says whether a prompt uses none of it, so it can be encoded exactly as before.
"""

from __future__ import annotations

import re

UP, DOWN = 1.1, 1 / 1.1
BREAK = "BREAK"
# A token of the syntax: an escape, a bracket, ":number)" closing a weighted group, BREAK, or a run of text.
_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\)|\[|\]|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\bBREAK\b|[^\\()\[\]:B]+|.",
                    re.DOTALL)
_SYNTAX = re.compile(r"[()\[\]]|\\[()\[\]\\]|\bBREAK\b")


def is_plain(prompt: str) -> bool:
    """No brackets, escapes or BREAK: the prompt's text is all there is to it."""
    return _SYNTAX.search(prompt) is None


def parse(prompt: str) -> list[tuple[str, float | None]]:
    """``prompt`` as (text, weight) fragments; see the module's doc."""
    out: list[list] = []
    round_open: list[int] = []  # where each open "(" and "[" began in ``out``
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for fragment in out[start:]:
            if fragment[1] is not None:
                fragment[1] *= factor

    for match in _TOKEN.finditer(prompt):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            out.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(out))
        elif token == "[":
            square_open.append(len(out))
        elif number is not None and round_open:
            multiply(round_open.pop(), float(number))
        elif token == ")" and round_open:
            multiply(round_open.pop(), UP)
        elif token == "]" and square_open:
            multiply(square_open.pop(), DOWN)
        elif token == BREAK:
            out.append([BREAK, None])
        else:  # text, a stray closing bracket, or ":1.5)" outside a group: all text
            out.append([token, 1.0])
    for start in round_open:  # left open: to the end
        multiply(start, UP)
    for start in square_open:
        multiply(start, DOWN)
    merged: list[tuple[str, float | None]] = []
    for text, weight in out:
        if merged and weight is not None and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged or [("", 1.0)]
