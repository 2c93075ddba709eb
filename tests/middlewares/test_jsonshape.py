"""The JSON shape check: repeated top-level keys and deep nesting refused, whichever path
(the one-pass check of small flat objects, or the full scan) a body takes."""
from __future__ import annotations

import pytest
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
