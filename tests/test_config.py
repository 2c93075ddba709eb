"""The config loader: strict keys, ${VAR} expansion, errors that name their path, the CLI."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagegate.config.loader import ConfigError, load_config, parse_config
from imagegate.proxy.cli import main

ROOT = Path(__file__).resolve().parents[1]


def error_of(data: dict, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return str(info.value)


def test_bundled_default_serves_local_under_openai_names() -> None:
    config = load_config()
    assert {"local", "gpt-image-1", "dall-e-2", "dall-e-3"} <= set(config.models)
    assert {p.type for p in config.providers.values()} == {"local"}
    assert not config.auth.keys


def test_unknown_provider_names_its_path() -> None:
    msg = error_of({"providers": {"a": {"type": "local"}},
                    "models": {"x": {"routes": [{"provider": "y"}]}}})
    assert msg == "models.x.routes[0].provider: unknown provider 'y'"


@pytest.mark.parametrize(("data", "expected"), [
    ({"servr": {}}, "unknown key `servr`"),
    ({"server": {"prot": 1}}, "server: unknown key `prot`"),
    ({"providers": {"o": {"type": "openai", "api_key": "k", "base_ur": "x"}}},
     "providers.o: unknown key `base_ur`"),
    ({"providers": {"o": {"type": "ark2", "api_key": "k"}}}, "providers.o.type: Invalid value"),
    ({"providers": {"l": {"type": "local"}},
      "models": {"m": {"routes": [{"provider": "l", "priority": "high"}]}}},
     "models.m.routes[0].priority: Expected `int`, got `str`"),
    ({"server": {"port": 70000}}, "server.port: Expected `int` <= 65535"),
    ({"auth": {"keys": [{"id": "a"}]}}, "auth.keys[0]: exactly one of key or key_sha256"),
    ({"state": {"redis_cluster": True, "redis_sentinel": {"service": "s", "nodes": ["h:1"]}}},
     "state: redis_cluster and redis_sentinel exclude each other"),
    ({"state": {"redis_cluster": True, "redis_url": "redis://h:6379/2"}},
     "state: a Redis Cluster has only database 0"),
    ({"state": {"redis_sentinel": {"service": "s", "nodes": ["h:1", "h2"]}}},
     "state.redis_sentinel: nodes[1]: expected \"host:port\", got 'h2'"),
    ({"state": {"redis_sentinel": {"service": "s", "nodes": []}}},
     "state.redis_sentinel.nodes: Expected `array` of length >= 1"),
])
def test_bad_configs_name_the_path(data: dict, expected: str) -> None:
    assert error_of(data).startswith(expected)


def test_a_sentinel_config_keeps_its_password_out_of_repr() -> None:
    state = parse_config({"state": {"backend": "redis", "redis_sentinel": {
        "service": "imagegate", "nodes": ["10.0.0.7:26379", "[::1]:26380"],
        "password": "sentinel-secret"}}}, env={}).state
    assert state.redis_sentinel is not None and not state.redis_cluster
    assert state.redis_sentinel.addresses() == [("10.0.0.7", 26379), ("::1", 26380)]
    assert "sentinel-secret" not in repr(state)


def test_env_vars_expand_with_defaults_and_types() -> None:
    data = {"server": {"port": "${PORT}", "host": "${HOST:-0.0.0.0}"},
            "providers": {"o": {"type": "openai", "api_key": "${KEY}"}}}
    config = parse_config(data, env={"PORT": "9001", "KEY": "sk-1"})
    assert config.server.port == 9001 and config.server.host == "0.0.0.0"
    assert config.providers["o"].api_key == "sk-1"
    assert "sk-1" not in repr(config.providers["o"])


def test_missing_env_var_is_named() -> None:
    msg = error_of({"providers": {"o": {"type": "openai", "api_key": "${OPENAI_KEY}"}}})
    assert msg == "providers.o.api_key: environment variable OPENAI_KEY is not set"


def test_check_config_prints_routes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers: {l: {type: local}}\nmodels:\n  pics: {routes: [{provider: l}]}\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pics" in out and "local" in out


def test_check_config_fails_with_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers: {l: {type: local}}\nmodels:\n  x: {routes: [{provider: y}]}\n")
    assert main(["check-config", str(path)]) == 1
    assert "models.x.routes[0].provider: unknown provider 'y'" in capsys.readouterr().err


def test_hash_key_and_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "imagegate", "hash-key", "abc"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config/examples").glob("*.yaml")))
def test_bundled_examples_load(name: str) -> None:
    env = {k: "x" for k in ("OPENAI_API_KEY", "ARK_API_KEY", "OPENROUTER_API_KEY",
                            "GEMINI_API_KEY", "ZAI_API_KEY", "TEAM_A_KEY")}
    import yaml

    parse_config(yaml.safe_load((ROOT / "config/examples" / name).read_text()), env=env)


def test_model_defaults_are_checked() -> None:
    base = {"providers": {"l": {"type": "local"}}}

    def model(defaults: dict) -> dict:
        return {**base, "models": {"m": {"routes": [{"provider": "l"}], "defaults": defaults}}}

    assert error_of(model({"sise": "2K"})).startswith("models.m.defaults: 'sise' cannot have")
    assert error_of(model({"n": 50})) == "models.m.defaults.n: Expected `int` <= 10"
    assert "transparent background" in error_of(model({"background": "transparent",
                                                       "output_format": "jpeg"}))
    assert parse_config(model({"size": "2K", "n": 2}), env={}).models["m"].defaults["n"] == 2


def test_keys_must_be_distinct_and_aliases_resolve() -> None:
    data = {"providers": {"l": {"type": "local"}},
            "models": {"pics": {"routes": [{"provider": "l"}], "aliases": ["p2"]}},
            "auth": {"keys": [{"id": "a", "key": "k1", "models": ["p2"]}]}}
    assert parse_config(data, env={}).auth.keys[0].models == ["pics"]
    data["auth"]["keys"].append({"id": "b", "key_sha256": hashlib.sha256(b"k1").hexdigest()})
    assert error_of(data) == "auth.keys[1]: the same secret as auth.keys[0]"


def test_env_values_stay_strings_unless_a_number_is_wanted() -> None:
    data = {"server": {"port": "${PORT}"},
            "providers": {"o": {"type": "openai", "api_key": "${KEY}"}, "l": {"type": "local"}},
            "models": {"m": {"routes": [{"provider": "l"}], "defaults": {"n": "${N}"}}}}
    config = parse_config(data, env={"PORT": "9002", "KEY": "1234", "N": "3"})
    assert config.server.port == 9002 and config.providers["o"].api_key == "1234"
    assert config.models["m"].defaults == {"n": 3}
    config = parse_config(data, env={"PORT": "9002", "KEY": "no", "N": "3"})
    assert config.providers["o"].api_key == "no"


def test_designs_unquoted_vars_in_flow_mappings_load(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "providers:\n"
        "  openai: {type: openai, base_url: https://api.openai.com/v1, api_key: ${OAI}}\n"
        "  local: {type: local}\n"
        "server: {port: ${PORT:-8081}}\n"
        "models:\n  m: {routes: [{provider: openai, model: ${MODEL:-gpt-image-1}}]}\n")
    monkeypatch.setenv("OAI", "sk-1")
    config = load_config(path)
    assert config.providers["openai"].api_key == "sk-1" and config.server.port == 8081
    assert config.models["m"].routes[0].model == "gpt-image-1"


def test_check_config_says_memory_limits_hold_per_process(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("auth: {keys: [{id: a, key: k, limits: {requests_per_minute: 5}}]}\n")
    assert main(["check-config", str(path)]) == 0
    assert "limits and budgets of a hold per process" in capsys.readouterr().out


def test_check_config_warns_of_unpriced_routes_a_budget_reaches(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "auth: {keys: [{id: a, key: k, budget: {usd_per_day: 5}},\n"
        "              {id: b, key: k2, models: [priced], budget: {usd_per_day: 5}}]}\n"
        "providers: {local: {type: local}}\n"
        "models:\n"
        "  priced: {routes: [{provider: local, price: {per_image: 0.04}}]}\n"
        "  free: {routes: [{provider: local}]}\n")
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "$0.04/image" in out and "unpriced" in out
    assert err.splitlines() == ["warning: models.free.routes[0] (local) has no price: the USD "
                                "budget of key 'a' cannot count what it spends there"]


@pytest.mark.parametrize(("price", "problem"), [
    ({}, "exactly one of per_image or tokens"),
    ({"per_image": 0.1, "tokens": {"output": 1}}, "exactly one of per_image or tokens"),
    ({"per_image": {"1024x1024/ultra": 0.1}}, "unknown quality 'ultra'"),
    ({"per_image": {"a b": 0.1}}, "expected SIZE/QUALITY"),
    ({"per_image": -1}, "Expected `float` >= 0"),
    ({"tokens": {"input": 1, "input_text": 2}}, "not both"),
])
def test_bad_prices_are_errors_with_their_path(price: dict[str, Any], problem: str) -> None:
    data = {"providers": {"local": {"type": "local"}},
            "models": {"m": {"routes": [{"provider": "local", "price": price}]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={})
    assert caught.value.path.startswith("models.m.routes[0].price")
    assert problem in caught.value.message


def test_limit_overrides_name_known_models_and_aliases_resolve() -> None:
    base: dict[str, Any] = {"providers": {"local": {"type": "local"}},
                            "models": {"m": {"aliases": ["mm"], "routes": [{"provider": "local"}]}}}
    config = parse_config({**base, "auth": {"default_limits": {
        "models": {"mm": {"images_per_minute": 2}}}}}, env={})
    assert config.auth.default_limits is not None
    assert list(config.auth.default_limits.models) == ["m"]
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "auth": {"keys": [{"id": "a", "key": "k", "limits": {
            "models": {"nope": {"images_per_minute": 2}}}}]}}, env={})
    assert caught.value.path == "auth.keys[0].limits.models"


def test_workers_without_redis_say_limits_are_per_worker() -> None:
    from imagegate.proxy.cli import per_worker_warning

    limited = parse_config({"auth": {"keys": [{"id": "a", "key": "k", "budget": {
        "images_per_day": 5}}]}}, env={})
    warning = per_worker_warning(limited, 4)
    assert warning is not None and "up to 4 times each limit" in warning
    assert per_worker_warning(limited, 1) is None
    assert per_worker_warning(parse_config({}, env={}), 4) is None
    shared = parse_config({"auth": {"default_limits": {"requests_per_minute": 5}},
                           "state": {"backend": "redis"}}, env={})
    assert per_worker_warning(shared, 4) is None
