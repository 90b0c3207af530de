"""A1111's emphasis syntax read into weighted fragments, without torch."""

from __future__ import annotations

import pytest

from model_server.prompt_syntax import is_plain, parse


@pytest.mark.parametrize("prompt, fragments", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat:1.5) on a [mat]", [("a ", 1.0), ("cat", 1.5), (" on a ", 1.0), ("mat", 1 / 1.1)]),
    ("((cat))", [("cat", 1.1 * 1.1)]),
    ("a (b [c] d:1.2) e", [("a ", 1.0), ("b ", 1.2), ("c", 1.2 / 1.1), (" d", 1.2), (" e", 1.0)]),
    ("(cat:0.25) (dog:-1)", [("cat", 0.25), (" ", 1.0), ("dog", -1.0)]),
    (r"a \(cat\) \[x\] \\", [(r"a (cat) [x] \ ".rstrip(), 1.0)]),
    ("a (cat", [("a ", 1.0), ("cat", 1.1)]),  # left open: to the end
    ("a [cat", [("a ", 1.0), ("cat", 1 / 1.1)]),
    ("cat) dog]", [("cat) dog]", 1.0)]),  # closed without opening: text
    ("(cat:0.5", [("cat:0.5", 1.1)]),  # a weight needs its closing bracket
    ("(x:abc)", [("x:abc", 1.1)]),
    ("time: 12:30", [("time: 12:30", 1.0)]),
    ("red BREAK blue", [("red ", 1.0), ("BREAK", None), (" blue", 1.0)]),
    ("BREAKFAST at Bob's", [("BREAKFAST at Bob's", 1.0)]),
    ("(a)(b)", [("ab", 1.1)]),  # equal neighbours merge, as A1111 does
    ("", [("", 1.0)]),
])
def test_a1111s_emphasis_rules(prompt, fragments):
    got = parse(prompt)
    assert [text for text, _ in got] == [text for text, _ in fragments]
    assert [w for _, w in got] == [pytest.approx(w) if w is not None else None for _, w in fragments]


@pytest.mark.parametrize("prompt, plain", [("a cat, 4k, photo", True), ("a (cat)", False), ("a [cat]", False),
                                           (r"a \(cat\)", False), ("a BREAK b", False), ("BREAKFAST", True),
                                           ("time: 12:30", True)])
def test_only_a_prompt_without_the_syntax_is_plain(prompt, plain):
    assert is_plain(prompt) is plain
