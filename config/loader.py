"""Reads the YAML config: `${VAR}` expansion, strict typing, and errors that name their path."""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml
from imagegate.config.api import ImageGenerateRequest
from imagegate.config.prices import check_price
from imagegate.config.schema import (
    PROVIDER_TYPES,
    Config,
    Limits,
    ModelConfig,
    Provider,
    Route,
)

EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_CONFIG = EXAMPLES / "default.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# a whole `${VAR}` value written unquoted in YAML (`api_key: ${KEY}}` in a flow mapping is not
# valid YAML); it is quoted before parsing, which changes nothing since values stay strings
_BARE_VAR = re.compile(r"(?:(?<=[:\[,-] )|(?<=\[))(\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\"'\n]*)?\})"
                       r"(?=\s*(?:[,}\]#]|$))", re.M)
_AT = re.compile(r" - at `\$(.*)`$")
# request fields a model's `defaults:` may fill in (not the prompt, the model or the stream mode)
DEFAULTABLE = frozenset(ImageGenerateRequest.__struct_fields__) - {"prompt", "model", "stream"}
_NAMED_MAPS: dict[str, type] = {"providers": Provider, "models": ModelConfig}  # type: ignore[dict-item]


class ConfigError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


def _expand(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, _join(path, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(path, f"environment variable {name} is not set")

    # values stay strings (a key "1234" or "no" must not turn into a number or a bool);
    # `port: ${PORT}` becomes an int when converted, with strict=False
    return _VAR.sub(sub, value)


def _unset(value: Any, path: str, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(path, name) of every `${VAR}` without a default that the environment lacks."""
    if isinstance(value, dict):
        return [u for k, v in value.items() for u in _unset(v, _join(path, str(k)), env)]
    if isinstance(value, list):
        return [u for i, v in enumerate(value) for u in _unset(v, f"{path}[{i}]", env)]
    if not isinstance(value, str):
        return []
    return [(path, m.group(1)) for m in _VAR.finditer(value)
            if m.group(1) not in env and m.group(2) is None]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(data: Any, typ: Any, path: str) -> Any:
    try:
        return msgspec.convert(data, typ, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _AT.search(text)
        where = path
        if m:
            where = path + m.group(1) if m.group(1).startswith("[") else _join(path, m.group(1)[1:])
            text = text[: m.start()]
        if text.startswith("Object contains unknown field"):
            text = "unknown key " + text.rsplit(" ", 1)[-1]
        raise ConfigError(where, text) from None


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "the config file must be a mapping")
    unset = _unset(data, "", env)
    if unset:  # all of them at once: a team should not discover them one run at a time
        others = sorted({name for _, name in unset[1:]} - {unset[0][1]})
        raise ConfigError(unset[0][0], f"environment variable {unset[0][1]} is not set"
                          + (f" (also unset: {', '.join(others)})" if others else ""))
    data = _expand(data, "", env)
    typed: dict[str, Any] = {}
    for section, typ in _NAMED_MAPS.items():
        entries = data.pop(section, None) or {}
        if not isinstance(entries, dict):
            raise ConfigError(section, "expected a mapping of names")
        typed[section] = {str(k): _convert(v, typ, f"{section}.{k}") for k, v in entries.items()}
    config = _convert(data, Config, "")
    typed["models"] = {
        name: msgspec.structs.replace(m, defaults=_typed_defaults(name, m.defaults))
        for name, m in typed["models"].items()
    }
    config = msgspec.structs.replace(config, **typed)
    _cross_check(config)
    return _resolve_allowlists(config)


def _resolve_allowlists(config: Config) -> Config:
    """Aliases in a key's `models:` (allowlist or per-model limits) mean their model: both
    hold public names only."""
    public = {alias: name for name, m in config.models.items() for alias in (name, *m.aliases)}
    keys = [k if k.models is None else
            msgspec.structs.replace(k, models=list(dict.fromkeys(public[m] for m in k.models)))
            for k in config.auth.keys]
    keys = [msgspec.structs.replace(k, limits=_public_limits(k.limits, public)) for k in keys]
    auth = msgspec.structs.replace(
        config.auth, keys=keys,
        default_limits=_public_limits(config.auth.default_limits, public))
    return msgspec.structs.replace(config, auth=auth)


def _public_limits(limits: Limits | None, public: Mapping[str, str]) -> Limits | None:
    if limits is None or not limits.models:
        return limits
    return msgspec.structs.replace(
        limits, models={public[m]: v for m, v in limits.models.items()})


def _check_limit_models(limits: Limits | None, where: str, names: Mapping[str, str]) -> None:
    public: dict[str, str] = {}
    for m in (limits.models if limits is not None else {}):
        if m not in names:
            raise ConfigError(f"{where}.models", f"unknown model {m!r}")
        if names[m] in public:
            raise ConfigError(f"{where}.models.{m}", f"{public[names[m]]!r} already names "
                              f"{names[m]}")
        public[names[m]] = m


def _typed_defaults(name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A model's `defaults:` checked and typed as the request fields they fill in."""
    where = f"models.{name}.defaults"
    for field in defaults:
        if field not in DEFAULTABLE:
            raise ConfigError(where, f"{field!r} cannot have a default (one of: "
                              f"{', '.join(sorted(DEFAULTABLE))})")
    typed = _convert({"prompt": "-", **defaults}, ImageGenerateRequest, where)
    if typed.background == "transparent" and typed.output_format == "jpeg":
        raise ConfigError(where, "a transparent background needs output_format png or webp")
    return {field: getattr(typed, field) for field in defaults}


def _check_test_double(route: Route, kind: str, where: str) -> None:
    """latency_s and fail make a `local` route a test double; other providers' are real."""
    for option in ("latency_s", "fail"):
        if getattr(route, option) is not None and kind != "local":
            raise ConfigError(f"{where}.{option}", "only routes to a `local` provider take "
                              f"{option} (a provider of type {kind!r} is real)")
    if isinstance(route.latency_s, list) and (
            len(route.latency_s) != 2 or route.latency_s[0] > route.latency_s[1]):
        raise ConfigError(f"{where}.latency_s", "expected seconds, or [min, max] with min <= max")
    if route.fail is not None and (route.fail.every is None) == (route.fail.rate is None):
        raise ConfigError(f"{where}.fail", "exactly one of every or rate is required")


def _cross_check(config: Config) -> None:
    seen_names: dict[str, str] = {}
    for name, model in config.models.items():
        for i, route in enumerate(model.routes):
            if route.provider not in config.providers:
                raise ConfigError(
                    f"models.{name}.routes[{i}].provider", f"unknown provider {route.provider!r}"
                )
            problem = route.price and check_price(route.price)
            if problem:
                raise ConfigError(f"models.{name}.routes[{i}].price", problem)
            _check_test_double(route, config.providers[route.provider].type,
                               f"models.{name}.routes[{i}]")
        for j, alias in enumerate([name, *model.aliases]):
            where = f"models.{name}" if j == 0 else f"models.{name}.aliases[{j - 1}]"
            if alias in seen_names:
                raise ConfigError(where, f"model name {alias!r} is already used by "
                                  f"{seen_names[alias]}")
            seen_names[alias] = f"models.{name}"
    ids: set[str] = set()
    digests: dict[str, int] = {}
    for i, key in enumerate(config.auth.keys):
        where = f"auth.keys[{i}]"
        if (key.key is None) == (key.key_sha256 is None):
            raise ConfigError(where, "exactly one of key or key_sha256 is required")
        if key.key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", key.key_sha256):
            raise ConfigError(f"{where}.key_sha256", "expected 64 lower-case hex digits")
        if key.key is not None and not key.key:
            raise ConfigError(f"{where}.key", "the key is empty")
        digest = key.key_sha256 or hashlib.sha256((key.key or "").encode()).hexdigest()
        if digest in digests:
            raise ConfigError(where, f"the same secret as auth.keys[{digests[digest]}]")
        digests[digest] = i
        if key.id in ids:
            raise ConfigError(f"{where}.id", f"duplicate key id {key.id!r}")
        ids.add(key.id)
        for m in key.models or []:
            if m not in seen_names:
                raise ConfigError(f"{where}.models", f"unknown model {m!r}")
        _check_limit_models(key.limits, f"{where}.limits", seen_names)
    _check_limit_models(config.auth.default_limits, "auth.default_limits", seen_names)
    for name, provider in config.providers.items():
        if getattr(provider, "api_key", None) == "":
            raise ConfigError(f"providers.{name}.api_key", "the key is empty")
    assert set(PROVIDER_TYPES)  # the registry of adapters mirrors these type names


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    target = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {target}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(_BARE_VAR.sub(r'"\1"', text))
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}") from None
    return parse_config(data)
