"""Typed view of moa.toml: providers, models with prices, presets of MoA layers.

A preset is data. ``layers`` are the proposer layers; the ``aggregator`` makes
the final call over the last layer's outputs. ``single`` is a preset with no
proposer layers, so the aggregator call is the plain baseline call.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ConfigError
from pipeline.pipelines import PipelineSpec, parse_pipeline

Mode = Literal["chat", "completion"]
_MODES = ("chat", "completion")


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    base_url: str
    kind: str = "openai"
    api_key_env: str | None = None
    mode: Mode = "chat"
    stop: tuple[str, ...] = ()
    timeout_s: float = 120.0
    max_attempts: int = 4
    retry_base_s: float = 1.0  # first backoff; doubles each attempt, with jitter
    retry_cap_s: float = 60.0  # no wait is longer, Retry-After included
    stream: bool = False  # use SSE streaming (usage is read from the stream)
    cache: str = "auto"  # response cache: auto (temperature 0 only), always, never
    breaker_threshold: int = 5  # consecutive failures that open the circuit (0: off)
    breaker_reset_s: float = 30.0  # how long it stays open before one probe is let through
    local: bool = False  # served by `moa up` (the bundled llama.cpp model)
    # For base models in completion mode: few-shot text before a bare question, and an
    # aggregate instruction that suits them better than the one written for chat models.
    prefix: str = ""
    aggregate_instruction: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    provider: str
    model: str
    input_per_1m: Decimal = Decimal(0)
    output_per_1m: Decimal = Decimal(0)
    context_window: int = 8192
    # Shared by every worker through Redis; 0 means no limit.
    max_concurrency: int = 0
    rpm: int = 0
    tpm: int = 0


@dataclass(frozen=True)
class AgentSpec:
    model: str
    temperature: float = 0.7
    max_tokens: int = 512


@dataclass(frozen=True)
class LayerSpec:
    agents: tuple[AgentSpec, ...]
    min_ok: int = 1
    instruction: str | None = None  # overrides the aggregate-and-synthesize text


@dataclass(frozen=True)
class EarlyStop:
    """Stop an item after a proposer layer whose proposals agree (beyond the papers)."""

    method: str = "exact"  # "exact": the extracted answers match; "similarity": texts alike
    threshold: float = 0.9  # for "similarity": the lowest pairwise ratio that counts as agreement


@dataclass(frozen=True)
class PresetSpec:
    name: str
    aggregator: AgentSpec
    layers: tuple[LayerSpec, ...] = ()
    description: str = ""
    aggregator_instruction: str | None = None
    window: int | None = None  # Self-MoA-Seq: aggregate the last layer this many at a time
    early_stop: EarlyStop | None = None

    def model_names(self) -> set[str]:
        names = {self.aggregator.model}
        for layer in self.layers:
            names.update(agent.model for agent in layer.agents)
        return names


@dataclass(frozen=True)
class Config:
    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, ModelSpec]
    presets: Mapping[str, PresetSpec] = field(default_factory=dict)
    pipelines: Mapping[str, PipelineSpec] = field(default_factory=dict)

    def pipeline(self, name: str) -> PipelineSpec:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(f"unknown pipeline {name!r} (known: {known})") from None

    def preset(self, name: str) -> PresetSpec:
        try:
            return self.presets[name]
        except KeyError:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ConfigError(f"unknown preset {name!r} (known: {known})") from None

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(f"unknown model {name!r}") from None

    def provider_for(self, model: str) -> ProviderSpec:
        return self.providers[self.model(model).provider]

    def snapshot(self, preset_name: str) -> dict[str, Any]:
        """JSON-able record of one preset with exactly the models and providers it uses."""
        preset = self.preset(preset_name)
        models = {n: self.model(n) for n in sorted(preset.model_names())}
        providers = {m.provider: self.providers[m.provider] for m in models.values()}
        return {
            "preset": _jsonable(asdict(preset)),
            "models": {n: _jsonable(asdict(m)) for n, m in models.items()},
            "providers": {n: _jsonable(asdict(p)) for n, p in providers.items()},
        }


def single_preset(
    name: str, model: str, *, temperature: float = 0.0, max_tokens: int = 512, description: str = ""
) -> PresetSpec:
    """A one-call preset made on the fly (e.g. for a judge model given by name)."""
    agent = AgentSpec(model=model, temperature=temperature, max_tokens=max_tokens)
    return PresetSpec(name=name, aggregator=agent, description=description)


def with_presets(config: Config, *presets: PresetSpec) -> Config:
    """The same config with these presets added (or replaced, by name)."""
    extra = {preset.name: preset for preset in presets}
    merged = Config(config.providers, config.models, {**config.presets, **extra})
    check_references(merged)
    return merged


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def load_config(path: Path) -> Config:
    """One moa.toml file. It may lean on another file's names: references are
    checked once files are merged (:func:`merge_config`, :func:`parse_config`)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parse_config(data, check=False, base=path.parent)


