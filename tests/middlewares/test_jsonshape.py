"""The JSON shape check: repeated top-level keys and deep nesting refused, whichever path
(the one-pass check of small flat objects, or the full scan) a body takes."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imagegate.config.errors import GatewayError
from imagegate.middlewares.jsonshape import MAX_DEPTH, check_json_shape

REPEATED = [
    b'{"model": "a", "prompt": "p", "model": "b"}',
    b'{"model" :"a","model"\t: "b"}',  # whitespace before the colon
    b'{"model": "a", "\\u006dodel": "b"}',  # the same key, escaped
    b'{"prompt": "x", "n": 1, "prompt": "y"}',
    b'{"model": "a", "images": [{"image_url": "u"}], "model": "b"}',  # not flat: full scan
    b'{"model": "a", "prompt": "' + b"p" * 20000 + b'", "model": "b"}',  # large: full scan
]
ACCEPTED = [
    b'{"model": "gpt-image-1", "prompt": "an otter", "n": 1}',
    b'{"prompt": "say \\"model\\": 1", "model": "m"}',  # a key-like text inside a string
    b'{"prompt": "a {brace} and [bracket]", "model": "m"}',
    b'{"images": [{"image_url": "u"}, {"image_url": "v"}], "model": "m"}',  # nested repeats
    b'{"model": "m", "prompt": "' + b"q" * 20000 + b'"}',
]


@pytest.mark.parametrize("raw", REPEATED)
def test_a_key_named_twice_is_refused(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        check_json_shape(raw)
    assert "more than once" in caught.value.message


@pytest.mark.parametrize("raw", ACCEPTED)
def test_bodies_with_each_key_once_pass(raw: bytes) -> None:
    check_json_shape(raw)


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    deep = b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    with pytest.raises(GatewayError) as caught:
        check_json_shape(deep)
    assert "nested" in caught.value.message
    check_json_shape(b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}")


KEYS = st.sampled_from(["model", "prompt", "n", "size", 'a"b', "a\\b", "é", "\u2028", "a:b",
                       ": "])
VALUES = st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none(),
                   st.text(alphabet=': a,"', max_size=6), st.floats(allow_nan=False),
                   st.lists(st.integers(), max_size=2), st.dictionaries(KEYS, st.integers(),
                                                                        max_size=2))


@given(st.lists(st.tuples(KEYS, VALUES, st.booleans()), max_size=6), st.sampled_from([" ", ""]))
def test_the_check_refuses_exactly_the_bodies_that_repeat_a_key(
        pairs: list[tuple[str, object, bool]], space: str) -> None:
    """Whatever the escapes (one key written raw, its twin as \\u escapes), nesting and
    spacing, a body is refused iff a top-level key, as the decoder reads it, repeats."""
    raw = ("{" + ",".join(f"{json.dumps(k, ensure_ascii=escaped)}{space}:{space}"
                          f"{json.dumps(v, ensure_ascii=escaped)}" for k, v, escaped in pairs)
           + "}").encode()
    keys = [k for k, _, _ in pairs]
    if len(set(keys)) == len(keys):
        check_json_shape(raw)
    else:
        with pytest.raises(GatewayError):
            check_json_shape(raw)
