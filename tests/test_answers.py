"""Reading an answer's text as JSON: objects and arrays are read (as Python reads them where
orjson refuses), anything else is free text."""

from __future__ import annotations

import math

import pytest

from batchpilot.answers import parsed_answer


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('{"genre": "noir"}', {"genre": "noir"}),
        (" \n\t[1, 2]", [1, 2]),
        ("[18446744073709551616]", [18446744073709551616]),
        ("Drama", None),
        ("42", None),
        ('"{a quoted brace}"', None),
        ("", None),
        ("   ", None),
        ("{not json", None),
        (None, None),
    ],
)
def test_an_answer_is_read_as_json_only_when_it_holds_an_object_or_an_array(
    text: str | None, parsed: object
) -> None:
    assert parsed_answer(text) == parsed


def test_an_object_python_reads_and_orjson_refuses_is_read() -> None:
    found = parsed_answer('{"score": NaN}')
    assert isinstance(found, dict) and math.isnan(found["score"])
