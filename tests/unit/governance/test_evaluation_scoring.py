"""Scoring a tool's answer against each kind of expectation (core.evaluation), and what a test accepts."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from api.schemas.evaluations import EvalTestCreate
from core.evaluation import Answer, answer_from_result, evaluate, excerpt, parse_expectation, score


def expect(**data: Any) -> Any:
    return parse_expectation(data)


def text(value: str, **kw: Any) -> Answer:
    return Answer(text=value, **kw)


@pytest.mark.parametrize(
    ("expectation", "answer", "passed", "points"),
    [
        ({"kind": "exact", "value": "echo: hi"}, "echo: hi\n", True, 1.0),
        ({"kind": "exact", "value": "echo: hi", "strip": False}, "echo: hi\n", False, 0.0),
        ({"kind": "exact", "value": "Echo: hi"}, "echo: hi", False, 0.0),
        ({"kind": "contains", "value": "UTC"}, '{"timezone": "UTC"}', True, 1.0),
        ({"kind": "contains", "value": "utc"}, '{"timezone": "UTC"}', False, 0.0),
        ({"kind": "contains", "value": "utc", "ignore_case": True}, '{"timezone": "UTC"}', True, 1.0),
        ({"kind": "regex", "pattern": r"^\d{4}-\d{2}-\d{2}T"}, "2026-12-02T10:00:00", True, 1.0),
        ({"kind": "regex", "pattern": r"^\d{4}$"}, "2026-12", False, 0.0),
        ({"kind": "similarity", "value": "echo: hello world", "threshold": 0.9}, "echo: hello wrld", True, None),
        ({"kind": "similarity", "value": "echo: hello world", "threshold": 0.9}, "something else", False, None),
    ],
)
def test_text_expectations(expectation: dict[str, Any], answer: str, passed: bool, points: float | None) -> None:
    result = score(expect(**expectation), text(answer))
    assert result.passed is passed, result
    if points is not None:
        assert result.score == points
    else:
        assert 0.0 <= result.score <= 1.0
        assert (result.score >= 0.9) is passed


def test_similarity_scores_grow_with_likeness() -> None:
    target = expect(kind="similarity", value="the quick brown fox", threshold=0.0)
    close = score(target, text("the quick brown fix")).score
    far = score(target, text("lorem ipsum")).score
    assert 1.0 > close > far >= 0.0
    assert score(target, text("the quick brown fox")).score == 1.0


def test_json_subset_scores_the_share_of_matching_values() -> None:
    want = expect(kind="json_subset", value={"timezone": "UTC", "is_dst": False, "list": [1, 2]})
    full = score(want, Answer(text="", structured={"timezone": "UTC", "is_dst": False, "list": [1, 2, 3], "x": 1}))
    assert full.passed and full.score == 1.0
    half = score(want, Answer(text='{"timezone": "UTC", "is_dst": true, "list": [1, 5]}'))
    assert not half.passed and half.score == 0.5, half
    # JSON booleans are not numbers: 0 is not false.
    assert not score(expect(kind="json_subset", value={"a": False}), Answer(text='{"a": 0}')).passed
    assert score(expect(kind="json_subset", value={"a": 1}), Answer(text='{"a": 1.0}')).passed
    not_json = score(want, text("plain words"))
    assert not not_json.passed and "not JSON" in not_json.detail


def test_json_schema_validates_structured_content_or_the_text() -> None:
    schema = {
        "type": "object",
        "properties": {"result": {"type": "integer", "minimum": 0}},
        "required": ["result"],
    }
    want = expect(kind="json_schema", schema=schema)
    assert score(want, Answer(text="5", structured={"result": 5})).passed
    assert score(want, Answer(text='{"result": 7}')).passed
    wrong = score(want, Answer(text='{"result": -1}'))
    assert not wrong.passed and "at result" in wrong.detail, wrong


def test_the_tool_error_flag_decides_first() -> None:
    want = expect(kind="contains", value="boom")
    failed = evaluate(want, Answer(text="boom", is_error=True), expect_error=False)
    assert not failed.passed and "reported an error" in failed.detail
    assert evaluate(want, Answer(text="boom", is_error=True), expect_error=True).passed
    assert not evaluate(want, Answer(text="boom"), expect_error=True).passed


def test_a_hostile_answer_cannot_stall_a_regular_expression() -> None:
    # Catastrophic backtracking: (a|aa)+$ against many a's and a final mismatch takes exponential time.
    want = expect(kind="regex", pattern=r"^(a|aa)+$")
    started = time.monotonic()
    result = score(want, text("a" * 60 + "!"))
    assert not result.passed and "longer than" in result.detail, result
    assert time.monotonic() - started < 30


def test_answers_from_tool_results_and_excerpts() -> None:
    answer = answer_from_result(
        {
            "content": [
                {"type": "text", "text": "one"},
                {"type": "image", "data": "AA=="},
                {"type": "text", "text": "two"},
            ],
            "structuredContent": {"result": 1},
            "isError": False,
        }
    )
    assert answer == Answer(text="one\ntwo", structured={"result": 1}, is_error=False)
    assert excerpt(Answer(text="x" * 2000)).endswith("…") and len(excerpt(Answer(text="x" * 2000))) == 501
    assert excerpt(Answer(text="", structured={"a": 1})) == '{"a": 1}'


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"expectation": {"kind": "regex", "pattern": "(unclosed"}}, "not a valid regular expression"),
        ({"expectation": {"kind": "json_schema", "schema": {"type": "nonsense"}}}, "not a valid JSON Schema"),
        ({"expectation": {"kind": "telepathy", "value": "x"}}, "telepathy"),
        ({"expectation": {"kind": "similarity", "value": "x", "threshold": 1.5}}, "threshold"),
        ({"expectation": {"kind": "exact", "value": "x", "extra": 1}}, "extra"),
        ({"tool": "rm -rf /"}, "tool"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"arguments": {"blob": "x" * 70000}}, "64 KiB"),
    ],
)
def test_a_test_definition_is_validated(body: dict[str, Any], complaint: str) -> None:
    base = {"name": "t", "tool": "echo", "arguments": {}, "expectation": {"kind": "exact", "value": "x"}}
    with pytest.raises(ValidationError) as caught:
        EvalTestCreate.model_validate({**base, **body})
    assert complaint in str(caught.value)
