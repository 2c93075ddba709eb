"""storage.backend s3: config errors with their paths, secrets kept out of reprs and logs, the
client imported only when configured, the lifecycle rules the object tags are made for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagegate.config.loader import ConfigError, parse_config
from imagegate.middlewares.redact import configured_secrets
from imagegate.proxy.s3 import EXPIRE_DAYS, expire_days

from tests.s3_server import MotoServer, s3_target

ROOT = Path(__file__).resolve().parents[1]
BUCKET = {"bucket": "imagegate-images"}


@pytest.mark.parametrize("storage, path, words", [
    ({"backend": "s3"}, "storage", "s3: required"),
    ({"backend": "s3", "s3": {}}, "storage.s3", "bucket: required"),
    ({"backend": "s3", "s3": {**BUCKET, "access_key_id": "AKIA1"}}, "storage.s3",
     "go together"),
    ({"backend": "s3", "s3": {**BUCKET, "prefix": "/images/"}}, "storage.s3", "prefix"),
    ({"backend": "s3", "s3": {**BUCKET, "presign": "yes"}}, "storage.s3.presign", "bool"),
    ({"backend": "s3", "s3": {**BUCKET, "bucekt": "x"}}, "storage.s3", "unknown key"),
    ({"backend": "s3", "s3": {**BUCKET, "endpoint_url": "minio:9000"}}, "storage.s3",
     "endpoint_url"),
    ({"backend": "s3", "ttl_s": 8 * 86400, "s3": BUCKET}, "storage", "7 days"),
    ({"backend": "gcs"}, "storage.backend", "Invalid enum value 'gcs'"),
])
def test_bad_s3_configs_name_their_path(storage: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"storage": storage}, env={})
    assert caught.value.path == path and words in str(caught.value)


def test_s3_without_its_extra_installed_says_which_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiobotocore" else real(name, *a))
    with pytest.raises(ConfigError) as caught:
        parse_config({"storage": {"backend": "s3", "s3": BUCKET}}, env={})
    assert caught.value.path == "storage" and "pip install 'imagegate[s3]'" in str(caught.value)
    parse_config({"storage": {"backend": "filesystem"}}, env={})  # nothing else needs it


def test_defaults_and_the_aws_chain_and_no_secret_in_repr() -> None:
    chain = parse_config({"storage": {"backend": "s3", "s3": BUCKET}}, env={}).storage.s3
    assert chain is not None and (chain.prefix, chain.region, chain.presign) == (
        "images/", "us-east-1", True)
    assert chain.endpoint_url is None and chain.access_key_id == ""  # the standard chain
    config = parse_config({"storage": {"backend": "s3", "ttl_s": 30 * 86400, "s3": {
        **BUCKET, "access_key_id": "AKIAEXAMPLE", "secret_access_key": "${SECRET}",
        "presign": False}}}, env={"SECRET": "wJalrXUtnFEMI/K7MDENG"})
    assert "wJalrXUtnFEMI" not in repr(config) and "AKIAEXAMPLE" not in repr(config.storage)
    assert "wJalrXUtnFEMI/K7MDENG" in configured_secrets(config)  # scrubbed from every log


def test_the_default_config_never_imports_the_s3_client() -> None:
    code = ("import sys; from imagegate.config.loader import load_config;"
            "from imagegate.proxy.app import create_app; create_app(load_config(None));"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiobotocore', 'botocore', 'boto3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_expiry_tags_round_up_to_a_lifecycle_rule() -> None:
    assert [expire_days(s) for s in (1, 3600, 86400, 86401, 5 * 86400, 400 * 86400)] == [
        "1", "1", "1", "2", "7", "keep"]


def test_the_lifecycle_rules_match_the_tags_and_a_server_takes_them() -> None:
    rules = json.loads((ROOT / "config/deploy/s3-lifecycle.json").read_text())
    by_tag = {r["Filter"]["Tag"]["Value"]: r["Expiration"]["Days"] for r in rules["Rules"]
              if r["Filter"]["Tag"]["Key"] == "imagegate-expire-days"}
    assert by_tag == {str(d): d for d in EXPIRE_DAYS}
    server = MotoServer()  # never an outside server: its bucket's rules are the user's
    with s3_target(server) as s3:
        s3.client.put_bucket_lifecycle_configuration(Bucket=s3.bucket,
                                                     LifecycleConfiguration=rules)
        stored = s3.client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]
        assert sorted(r["ID"] for r in stored) == sorted(r["ID"] for r in rules["Rules"])
    server.stop()
