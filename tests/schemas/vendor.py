"""Re-vendors openai_images.json from a checkout of github.com/openai/openai-openapi.

    python3 -m tests.schemas.vendor /path/to/openai-openapi <commit>

Copies the named component schemas verbatim (without their `x-oaiMeta` examples) and records the
commit; nothing is fetched: the tests stay offline.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

NAMES = ("ImagesResponse", "Image", "ImageGenUsage", "ImageGenInputUsageDetails",
         "ImageGenOutputTokensDetails", "ImagesUsage", "ImageGenStreamEvent",
         "ImageGenPartialImageEvent", "ImageGenCompletedEvent", "ImageEditStreamEvent",
         "ImageEditPartialImageEvent", "ImageEditCompletedEvent", "ErrorResponse", "Error")
OUT = Path(__file__).with_name("openai_images.json")


def main(repo: str, commit: str) -> None:
    spec = json.loads(subprocess.run(["git", "-C", repo, "show", f"{commit}:openapi.json"],
                                     check=True, capture_output=True).stdout)
    schemas = spec["components"]["schemas"]
    picked = {name: {k: v for k, v in schemas[name].items() if k != "x-oaiMeta"}
              for name in NAMES}
    missing = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(picked))) - set(NAMES)
    if missing:
        raise SystemExit(f"add these referenced schemas to NAMES: {sorted(missing)}")
    when = subprocess.run(["git", "-C", repo, "show", "-s", "--format=%cI", commit], check=True,
                          capture_output=True, text=True).stdout.strip()
    doc = {"$comment": "Vendored verbatim (x-oaiMeta examples removed) from OpenAI's OpenAPI "
                       "spec: github.com/openai/openai-openapi, openapi.json at commit "
                       f"{commit}, components.schemas. Refresh with tests/schemas/vendor.py.",
           "source": {"repository": "https://github.com/openai/openai-openapi",
                      "path": "openapi.json", "commit": commit, "committed": when},
           "components": {"schemas": picked}}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
