"""Images counted in an OpenAI answer without decoding it: keys only, escapes respected."""
from __future__ import annotations

import pytest
from imagegate.proxy.passthrough import images_in


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
def test_images_in_counts_image_keys_only(body: bytes, images: int) -> None:
    assert images_in(body) == images
