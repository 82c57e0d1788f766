"""moa.toml parsing, presets, and the snapshot a job is created with."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.specs import (
    AgentSpec,
    Config,
    config_from_snapshot,
    load_config,
    merge_config,
    parse_config,
)

PACKAGED = Path(__file__).resolve().parents[2] / "moa" / "moa.toml"


def _data(**presets: Any) -> dict[str, Any]:
    return {
        "providers": {
            "p": {"base_url": "http://p.test/v1/", "api_key_env": "P_KEY"},
            "q": {"base_url": "http://q.test/v1", "mode": "completion", "stop": ["END"]},
        },
        "models": {
            "a": {"provider": "p", "model": "a-1", "input_per_1m": "0.15", "output_per_1m": 0.6},
            "b": {"provider": "q", "model": "b-1"},
            "unused": {"provider": "p", "model": "u-1"},
        },
        "presets": presets,
    }


def _two_layers() -> dict[str, Any]:
    return {
        "aggregator": {"model": "a", "temperature": 0.2, "max_tokens": 64},
        "aggregator_instruction": "Merge them.",
        "layers": [
            {"agents": ["a", {"model": "b", "samples": 2}], "min_ok": 2},
            {"agents": ["a"], "instruction": "Refine."},
        ],
    }


def test_provider_defaults_and_trailing_slash() -> None:
    config = parse_config(_data())
    p = config.providers["p"]
    assert p.base_url == "http://p.test/v1"
    assert (p.mode, p.stop, p.max_attempts, p.timeout_s, p.local) == ("chat", (), 4, 120.0, False)
    assert config.providers["q"].stop == ("END",)


def test_prices_are_exact_decimals_even_from_toml_floats() -> None:
    model = parse_config(_data()).models["a"]
    assert model.input_per_1m == Decimal("0.15")
    assert model.output_per_1m == Decimal("0.6")
    assert parse_config(_data()).models["b"].input_per_1m == Decimal(0)


def test_agents_as_names_tables_and_samples() -> None:
    preset = parse_config(_data(two=_two_layers())).preset("two")
    first, second = preset.layers
    assert first.agents == (AgentSpec("a"), AgentSpec("b"), AgentSpec("b"))
    assert first.min_ok == 2 and second.min_ok == 1
    assert second.instruction == "Refine."
    assert preset.aggregator == AgentSpec("a", temperature=0.2, max_tokens=64)
    assert preset.model_names() == {"a", "b"}


def test_single_preset_has_no_layers() -> None:
    preset = parse_config(_data(single={"aggregator": "a"})).preset("single")
    assert preset.layers == ()
    assert preset.aggregator == AgentSpec("a", temperature=0.7, max_tokens=512)


def _broken(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = _data(two=_two_layers())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("providers",), ["p"], "[providers] must be a table"),
        (("providers", "p"), {"api_key_env": "K"}, "provider 'p': missing base_url"),
        (("providers", "q", "mode"), "stream", "mode must be one of"),
        (("models", "b"), {"provider": "q"}, "model 'b': missing model"),
        (("models", "b", "provider"), "nowhere", "model 'b': unknown provider 'nowhere'"),
        (("models", "a", "input_per_1m"), "cheap", "price 'cheap' is not a number"),
        (("models", "a", "output_per_1m"), "-1", "price '-1' is negative"),
        (("presets", "two", "aggregator"), "ghost", "preset 'two': unknown model(s) ghost"),
        (("presets", "bad"), {"layers": []}, "preset 'bad': an aggregator is required"),
        (("presets", "two", "layers", 0, "agents"), [], "layer 1: needs at least one agent"),
        (("presets", "two", "layers", 1, "agents"), [{"temp": 1}], "an agent is a model name"),
        (("presets", "two", "layers", 0, "min_ok"), 0, "min_ok must be between 1 and 3, not 0"),
        (("presets", "two", "layers", 0, "min_ok"), 4, "min_ok must be between 1 and 3, not 4"),
    ],
)
def test_invalid_config_is_a_config_error(path: tuple[Any, ...], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_broken(path, value))
    assert message in str(info.value)


def test_unknown_preset_lists_the_known_ones() -> None:
    config = parse_config(_data(two=_two_layers(), single={"aggregator": "a"}))
    with pytest.raises(ConfigError, match=r"unknown preset 'nope' \(known: single, two\)"):
        config.preset("nope")
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        config.model("nope")


def test_provider_for_a_model() -> None:
    assert parse_config(_data()).provider_for("b").name == "q"


def test_snapshot_holds_only_what_the_preset_uses_and_is_json() -> None:
    snapshot = parse_config(_data(two=_two_layers())).snapshot("two")
    assert sorted(snapshot["models"]) == ["a", "b"]
    assert sorted(snapshot["providers"]) == ["p", "q"]
    assert snapshot["models"]["a"]["input_per_1m"] == "0.15"
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_snapshot_round_trips_through_json() -> None:
    config = parse_config(_data(two=_two_layers()))
    stored = json.loads(json.dumps(config.snapshot("two")))
    rebuilt, preset = config_from_snapshot(stored)
    assert preset == config.preset("two")
    assert rebuilt.preset("two") == preset
    assert dict(rebuilt.models) == {n: config.models[n] for n in ("a", "b")}
    assert dict(rebuilt.providers) == {n: config.providers[n] for n in ("p", "q")}


def test_merge_overrides_and_adds_by_name() -> None:
    base = parse_config(_data(single={"aggregator": "a"}))
    extra = parse_config(
        {
            "providers": {"p": {"base_url": "http://other.test/v1"}},
            "models": {"c": {"provider": "p", "model": "c-1"}},
            "presets": {"mine": {"aggregator": "c"}},
        }
    )
    merged = merge_config(base, extra)
    assert merged.providers["p"].base_url == "http://other.test/v1"
    assert merged.providers["q"] == base.providers["q"]
    assert set(merged.models) == {"a", "b", "c", "unused"}
    assert set(merged.presets) == {"single", "mine"}


def test_user_config_may_build_a_preset_on_packaged_models(tmp_path: Path) -> None:
    # moa.toml promises a user's file is "merged on top of this file by name".
    user = tmp_path / "moa.toml"
    user.write_text('[presets.mine]\naggregator = "gpt-4o"\n', encoding="utf-8")
    merged = merge_config(load_config(PACKAGED), load_config(user))
    assert merged.preset("mine").aggregator.model == "gpt-4o"


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[providers\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


def _packaged() -> Config:
    return load_config(PACKAGED)


def test_packaged_presets_reference_known_models_and_providers() -> None:
    config = _packaged()
    assert {"single", "moa-lite", "moa", "self-moa", "local-demo", "sim-lite"} <= set(
        config.presets
    )
    for preset in config.presets.values():
        assert preset.model_names() <= set(config.models), preset.name
        for name in preset.model_names():
            assert config.models[name].provider in config.providers, name


@pytest.mark.parametrize(
    ("name", "proposers", "min_ok"),
    [
        ("single", [], []),
        ("moa-lite", [6], [3]),
        ("moa", [6, 6], [3, 3]),
        ("self-moa", [6], [3]),
        ("local-demo", [3, 3], [1, 1]),
        ("sim-lite", [3, 3], [1, 1]),
    ],
)
def test_packaged_preset_shapes(name: str, proposers: list[int], min_ok: list[int]) -> None:
    preset = _packaged().preset(name)
    assert [len(layer.agents) for layer in preset.layers] == proposers
    assert [layer.min_ok for layer in preset.layers] == min_ok
    _, rebuilt = config_from_snapshot(json.loads(json.dumps(_packaged().snapshot(name))))
    assert rebuilt == preset


def test_packaged_local_provider_is_a_base_model_in_completion_mode() -> None:
    local = _packaged().provider_for("local")
    assert local.local and local.mode == "completion"
    assert local.prefix.strip().startswith("Question:")
    assert local.aggregate_instruction
