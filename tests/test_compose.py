"""docker-compose.yml and .env.example: the production shape parses, is healthy-ordered, and names real settings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from khalsi.settings import Environment, Settings, get_settings
from tests.factories import isolated_khalsi_env

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
REQUIRED = ["postgres", "redis", "mlflow", "prefect-server", "prefect-worker", "bentoml", "api", "nginx"]
# Who cannot work without whom (each must wait until the other is healthy).
NEEDS = {
    "mlflow": {"postgres"},
    "prefect-server": {"postgres"},
    "prefect-worker": {"postgres", "prefect-server"},
    "bentoml": {"mlflow"},
    "api": {"postgres", "redis", "bentoml"},
    "nginx": {"api"},
    "deploy-flows": {"prefect-server", "migrate"},
}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")
STAND_IN = "a-real-production-value-of-forty-characters"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.chdir(tmp_path)
    isolated_khalsi_env(monkeypatch)
    yield monkeypatch
    get_settings.cache_clear()


def interpolate(value: str) -> str:
    """What compose passes when the operator sets only the required variables."""

    def one(match: re.Match[str]) -> str:
        if match.group("op") == "-":
            return match.group("arg")
        return STAND_IN  # ${VAR:?message} and ${VAR}: the operator must set it

    return INTERPOLATION.sub(one, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(key): interpolate(str(value)) for key, value in raw.items()}


def setting_value(settings: Settings, variable: str) -> Any:
    """The value a ``KHALSI_*`` variable set, found the way pydantic-settings splits names; KeyError if none."""
    name = variable.removeprefix("KHALSI_").lower()
    fields = type(settings).model_fields
    if name in fields:
        return getattr(settings, name)
    for section, info in fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel) and name.startswith(section + "_"):
            leaf = name.removeprefix(section + "_")
            if leaf in model.model_fields:
                return getattr(getattr(settings, section), leaf)
    raise KeyError(variable)


def rendered(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def assert_every_variable_is_a_setting(settings: Settings, variables: dict[str, str], where: str) -> None:
    unknown = []
    for variable, value in variables.items():
        try:
            landed = setting_value(settings, variable)
        except KeyError:
            unknown.append(variable)
            continue
        if value == "":
            # An empty variable is an unset one (env_ignore_empty): the field keeps its default.
            assert landed == setting_value(Settings(_env_file=None), variable), f"{variable} in {where}"  # type: ignore[call-arg]
        elif isinstance(landed, Path):
            assert landed == Path(value), f"{variable} in {where}"
        elif isinstance(landed, int | float) and not isinstance(landed, bool):
            assert landed == float(value), f"{variable} in {where}"
        else:
            assert rendered(landed) == value, f"{variable} in {where}"
    assert unknown == [], f"{where} sets variables no Settings field reads"


# --- shape ------------------------------------------------------------------------------------------


def test_every_service_is_defined_with_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    assert set(REQUIRED) <= set(services)
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # a one-shot job (migrations) exits; it has nothing to report healthy
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), f"{name}'s healthcheck has no test"


def test_services_wait_for_what_they_need_to_be_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a bare list"
        for dependency, rule in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule == {"condition": "service_completed_successfully"}:
                # Only one-shot jobs (migrations, registrations) are waited on by their exit code.
                assert services[dependency].get("restart") == "no", f"{name} -> {dependency} is not a one-shot job"
                continue
            assert rule == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert services[dependency].get("healthcheck"), f"{name} waits on {dependency}, which has no healthcheck"
    for name, needed in NEEDS.items():
        assert needed <= set(services[name].get("depends_on") or {}), f"{name} must wait for {sorted(needed)}"


def test_mlflow_keeps_runs_in_postgresql_and_artifacts_in_a_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    backend = re.search(r"--backend-store-uri[= ](\S+)", command)
    assert backend is not None
    assert backend.group(1).startswith("postgresql")
    assert "@postgres:" in backend.group(1)
    artifacts = re.search(r"--(?:artifacts-destination|default-artifact-root)[= ](\S+)", command)
    assert artifacts is not None
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in mlflow["volumes"]}
    mounted = [target for target in mounts if artifacts.group(1).startswith(target)]
    assert mounted, "MLflow's artifact destination is not on a volume"
    assert mounts[mounted[0]] in compose["volumes"]  # a named volume: survives container rebuilds

    # MLflow's and Prefect's databases exist on the PostgreSQL server they point at.
    init = (REPO / "deploy" / "postgres-init.sql").read_text(encoding="utf-8")
    created = set(re.findall(r"CREATE DATABASE (\w+)", init)) | {services["postgres"]["environment"]["POSTGRES_DB"]}
    prefect_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for url in (backend.group(1), prefect_url):
        assert url.rsplit("/", 1)[-1] in created, url


# --- settings ----------------------------------------------------------------------------------------


def test_every_khalsi_variable_in_compose_is_a_real_setting(
    services: dict[str, dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    variables = {
        key: value
        for service in services.values()
        for key, value in environment(service).items()
        if key.startswith("KHALSI_")
    }
    assert "KHALSI_DATABASE_URL" in variables
    for key, value in variables.items():
        clean_env.setenv(key, value)
    settings = Settings()  # production: refuses placeholders, so the secrets must have landed
    assert settings.environment is Environment.PRODUCTION
    assert settings.database_url.startswith("postgresql://")
    assert_every_variable_is_a_setting(settings, variables, "docker-compose.yml")


def test_env_example_loads_and_names_only_real_settings(clean_env: pytest.MonkeyPatch) -> None:
    variables = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            variables[key.strip()] = value.strip()
    # Anything else in it is for compose itself (POSTGRES_PASSWORD).
    compose_text = COMPOSE.read_text(encoding="utf-8")
    for other in [key for key in variables if not key.startswith("KHALSI_")]:
        assert "${" + other in compose_text, f"{other} is used by neither Settings nor docker-compose.yml"
        del variables[other]
    settings = Settings(_env_file=ENV_EXAMPLE)  # what `cp .env.example .env` gives
    assert_every_variable_is_a_setting(settings, variables, ".env.example")