def merge_config(base: Config, extra: Config) -> Config:
    """``extra`` (a user's --config file) adds to or overrides ``base`` by name."""
    merged = Config(
        providers={**base.providers, **extra.providers},
        models={**base.models, **extra.models},
        presets={**base.presets, **extra.presets},
        pipelines={**base.pipelines, **extra.pipelines},
    )
    check_references(merged)
    return merged


def parse_config(
    data: Mapping[str, Any], *, check: bool = True, base: Path | None = None
) -> Config:
    """``base``: the directory relative paths (a pipeline's folders) are taken from."""
    providers = {n: _provider(n, v) for n, v in _table(data, "providers").items()}
    models = {n: _model(n, v) for n, v in _table(data, "models").items()}
    presets = {n: parse_preset(n, v) for n, v in _table(data, "presets").items()}
    pipelines = {n: parse_pipeline(n, v, base) for n, v in _table(data, "pipelines").items()}
    config = Config(providers=providers, models=models, presets=presets, pipelines=pipelines)
    if check:
        check_references(config)
    return config


def config_from_snapshot(snapshot: Mapping[str, Any]) -> tuple[Config, PresetSpec]:
    """Rebuild what a job was created with, from its stored snapshot."""
    preset_data = dict(snapshot["preset"])
    name = preset_data.pop("name")
    preset = parse_preset(name, preset_data)
    config = Config(
        providers={n: _provider(n, v) for n, v in snapshot["providers"].items()},
        models={n: _model(n, v) for n, v in snapshot["models"].items()},
        presets={name: preset},
    )
    return config, preset


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _provider(name: str, raw: Mapping[str, Any]) -> ProviderSpec:
    _require(raw, ("base_url",), f"provider {name!r}")
    mode = raw.get("mode", "chat")
    if mode not in _MODES:
        raise ConfigError(f"provider {name!r}: mode must be one of {_MODES}, not {mode!r}")
    return ProviderSpec(
        name=name,
        base_url=str(raw["base_url"]).rstrip("/"),
        kind=str(raw.get("kind", "openai")),
        api_key_env=raw.get("api_key_env"),
        mode=mode,
        stop=_strings(raw.get("stop", ()), f"provider {name!r}: stop"),
        timeout_s=float(raw.get("timeout_s", 120.0)),
        max_attempts=int(raw.get("max_attempts", 4)),
        retry_base_s=float(raw.get("retry_base_s", 1.0)),
        retry_cap_s=float(raw.get("retry_cap_s", 60.0)),
        stream=bool(raw.get("stream", False)),
        cache=_choice(
            raw.get("cache", "auto"), ("auto", "always", "never"), f"provider {name!r}: cache"
        ),
        breaker_threshold=int(raw.get("breaker_threshold", 5)),
        breaker_reset_s=float(raw.get("breaker_reset_s", 30.0)),
        local=bool(raw.get("local", False)),
        prefix=str(raw.get("prefix", "")),
        aggregate_instruction=raw.get("aggregate_instruction"),
    )


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a string or a list of strings")
    return tuple(value)


