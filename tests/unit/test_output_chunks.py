"""Cutting decoded output into pieces within a UTF-8 byte bound (``agents.process.utf8_pieces``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from godel_ray.agents.process import utf8_pieces


def test_small_and_ascii_text_stays_whole() -> None:
    assert utf8_pieces("", 8) == []
    assert utf8_pieces("abcdefgh", 8) == ["abcdefgh"]
    assert utf8_pieces("abcdefghi", 8) == ["abcdefgh", "i"]


def test_cuts_never_split_a_character() -> None:
    text = "é€😀" * 5  # 2, 3 and 4 bytes
    pieces = utf8_pieces(text, 5)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= 5 for p in pieces)


@given(st.text(), st.integers(min_value=4, max_value=64))
def test_pieces_join_to_the_text_and_respect_the_bound(text: str, bound: int) -> None:
    text = text.encode("utf-8", "replace").decode("utf-8")  # what a decoder with errors="replace" gives
    pieces = utf8_pieces(text, bound)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= bound for p in pieces)
