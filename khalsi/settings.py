"""The one configuration object of the platform.

Every setting comes from the environment (prefix ``KHALSI_``) or a ``.env`` file; sections are
nested, so ``KHALSI_DATABASE_URL`` sets ``settings.database.url`` and ``KHALSI_COINGECKO_API_KEY``
sets ``settings.coingecko.api_key``: the seed's ``.env`` names with the prefix (``JWT_SECRET`` is
``KHALSI_JWT_SECRET``, ``ML_SERVICE_URL`` is ``KHALSI_ML_SERVICE_URL``). Nothing here does work at import time: call
:func:`get_settings`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "change-me-in-production"  # noqa: S105 - a known placeholder, refused outside development


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class CoinGeckoPlan(StrEnum):
    KEYLESS = "keyless"
    DEMO = "demo"
    PRO = "pro"


class DatabaseSettings(BaseModel):
    # Empty means the embedded default: SQLite under KHALSI_HOME.
    url: str = ""
    pool_min: int = Field(default=5, ge=0)
    pool_max: int = Field(default=20, ge=1)
    echo: bool = False


class RedisSettings(BaseModel):
    # Empty means no Redis: every Redis-backed feature falls back to the database or memory.
    url: str = ""
    password: SecretStr | None = None


class JWTSettings(BaseModel):
    # The seed's JWT_SECRET / JWT_EXPIRES_IN / REFRESH_TOKEN_*: KHALSI_JWT_SECRET and so on.
    secret: SecretStr = SecretStr(DEV_SECRET + "-access-token-key")
    expires_in: str = "7d"
    refresh_token_secret: SecretStr = SecretStr(DEV_SECRET + "-refresh-token-key")
    refresh_token_expires_in: str = "30d"  # noqa: S105 - a lifetime, not a secret

    @field_validator("expires_in", "refresh_token_expires_in")
    @classmethod
    def _a_lifetime(cls, value: str) -> str:
        parse_lifetime(value)
        return value

    @property
    def access_lifetime(self) -> timedelta:
        return parse_lifetime(self.expires_in)

    @property
    def refresh_lifetime(self) -> timedelta:
        return parse_lifetime(self.refresh_token_expires_in)


_LIFETIME = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_LIFETIME_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_lifetime(value: str) -> timedelta:
    """A token lifetime written the seed's way: ``7d``, ``12h``, ``15m`` or ``900s``."""
    match = _LIFETIME.match(value)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a lifetime: write a positive number with s, m, h or d, e.g. 7d or 15m")
    return timedelta(**{_LIFETIME_UNITS[match.group(2)]: int(match.group(1))})


class CoinGeckoSettings(BaseModel):
    api_url: str = "https://api.coingecko.com/api/v3"
    pro_api_url: str = "https://pro-api.coingecko.com/api/v3"
    api_key: SecretStr | None = None
    plan: CoinGeckoPlan = CoinGeckoPlan.KEYLESS
    # CoinGecko's documented limits disagree between versions (keyless 5-15, Demo 30-100 per
    # minute), so the budget is configuration, never a constant in code.
    calls_per_minute: int = Field(default=10, ge=1)
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    vs_currency: str = "usd"

    @property
    def base_url(self) -> str:
        """The host that matches the plan: Pro keys only work on the Pro host."""
        return self.pro_api_url if self.plan is CoinGeckoPlan.PRO else self.api_url


class SocialSettings(BaseModel):
    fear_greed_url: str = "https://api.alternative.me"
    twitter_api_key: SecretStr | None = None


class MLServiceSettings(BaseModel):
    url: str = "http://127.0.0.1:3000"
    api_key: SecretStr | None = None
    timeout_seconds: float = 2.0


class SMTPSettings(BaseModel):
    host: str = "localhost"
    port: int = 587
    user: str = ""
    password: SecretStr | None = None
    sender: str = "alerts@khalsi.local"
    use_tls: bool = True


class WebhookSettings(BaseModel):
    discord_webhook_url: str = ""
    # Users' webhook URLs may not point at loopback, private, link-local (cloud metadata) or other
    # non-public addresses (SSRF); only a deployment whose webhooks live on its own network says so.
    allow_private_targets: bool = False


