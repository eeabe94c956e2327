"""Text from outside made safe: printable (terminal escapes), storable (surrogates, NUL), secrets redacted
(keys and their leading pieces, URLs), integers holding escape codes, `--extra-body` bounds."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knowledge_flow.endpoint.secrets import describe, redact
from knowledge_flow.endpoint.urls import REDACTED, address, check_urls, shown_url, url_secrets
from knowledge_flow.options import MAX_EXTRA_BODY_BYTES, MAX_EXTRA_BODY_DEPTH, parse_options
from knowledge_flow.params import resolve_params
from knowledge_flow.text.parsing import read_answer
from knowledge_flow.text.safe import CONTROL, json_line, printable, storable

KEY = "sk-unit-9f8e7d6c5b4a-SECRET"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\x1b[2Jb", "ab"),  # clear screen
        ("a\x1b[1;31mred\x1b[0m", "ared"),  # colours
        ("a\x1b]0;title\x07b", "ab"),  # window title, BEL-terminated
        ("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),  # hyperlink, ST-terminated
        ("a\x9b31mb", "ab"),  # 8-bit CSI
        ("a\x1bPq#0\x1b\\b", "ab"),  # DCS (sixel)
        ("a\x1bcb", "ab"),  # reset
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("bell\x07 cr\r bs\x08", "bell\ufffd cr\ufffd bs\ufffd"),
        ("abc\u202edcba\u2066x\u2069", "abc\ufffddcba\ufffdx\ufffd"),  # bidi override and isolate
        ("lone \ud800 half", "lone \ufffd half"),
        ("a\x1b]0;unterminated", "a0;unterminated"),  # an unterminated string loses its introducer only
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    shown = printable(text)
    assert not CONTROL.search(shown)
    shown.encode("utf-8")  # no lone surrogates either


def test_printable_cuts_at_the_limit() -> None:
    assert printable("x" * 10, 5) == "xxxx…" and printable("x" * 5, 5) == "xxxxx"


def test_storable() -> None:
    assert storable("a\ud800b\x00c\udfff") == "a\ufffdb\ufffdc\ufffd"
    assert storable("plain é ∑") == "plain é ∑"


def test_json_line_is_valid_json_with_nothing_to_act_on() -> None:
    value = {"a": "x\x1b[2J\x9b1m\u202e\ud800 é", "b": [1, "\u2028"]}
    line = json_line(value)
    assert "\n" not in line and not CONTROL.search(line) and "\u2028" not in line
    assert json.loads(line) == value
    assert "é" in line  # readable text stays as it is


def test_redact_takes_out_keys_and_their_leading_pieces() -> None:
    text = f"full {KEY}; cut {KEY[:12]}; short {KEY[:8]}; too short {KEY[:7]}; inner {KEY[3:]}"
    assert redact(text, [KEY]) == (
        f"full {REDACTED}; cut {REDACTED}; short {REDACTED}; too short {KEY[:7]}; inner {KEY[3:]}"
    )
    assert redact("no secret here", [KEY]) == "no secret here"
    assert redact("x EMPTY y", ["EMPTY"]) == "x EMPTY y"  # the placeholder key
    assert redact("x abcde y", ["abcde"]) == f"x {REDACTED} y"  # short secrets: where they appear whole
    cleaned = redact("Authorization: Bearer tok123 api-key=zzz", [])
    assert "tok123" not in cleaned and "zzz" not in cleaned


@given(st.text(), st.text())
def test_redact_leaves_no_leading_piece(before: str, after: str) -> None:
    assert KEY[:8] not in redact(before + KEY[: 8 + len(after) % 12] + after, [KEY])


def test_describe_is_one_bounded_line() -> None:
    text = describe(ValueError(f"line one\nline\ttwo {KEY} \ud800" + "x" * 5000), [KEY])
    assert "\n" not in text and KEY[:8] not in text and len(text) <= 2000
    assert text.startswith("ValueError: line one line two [REDACTED] \ufffd")


def test_urls_keep_their_secrets_apart() -> None:
    url = f"http://kflow:{KEY}@host:8000/v1?api-key=q1-secret-value&tenant=a&access_token=t0k&sig=s1"
    found = address(url)
    assert found.base == "http://host:8000/v1"
    assert found.key == KEY
    assert found.query == {"api-key": "q1-secret-value", "tenant": "a", "access_token": "t0k", "sig": "s1"}
    shown = f"http://host:8000/v1?api-key={REDACTED}&tenant=a&access_token={REDACTED}&sig={REDACTED}"
    assert found.shown == shown and shown_url(url) == shown
    assert set(url_secrets(url)) >= {KEY, "q1-secret-value", "t0k", "s1"}
    assert address(f"https://{KEY}@h/v1").key == KEY  # a key alone in the user-info
    assert address("http://u:p%40ss@h/v1").key == "p@ss"
    again = address(shown)  # read back from the store: its secrets are gone, not sent as "[REDACTED]"
    assert again.query == {"tenant": "a"} and again.withheld == ("api-key", "access_token", "sig")
    with pytest.raises(ValueError) as refused:
        check_urls(f"ftp://u:{KEY}@h/v1")
    assert KEY not in str(refused.value)


@pytest.mark.parametrize(
    ("final", "answer"),
    [
        ("\\boxed{\x1b[31m42\x1b[0m}", None),
        ("\\boxed{\x1b42}", None),
        ("\\boxed{4\x072}", None),
        ("The answer is \x1b[1m42\x1b[0m", None),
        ("[Answer]: 4\x1b[2J2", None),
        ("so 17, then \x1b[31m", "17"),
        ("\\boxed{42}", "42"),
        ("the answer is 7\x07", None),
    ],
)
def test_an_integer_holding_escape_codes_is_no_integer(final: str, answer: str | None) -> None:
    assert read_answer(final, "integer") == answer


def deep(levels: int) -> str:
    return '{"a": ' + "[" * levels + "]" * levels + "}"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (deep(20_000), f"nest at most {MAX_EXTRA_BODY_DEPTH} levels"),
        (deep(MAX_EXTRA_BODY_DEPTH), f"nest at most {MAX_EXTRA_BODY_DEPTH} levels"),
        ('{"a": NaN}', "must not hold NaN"),
        ('{"a": [1, -Infinity]}', "must not hold -Infinity"),
        ('{"a": "' + "x" * MAX_EXTRA_BODY_BYTES + '"}', "at most 65,536 bytes"),
        ({"a": float("nan")}, "must not hold nan"),
        ({"a": "x" * MAX_EXTRA_BODY_BYTES}, "at most 65,536 bytes"),
    ],
)
def test_extra_body_bounds(given: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_options({"extra_body": given})


def test_extra_body_nested_in_python_past_the_interpreters_recursion() -> None:
    value: list[object] = []
    for _ in range(50_000):
        value = [value]
    with pytest.raises(ValueError, match="nest at most"):
        parse_options({"extra_body": {"a": value}})


def test_extra_body_within_bounds_and_stream_options_refused() -> None:
    assert parse_options({"extra_body": deep(MAX_EXTRA_BODY_DEPTH - 2)}).extra_body is not None
    with pytest.raises(ValueError, match="may not set stream_options"):
        resolve_params({"extra_body": '{"stream_options": {"include_usage": false}}'})
