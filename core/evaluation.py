"""Evaluation tests and how a tool's answer is scored against one. Pure: no I/O, no clock.

A test names a tool, the arguments to call it with and an expectation. Expectations:

- `exact`: the answer's text equals `value` (surrounding whitespace ignored unless `strip` is false);
- `contains`: the text contains `value` (optionally ignoring case);
- `regex`: `pattern` matches somewhere in the text (Python syntax, with a matching time limit, so a
  hostile answer cannot stall the worker);
- `json_subset`: the answer (its structured content, or its text parsed as JSON) contains `value`:
  every key of an object, every element of an array in order, leaves equal. The score is the share of
  `value`'s leaves that match;
- `json_schema`: the answer validates against `schema` (JSON Schema 2020-12; no remote references);
- `similarity`: the Jaro-Winkler similarity of the text to `value` is at least `threshold`; the score
  is the similarity.

A tool that answers with `isError` fails every expectation, unless the test sets `expect_error`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jellyfish
import jsonschema
import regex
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

MAX_TEXT = 64 * 1024  # of an answer, scored; the rest is ignored
EXCERPT = 500  # characters of the answer kept with a result
REGEX_TIMEOUT_SECONDS = 1.0
TOOL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$")


class _Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Exact(_Expectation):
    kind: Literal["exact"]
    value: str = Field(max_length=MAX_TEXT)
    strip: bool = True


class Contains(_Expectation):
    kind: Literal["contains"]
    value: str = Field(min_length=1, max_length=MAX_TEXT)
    ignore_case: bool = False


class Regex(_Expectation):
    kind: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=2000)
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class JsonSubset(_Expectation):
    kind: Literal["json_subset"]
    value: Any = Field(description="JSON the answer must contain")


class JsonSchema(_Expectation):
    kind: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema", description="A JSON Schema (2020-12)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _valid(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        if len(json.dumps(schema)) > MAX_TEXT:
            raise ValueError(f"the schema is larger than {MAX_TEXT} bytes")
        return schema


class Similarity(_Expectation):
    kind: Literal["similarity"]
    value: str = Field(min_length=1, max_length=MAX_TEXT)
    threshold: float = Field(default=0.9, ge=0.0, le=1.0, description="Least Jaro-Winkler similarity that passes")
    ignore_case: bool = False


AnyExpectation = Exact | Contains | Regex | JsonSubset | JsonSchema | Similarity
Expectation = Annotated[AnyExpectation, Field(discriminator="kind")]


@dataclass(frozen=True)
class Answer:
    """What a tool call gave back: its text content joined, its structured content, whether it is an error."""

    text: str
    structured: Any = None
    is_error: bool = False


@dataclass(frozen=True)
class Score:
    passed: bool
    score: float  # 0..1
    detail: str


def answer_from_result(result: dict[str, Any]) -> Answer:
    """An `Answer` from a `tools/call` result as JSON (content blocks, structuredContent, isError)."""
    parts: list[str] = []
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return Answer(
        text="\n".join(parts),
        structured=result.get("structuredContent"),
        is_error=bool(result.get("isError")),
    )


def _as_json(answer: Answer) -> tuple[bool, Any]:
    if answer.structured is not None:
        return True, answer.structured
    try:
        return True, json.loads(answer.text[:MAX_TEXT])
    except ValueError:
        return False, None


def _leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_leaves(v) for v in value.values()) or 1
    if isinstance(value, list):
        return sum(_leaves(v) for v in value) or 1
    return 1


def _matching_leaves(expected: Any, actual: Any) -> int:
    """How many of `expected`'s leaves are found at the same place in `actual`."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return 0
        if not expected:
            return 1
        return sum(_matching_leaves(v, actual[k]) for k, v in expected.items() if k in actual)
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return 0
        if not expected:
            return 1
        return sum(_matching_leaves(e, a) for e, a in zip(expected, actual, strict=False))
    # JSON leaves: 1 and 1.0 are equal, True and 1 are not.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return int(type(expected) is type(actual) and expected == actual)
    return int(expected == actual)


def score(expectation: AnyExpectation, answer: Answer) -> Score:
    text = answer.text[:MAX_TEXT]
    if isinstance(expectation, Exact):
        got, want = (text.strip(), expectation.value.strip()) if expectation.strip else (text, expectation.value)
        ok = got == want
        return Score(ok, float(ok), "equal" if ok else "the answer differs from the expected text")
    if isinstance(expectation, Contains):
        hay, needle = (
            (text.casefold(), expectation.value.casefold())
            if expectation.ignore_case
            else (
                text,
                expectation.value,
            )
        )
        ok = needle in hay
        return Score(ok, float(ok), "found" if ok else "the expected text is not in the answer")
    if isinstance(expectation, Regex):
        flags = regex.IGNORECASE if expectation.ignore_case else 0
        try:
            found = regex.search(expectation.pattern, text, flags=flags, timeout=REGEX_TIMEOUT_SECONDS)
        except TimeoutError:
            return Score(False, 0.0, f"the pattern took longer than {REGEX_TIMEOUT_SECONDS:g} s to match")
        ok = found is not None
        return Score(ok, float(ok), "matched" if ok else "the pattern does not match the answer")
    if isinstance(expectation, Similarity):
        a, b = (text.casefold(), expectation.value.casefold()) if expectation.ignore_case else (text, expectation.value)
        similarity = round(float(jellyfish.jaro_winkler_similarity(a, b)), 4)
        ok = similarity >= expectation.threshold
        return Score(ok, similarity, f"similarity {similarity:.3f} (threshold {expectation.threshold:g})")
    parsed, value = _as_json(answer)
    if not parsed:
        return Score(False, 0.0, "the answer is not JSON and has no structured content")
    if isinstance(expectation, JsonSubset):
        total = _leaves(expectation.value)
        matched = _matching_leaves(expectation.value, value)
        ok = matched == total
        return Score(ok, round(matched / total, 4), f"{matched} of {total} expected values match")
    validator = jsonschema.Draft202012Validator(expectation.json_schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return Score(True, 1.0, "valid")
    first = errors[0]
    where = "/".join(str(p) for p in first.absolute_path) or "(root)"
    return Score(False, 0.0, f"{len(errors)} schema error(s); at {where}: {first.message[:300]}")


def evaluate(expectation: AnyExpectation, answer: Answer, *, expect_error: bool) -> Score:
    """Score an answer, taking the tool's error flag into account."""
    if answer.is_error and not expect_error:
        return Score(False, 0.0, f"the tool reported an error: {answer.text[:300]}")
    if expect_error and not answer.is_error:
        return Score(False, 0.0, "the tool was expected to report an error and did not")
    return score(expectation, answer)


def excerpt(answer: Answer) -> str:
    text = answer.text
    if not text and answer.structured is not None:
        text = json.dumps(answer.structured, ensure_ascii=False)
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


def parse_expectation(data: dict[str, Any]) -> AnyExpectation:
    """A stored expectation back as its model."""
    return _ADAPTER.validate_python(data)


_ADAPTER: TypeAdapter[Any] = TypeAdapter(Expectation)