class RateLimitSettings(BaseModel):
    # KHALSI_RATE_LIMIT_WINDOW (minutes) and KHALSI_RATE_LIMIT_MAX (requests per window), as in the seed.
    window: int = Field(default=15, ge=1)
    max: int = Field(default=100, ge=1)
    # Login and registration get their own, smaller budget per client: password guessing is the
    # abuse that matters there, and it must not eat the client's budget for everything else.
    auth_max: int = Field(default=10, ge=1)
    # Take the client address from the last X-Forwarded-For entry (appended by the nginx of
    # docker-compose); only behind exactly one proxy you run, or clients could pick their identity.
    trust_forwarded_for: bool = False


class WebSocketSettings(BaseModel):
    # KHALSI_WS_HEARTBEAT_INTERVAL / _TIMEOUT, in milliseconds as in the seed.
    heartbeat_interval: int = Field(default=30_000, ge=100)
    heartbeat_timeout: int = Field(default=5_000, ge=100)


class ServingSettings(BaseModel):
    """The prediction service and batch scoring (``KHALSI_SERVING_*``)."""

    # A feature vector older than this (against the platform clock) is refused, not served.
    max_feature_age_hours: float = Field(default=48.0, gt=0)
    # How often the service checks the registry's champion alias and the online store's version.
    model_poll_seconds: float = Field(default=30.0, gt=0)
    feature_poll_seconds: float = Field(default=2.0, gt=0)
    # Horizons (days) served; None: every horizon training declares.
    horizons: list[int] | None = None
    default_top_k: int = Field(default=5, ge=1, le=50)
    host: str = "127.0.0.1"
    port: int = 3000


class MLflowSettings(BaseModel):
    # Empty means a local store under KHALSI_HOME.
    tracking_uri: str = ""
    registry_uri: str = ""
    experiment_prefix: str = "khalsi"


class PrefectSettings(BaseModel):
    # Empty means Prefect's ephemeral API (no server to run).
    api_url: str = ""


class MarketSource(StrEnum):
    REPLAY = "replay"
    COINGECKO = "coingecko"


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="KHALSI_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        # `KHALSI_COINGECKO_API_KEY=` (as compose and .env.example pass when unset) means "no key".
        env_ignore_empty=True,
        extra="ignore",
    )

    environment: Environment = Environment.DEVELOPMENT
    home: Path = Path("./var")
    port: int = 8080
    api_version: str = "v1"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    sentry_dsn: str = ""
    # Where market data comes from: the bundled real history (no network) or CoinGecko itself.
    market_source: MarketSource = MarketSource.REPLAY
    # The replay clock: which day the bundled history is "now" at, and how fast it moves.
    replay_start: str = ""
    replay_speed: float = Field(default=0.0, ge=0)
    coins: list[str] = Field(default_factory=list)

    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    jwt: JWTSettings = JWTSettings()
    coingecko: CoinGeckoSettings = CoinGeckoSettings()
    social: SocialSettings = SocialSettings()
    ml_service: MLServiceSettings = MLServiceSettings()
    smtp: SMTPSettings = SMTPSettings()
    webhooks: WebhookSettings = WebhookSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    ws: WebSocketSettings = WebSocketSettings()
    serving: ServingSettings = ServingSettings()
    mlflow: MLflowSettings = MLflowSettings()
    prefect: PrefectSettings = PrefectSettings()

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_outside_development(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            for name, secret in (
                ("KHALSI_JWT_SECRET", self.jwt.secret),
                ("KHALSI_JWT_REFRESH_TOKEN_SECRET", self.jwt.refresh_token_secret),
            ):
                value = secret.get_secret_value()
                if value.startswith(DEV_SECRET) or len(value) < 32:
                    raise ValueError(f"{name} must be set to a real secret (32+ characters) in production")
        if self.coingecko.plan is not CoinGeckoPlan.KEYLESS and self.coingecko.api_key is None:
            raise ValueError(f"KHALSI_COINGECKO_PLAN={self.coingecko.plan} needs KHALSI_COINGECKO_API_KEY")
        return self

    @property
    def database_url(self) -> str:
        """The configured database, or SQLite under KHALSI_HOME."""
        return self.database.url or f"sqlite:///{(self.home / 'khalsi.db').resolve()}"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def raw_dir(self) -> Path:
        return self.home / "raw"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_root(self) -> str:
        return (self.home / "mlartifacts").resolve().as_uri()

    def ensure_home(self) -> None:
        """Create the folders the platform writes to."""
        for folder in (self.home, self.lake_dir, self.raw_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
