"""Images counted in an OpenAI answer without decoding it: keys only, escapes respected."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imagegate.proxy.passthrough import counted


@pytest.mark.parametrize(("body", "images"), [
    (b'{"created":1,"data":[{"b64_json":"aGk="},{"b64_json":"aGk="}],"usage":{}}', 2),
    (b'{"data":[{"url":"https://x/\\"url\\":"}]}', 1),  # an escaped quote inside a value
    (b'{"data":[{"revised_prompt":"say \\"b64_json\\": no","b64_json" : "x"}]}', 1),
    (b'{"data":[{"url":"url"}]}', 1),  # the value "url" is no key
    (b'{"x":"\\\\"}', 0),  # an escaped backslash ends the string
    (b'{"data":[]}', 0),
    (b"", 0),
    (b'{"data":[{"b64_json":"unterminated', 1),  # the key itself is whole
])
def test_counted_counts_image_keys_only(body: bytes, images: int) -> None:
    assert counted(body)[0] == images


def _image_keys(value: object) -> int:
    """The truth: keys named b64_json or url anywhere in the parsed answer."""
    if isinstance(value, dict):
        return sum((k in ("b64_json", "url")) + _image_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_image_keys(v) for v in value)
    return 0


_TEXT = st.lists(st.sampled_from(['"', "\\", ":", " ", "b64_json", "url", "a", "é", "{", "}",
                                   "\n"]), max_size=8).map("".join)
_NAMES = st.sampled_from(["b64_json", "url", "revised_prompt", "data", "x", 'say "url"',
                          'x "url', 'x "b64_json', 'x \\"b64_json', 'b64_json\\', "url:"])
_JSON = st.recursive(
    st.none() | st.integers() | _TEXT | _NAMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_NAMES, inner, max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(answer=_JSON, indent=st.sampled_from([None, 1, 2]), spaced=st.booleans())
def test_counted_counts_the_image_keys_of_any_json(answer: object, indent: int | None,
                                                     spaced: bool) -> None:
    """Whatever the answer holds (names inside values, escaped quotes, nesting, whitespace
    around the colon), the count is that of its parsed image keys."""
    separators = (", ", " : ") if spaced else None
    body = json.dumps({"data": answer}, indent=indent, separators=separators).encode()
    assert counted(body)[0] == _image_keys(answer)


def test_counted_steps_over_long_base64_values() -> None:
    image = "A" * 300_000
    body = json.dumps({"created": 1, "data": [{"b64_json": image, "revised_prompt": 'a "url"'},
                                              {"b64_json": image}],
                       "usage": {"total_tokens": 3}}, indent=2).encode()
    assert counted(body)[0] == 2


_USAGE = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}


@settings(max_examples=300, deadline=None)
@given(answer=_JSON, where=st.sampled_from(["before", "after", "none"]),
       indent=st.sampled_from([None, 2]))
def test_counted_finds_the_top_level_usage_wherever_the_answer_puts_it(
        answer: object, where: str, indent: int | None) -> None:
    """The images and the answer's own `usage` (before or after `data`, or none), never a
    `usage` quoted inside a value or nested in an image's object."""
    fields: dict[str, object] = {"created": 1}
    if where == "before":
        fields["usage"] = _USAGE
    fields["data"] = answer
    if where == "after":
        fields["usage"] = _USAGE
    body = json.dumps(fields, indent=indent).encode()
    images, usage = counted(body)
    assert images == _image_keys(answer)
    if where == "none":
        assert usage is None or _has_usage_key(answer)
    else:
        assert usage is not None and (usage.input_tokens, usage.output_tokens) == (5, 7)


def _has_usage_key(value: object) -> bool:
    if isinstance(value, dict):
        return "usage" in value or any(_has_usage_key(v) for v in value.values())
    return isinstance(value, list) and any(_has_usage_key(v) for v in value)


def test_counted_reads_usage_after_long_images_and_none_when_absent() -> None:
    image = "A" * 300_000
    quoted = 'a sign saying "usage": {"input_tokens": 1}'
    with_usage = json.dumps({"created": 1, "data": [{"b64_json": image, "revised_prompt": quoted}],
                             "usage": _USAGE}).encode()
    without = json.dumps({"created": 1, "data": [{"b64_json": image, "revised_prompt": quoted},
                                                 {"url": "https://x/usage"}]}).encode()
    images, usage = counted(with_usage)
    assert images == 1 and usage is not None and usage.total_tokens == 12
    assert counted(without) == (2, None)
