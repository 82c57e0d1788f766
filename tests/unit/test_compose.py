"""The container deployment, checked without a Docker engine.

docker-compose.yml is validated against the Compose Specification JSON schema (the
copy that the check-jsonschema wheel ships, so nothing is downloaded at test time),
every `moa ...` command in it is parsed by our own CLI, and the settings that matter
to a user who scales the pools or restarts the broker are checked one by one. The
Dockerfile, .dockerignore and .env.example are checked against pyproject.toml,
moa/settings.py and the packaged moa.toml.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import typer.main
import yaml

from moa.cli import app as cli_app
from moa.settings import PACKAGED_CONFIG, Settings
from pipeline.specs import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
WORKER_POOLS = ("proposers", "aggregators", "control")


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def moa_services() -> dict[str, dict[str, Any]]:
    """The services that run our image with `moa` as the entrypoint."""
    image = compose()["x-moa"]["image"]
    return {
        name: service
        for name, service in services().items()
        if service.get("image") == image and "entrypoint" not in service
    }


def argv(value: str | list[str] | None) -> list[str]:
    """A command or entrypoint in either Compose form, as a list of words."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {k: v for k, _, v in (item.partition("=") for item in env)}
    return {str(k): None if v is None else str(v) for k, v in env.items()}


@cache
def compose_schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(
        vendor.joinpath("compose-spec.json").read_text(encoding="utf-8")
    )
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


# --- the Compose Specification -----------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_schema()["title"] == "Compose Specification"
    assert schema_errors(compose()) == []


def test_the_schema_rejects_what_compose_would_reject() -> None:
    """The validation has teeth: a misspelt key or a bad condition is an error."""
    typo = {"services": {"api": {"image": "moa-batch", "comand": ["api"]}}}
    assert schema_errors(typo)
    bad_condition = {
        "services": {
            "api": {"image": "moa-batch", "depends_on": {"migrate": {"condition": "finished"}}},
            "migrate": {"image": "moa-batch"},
        }
    }
    assert schema_errors(bad_condition)


# --- every command is one our CLI knows ----------------------------------------------------------


def cli_problem(words: list[str]) -> str | None:
    """Why `moa WORDS...` would not parse, or None. Walks the command groups from the
    Typer app itself, then parses the leaf's options (names, types) without running it.

    Duck-typed: Typer builds its commands on its own copy of Click, so checks against
    the `click` package's classes would match nothing and pass vacuously.
    """
    command: Any = typer.main.get_command(cli_app)
    path = ["moa"]
    rest = list(words)
    while isinstance(getattr(command, "commands", None), dict):
        if not rest or rest[0] not in command.commands:
            word = rest[0] if rest else "(nothing)"
            known = ", ".join(sorted(command.commands))
            return f"`{' '.join(path)} {word}` is not a command (there are: {known})"
        path.append(rest.pop(0))
        command = command.commands[path[-1]]
    try:
        command.make_context(" ".join(path), list(rest))  # it consumes the list
    except Exception as exc:  # Typer's UsageError, BadParameter, NoSuchOption...
        return f"`{' '.join(path + rest)}`: {exc}"
    return None


def test_the_cli_check_rejects_what_moa_would_reject() -> None:
    assert cli_problem(["worker", "--pool", "proposers"]) is None
    assert cli_problem(["db", "upgrade"]) is None
    assert cli_problem(["no-such-command"]) is not None
    assert cli_problem(["db"]) is not None
    assert cli_problem(["db", "downgrade-everything"]) is not None
    assert cli_problem(["worker", "--no-such-option"]) is not None
    assert cli_problem(["worker", "--concurrency", "many"]) is not None


@pytest.mark.parametrize("name", sorted(moa_services()))
def test_service_command_is_a_real_cli_command(name: str) -> None:
    words = argv(services()[name].get("command"))
    assert words, f"{name} has no command: the image would only print --help"
    assert cli_problem(words) is None


def test_the_moa_services_are_the_ones_expected() -> None:
    expected = {"migrate", "api", "beat", "flower", *WORKER_POOLS}
    assert set(moa_services()) == expected
    pools = {name: argv(services()[name]["command"]) for name in WORKER_POOLS}
    assert pools == {name: ["worker", "--pool", name] for name in WORKER_POOLS}
    from workers.app import POOLS  # here: it builds the Celery app from the settings

    assert set(WORKER_POOLS) <= set(POOLS)


# --- what users rely on ------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKER_POOLS)
def test_worker_pools_can_be_scaled(name: str) -> None:
    """`docker compose up --scale proposers=4` needs no fixed name and no host port."""
    service = services()[name]
    assert "container_name" not in service
    assert "ports" not in service
    assert "hostname" not in service


def test_valkey_keeps_the_queues_across_restarts() -> None:
    valkey = services()["valkey"]
    words = argv(valkey.get("command"))
    assert words[0] == "valkey-server"
    assert "--appendonly" in words
    assert words[words.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in valkey["volumes"])
    assert argv(valkey["healthcheck"]["test"]) == ["CMD", "valkey-cli", "ping"]


def test_postgres_keeps_its_data_and_reports_readiness() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].startswith("postgres:17")
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(argv(postgres["healthcheck"]["test"]))


