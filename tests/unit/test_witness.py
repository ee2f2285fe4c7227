"""The suite-wide leak scan (tests/witness.py) must find what it looks for, quickly."""

import json
import secrets

from witness import NeedleFinder


def test_finds_a_needle_inside_longer_text() -> None:
    needle = "sk-live-" + secrets.token_hex(8)
    finder = NeedleFinder({needle, "eyJ" + secrets.token_urlsafe(40)})
    assert finder.found_in(json.dumps({"message": f"copied {needle}x into a log"}))
    assert finder.found_in(needle)
    assert not finder.found_in(json.dumps({"message": "copied sk-live-0000 into a log"}))
    assert not finder.found_in("")


def test_needles_of_mixed_lengths_and_characters() -> None:
    short, odd = "abcdefghijkl", "pa ss:wo/rd+" + secrets.token_hex(4)
    finder = NeedleFinder({short, odd})
    assert finder.found_in("zzz" + short + "zzz")
    assert finder.found_in(f'{{"value": "{odd}"}}')
    assert not finder.found_in("abcdefghijk")


def test_many_needles_against_a_large_text() -> None:
    needles = {secrets.token_urlsafe(48) for _ in range(20000)}
    text = json.dumps([{"reason": "CredentialsIssued", "uid": secrets.token_hex(16)} for _ in range(50000)])
    finder = NeedleFinder(needles)
    assert not finder.found_in(text)
    planted = next(iter(needles))
    assert finder.found_in(text[: len(text) // 2] + planted[5:] + planted + text[len(text) // 2 :])