def _model(name: str, raw: Mapping[str, Any]) -> ModelSpec:
    _require(raw, ("provider", "model"), f"model {name!r}")
    return ModelSpec(
        name=name,
        provider=str(raw["provider"]),
        model=str(raw["model"]),
        input_per_1m=_price(raw.get("input_per_1m", "0"), name),
        output_per_1m=_price(raw.get("output_per_1m", "0"), name),
        context_window=int(raw.get("context_window", 8192)),
        max_concurrency=int(raw.get("max_concurrency", 0)),
        rpm=int(raw.get("rpm", 0)),
        tpm=int(raw.get("tpm", 0)),
    )


def _price(value: Any, model: str) -> Decimal:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"model {model!r}: price {value!r} is not a number") from None
    if price < 0:
        raise ConfigError(f"model {model!r}: price {value!r} is negative")
    return price


def parse_preset(name: str, raw: Mapping[str, Any]) -> PresetSpec:
    if "aggregator" not in raw:
        raise ConfigError(f"preset {name!r}: an aggregator is required")
    layers = tuple(_layer(name, i, v) for i, v in enumerate(raw.get("layers", ()), start=1))
    window = raw.get("window")
    if window is not None and (not isinstance(window, int) or window < 1 or not layers):
        raise ConfigError(
            f"preset {name!r}: window must be a positive integer over a proposer layer"
        )
    return PresetSpec(
        name=name,
        aggregator=_agent(name, raw["aggregator"]),
        layers=layers,
        description=str(raw.get("description", "")),
        aggregator_instruction=raw.get("aggregator_instruction"),
        window=window,
        early_stop=_early_stop(name, raw.get("early_stop")),
    )


def _early_stop(preset: str, raw: Any) -> EarlyStop | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return EarlyStop()
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {preset!r}: early_stop is true or a table {{method, threshold}}")
    method = _choice(
        raw.get("method", "exact"), ("exact", "similarity"), f"preset {preset!r}: early_stop.method"
    )
    threshold = float(raw.get("threshold", 0.9))
    if not 0 < threshold <= 1:
        raise ConfigError(f"preset {preset!r}: early_stop.threshold must be in (0, 1]")
    return EarlyStop(method=method, threshold=threshold)


def _layer(preset: str, index: int, raw: Mapping[str, Any]) -> LayerSpec:
    where = f"preset {preset!r} layer {index}"
    agents: list[AgentSpec] = []
    for entry in raw.get("agents", ()):
        samples = int(entry.get("samples", 1)) if isinstance(entry, dict) else 1
        agents.extend([_agent(where, entry)] * samples)
    if not agents:
        raise ConfigError(f"{where}: needs at least one agent")
    min_ok = int(raw.get("min_ok", 1))
    if not 1 <= min_ok <= len(agents):
        raise ConfigError(f"{where}: min_ok must be between 1 and {len(agents)}, not {min_ok}")
    return LayerSpec(agents=tuple(agents), min_ok=min_ok, instruction=raw.get("instruction"))


def _agent(where: str, raw: Any) -> AgentSpec:
    if isinstance(raw, str):
        return AgentSpec(model=raw)
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"{where}: an agent is a model name or a table with 'model'")
    return AgentSpec(
        model=str(raw["model"]),
        temperature=float(raw.get("temperature", 0.7)),
        max_tokens=int(raw.get("max_tokens", 512)),
    )


def _require(raw: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")


def check_references(config: Config) -> None:
    for model in config.models.values():
        if model.provider not in config.providers:
            raise ConfigError(f"model {model.name!r}: unknown provider {model.provider!r}")
    for preset in config.presets.values():
        unknown = sorted(preset.model_names() - set(config.models))
        if unknown:
            raise ConfigError(f"preset {preset.name!r}: unknown model(s) {', '.join(unknown)}")
    for pipeline in config.pipelines.values():
        if pipeline.preset not in config.presets:
            raise ConfigError(f"pipeline {pipeline.name!r}: unknown preset {pipeline.preset!r}")