def test_start_order_migrate_first_then_the_api() -> None:
    svc = services()
    assert argv(svc["migrate"]["command"]) == ["db", "upgrade"]
    assert svc["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # A one-shot: restarted after it exits, it would never be "completed".
    assert svc["migrate"].get("restart") == "no"
    api_deps = svc["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert api_deps["valkey"]["condition"] == "service_healthy"


def test_dependency_conditions_are_backed_by_the_services() -> None:
    svc = services()
    for name, service in svc.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            continue
        for target, spec in depends_on.items():
            assert target in svc, f"{name} depends on an unknown service {target}"
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in svc[target], f"{name} waits for {target}'s health"
            if condition == "service_completed_successfully":
                assert svc[target].get("restart", "no") == "no"


def test_every_moa_service_reaches_the_compose_database_and_broker() -> None:
    postgres = environment(services()["postgres"])
    for name, service in moa_services().items():
        env = environment(service)
        db = urlparse(env.get("MOA_DATABASE_URL") or "")
        broker = urlparse(env.get("MOA_REDIS_URL") or "")
        assert db.scheme == "postgresql+psycopg", name
        assert (db.hostname, db.port) == ("postgres", 5432), name
        assert (db.username, db.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert db.path == "/" + (postgres["POSTGRES_DB"] or ""), name
        assert broker.scheme == "redis", name
        assert (broker.hostname, broker.port) == ("valkey", 6379), name
        assert ".env" in argv(service.get("env_file")), name


def _published(service: dict[str, Any]) -> list[str]:
    """The container side of each published port."""
    return [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words[:-1] else None


@pytest.mark.parametrize(("name", "port"), [("api", "8000"), ("flower", "5555")])
def test_servers_listen_where_their_port_is_published(name: str, port: str) -> None:
    service = services()[name]
    words = argv(service["command"])
    # In a container, a server bound to 127.0.0.1 is unreachable through a published port.
    assert _option(words, "--host") == "0.0.0.0", f"{name} must listen on 0.0.0.0"
    assert _option(words, "--port") == port
    assert _published(service) == [port]


def test_api_healthcheck_probes_healthz() -> None:
    probe = " ".join(argv(services()["api"]["healthcheck"]["test"]))
    assert "http://127.0.0.1:8000/healthz" in probe


def test_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts an undeclared volume {source}"


def test_local_model_is_optional_and_serves_the_model_name_the_config_uses() -> None:
    llama = services()["llamacpp"]
    assert llama["profiles"] == ["local"]
    assert "local" in str(llama["build"]["args"]["MOA_EXTRAS"]).split(",")
    script = " ".join(argv(llama["command"]))
    assert "llama_cpp.server" in script
    assert "--host 0.0.0.0" in script
    alias = re.search(r"--model_alias (\S+)", script)
    assert alias is not None
    assert alias.group(1) == load_config(PACKAGED_CONFIG).models["local"].model
    assert "llamacpp" not in {
        target for s in moa_services().values() for target in s.get("depends_on") or {}
    }, "the default profile must start without the local model"


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def test_dockerfile_runtime_image_user_and_entrypoint() -> None:
    lines = dockerfile()
    args = dict(rest.split("=", 1) for kind, rest in lines if kind == "ARG" and "=" in rest)
    stages = [rest.split()[0] for kind, rest in lines if kind == "FROM"]
    final = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stages[-1])
    assert final == "python:3.11-slim"
    final_stage = lines[max(i for i, (kind, _) in enumerate(lines) if kind == "FROM") :]
    users = [rest for kind, rest in final_stage if kind == "USER"]
    assert users and users[-1] not in {"root", "0"}
    entrypoint = [json.loads(rest) for kind, rest in lines if kind == "ENTRYPOINT"][-1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert entrypoint == ["moa"]
    assert "moa" in scripts["scripts"]
    # The build arg that adds extras (compose's llamacpp passes MOA_EXTRAS=local).
    assert "MOA_EXTRAS" in {rest.split("=")[0] for kind, rest in lines if kind == "ARG"}
    installs = [rest for kind, rest in lines if kind == "RUN" and "pip install" in rest]
    assert any("MOA_EXTRAS" in rest for rest in installs)
    assert set(scripts["optional-dependencies"]) >= {"local"}


def test_dockerignore_keeps_secrets_out_and_the_package_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "negations are not handled here"

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)

    for secret in (".env", ".env.local", ".venv", ".git"):
        assert ignored(secret), secret
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for path in needed:
        assert not ignored(path), f"{path} is needed by `pip install .`"


# --- .env.example ------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    """Assignments in .env.example, including commented-out ones (`# MOA_CONFIG=...`)."""
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip()
    return values


def test_env_example_names_only_real_settings_with_valid_values() -> None:
    values = env_example()
    moa = {k.removeprefix("MOA_").lower(): v for k, v in values.items() if k.startswith("MOA_")}
    unknown = set(moa) - set(Settings.model_fields)
    assert not unknown, f"not settings in moa/settings.py: {sorted(unknown)}"
    Settings.model_validate(moa)  # every value has the right type
    for needed in ("flower_user", "flower_password", "webhook_secret"):
        assert needed in moa


def test_env_example_lists_every_provider_key_and_fills_in_none() -> None:
    values = env_example()
    key_envs = {
        p.api_key_env for p in load_config(PACKAGED_CONFIG).providers.values() if p.api_key_env
    }
    assert key_envs >= {"OPENAI_API_KEY", "TOGETHER_API_KEY", "ANTHROPIC_API_KEY"}
    assert key_envs <= set(values)
    secrets = [k for k in values if k.endswith(("_API_KEY", "_PASSWORD", "_SECRET"))]
    assert {k: values[k] for k in secrets} == dict.fromkeys(secrets, "")
