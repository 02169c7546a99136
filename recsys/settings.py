"""Settings shared by every stage, read from the environment (and a `.env` file if present)."""

from __future__ import annotations

import os
import re
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"  # the default of RECSYS_DBT_PROJECT_DIR
MIN_API_KEY_LENGTH = 16  # a short key can be guessed; it would be no key at all
# seconds of ranker search by default (`recsys train/run --search-budget`, the training DAG's
# `search_budget_s`). At full scale one trial takes 10-20 s, so one or two trials run: a
# second one (random draw) scored below the first there; on small data it holds several
DEFAULT_SEARCH_BUDGET_S = 20.0
# the one seed of everything random (generated data, ALS, samples and splits, CatBoost, the
# bootstrap, conformal draws): the same input gives the same models and figures on every run
SEED = 42


# an origin as browsers send it: scheme, host, optional port; nothing after
CORS_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


class Settings(BaseSettings):
    """Where the pipeline reads and writes. See the settings table in DESIGN.md."""

    # hide_input_in_errors: a refused value is never echoed (it may be a key or a secret)
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    recsys_data_dir: Path = Path("./data")
    recsys_lake_uri: str | None = None
    # the dbt project (an installed package or an image points at its copy); read when dbt runs
    recsys_dbt_project_dir: Path = DBT_PROJECT_DIR
    # the profile's target dbt builds on: unset = `local` (or `s3` for an s3:// lake);
    # `spark` = the same models on a local Spark (README, "Growing past one machine")
    recsys_dbt_target: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None  # never in a repr, a log or a dump
    aws_region: str | None = None

    # the HTTP service (api/); see README, "Serving recommendations"
    recsys_api_keys: SecretStr | None = None  # comma-separated; unset = no auth (local only)
    recsys_api_poll_seconds: float = Field(default=10.0, ge=0.05, le=3600.0, allow_inf_nan=False)
    recsys_api_cache_dir: Path | None = None  # local copies of snapshots; default under data dir
    recsys_api_max_body_bytes: int = Field(default=1_048_576, ge=1_024, le=64 * 1_048_576)
    recsys_api_cache_mb: int = Field(default=32, ge=0, le=4096)  # answers cached per snapshot
    # limits of the server and of each caller (README, "Security")
    recsys_api_max_header_bytes: int = Field(default=16_384, ge=1_024, le=1_048_576)
    recsys_api_header_timeout_seconds: float = Field(default=5.0, gt=0, le=300, allow_inf_nan=False)
    recsys_api_body_timeout_seconds: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    recsys_api_max_concurrency: int = Field(default=256, ge=1, le=100_000)
    recsys_api_rate_limit: float = Field(
        default=1_000.0, ge=0, allow_inf_nan=False
    )  # requests/s per key; 0 = off
    recsys_api_rate_burst: int = Field(default=2_000, ge=1)
    # answer /v1 on a non-loopback address without keys (something in front checks callers)
    recsys_api_allow_no_auth: bool = False
    # browsers on these origins may call the API (CORS): comma-separated scheme://host[:port],
    # or * for any; unset = no CORS headers at all
    recsys_api_cors_origins: str = ""
    # answers of at least this many bytes are gzipped for a client that accepts it; 0 = never
    recsys_api_gzip_min_bytes: int = Field(default=1_400, ge=0, le=64 * 1_048_576)
    # the closed loop (README, "The closed loop"): what the service showed, and experiments
    recsys_impressions_log: bool = True  # log every answer to the lake's landing/impressions/
    recsys_impressions_buffer: int = Field(default=100_000, ge=0, le=10_000_000)
    recsys_impressions_flush_seconds: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    recsys_experiments_file: Path | None = None  # YAML; unset: no experiments
    # monitoring (README, "Monitoring"): the service, dbt's source freshness, the retraining
    # policy (monitoring/policy.py)
    recsys_monitoring_poll_seconds: float = Field(
        default=30.0, ge=0.05, le=3600, allow_inf_nan=False
    )
    recsys_monitoring_webhook_token: SecretStr | None = None  # Alertmanager's bearer token
    recsys_freshness_warn_hours: float = Field(default=6.0, gt=0, le=24 * 365, allow_inf_nan=False)
    recsys_freshness_error_hours: float = Field(
        default=24.0, gt=0, le=24 * 365, allow_inf_nan=False
    )
    recsys_retrain_ndcg_drop: float = Field(default=0.2, gt=0, lt=1, allow_inf_nan=False)
    recsys_retrain_min_live_visitors: int = Field(default=100, ge=1)
    recsys_retrain_max_snapshot_age_days: float = Field(default=14.0, gt=0, allow_inf_nan=False)
    recsys_retrain_every_days: float = Field(default=7.0, gt=0, allow_inf_nan=False)
    recsys_retrain_cooldown_hours: float = Field(default=24.0, ge=0, allow_inf_nan=False)
    # how far ahead of this machine's clock an event may be (the API refuses, ingest rejects)
    recsys_max_clock_skew_seconds: int = Field(default=300, ge=0, le=7 * 86_400)

    @field_validator("recsys_dbt_target", mode="before")
    @classmethod
    def _empty_target_is_the_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("recsys_lake_uri")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.strip().rstrip("/")

    @field_validator("recsys_api_keys")
    @classmethod
    def _keys_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # commas or lines: a key file may hold one key per line
        keys = [k.strip() for k in re.split(r"[,\n]", value.get_secret_value()) if k.strip()]
        short = sum(len(k) < MIN_API_KEY_LENGTH for k in keys)
        if short:
            # says how many, never which: the message may end up in a log
            raise ValueError(
                f"RECSYS_API_KEYS: {short} of {len(keys)} keys are shorter than "
                f"{MIN_API_KEY_LENGTH} characters"
            )
        return SecretStr(",".join(keys)) if keys else None

    @field_validator("recsys_monitoring_webhook_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if len(token) < MIN_API_KEY_LENGTH:  # empty included: it would let any caller in
            raise ValueError(
                f"RECSYS_MONITORING_WEBHOOK_TOKEN: shorter than {MIN_API_KEY_LENGTH} characters"
            )
        return SecretStr(token)

    @field_validator("recsys_api_cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: str) -> str:
        origins = [o.strip() for o in value.split(",") if o.strip()]
        wrong = [o for o in origins if o != "*" and not CORS_ORIGIN.fullmatch(o)]
        if wrong:
            raise ValueError(
                f"RECSYS_API_CORS_ORIGINS: {len(wrong)} entries are not an origin "
                "(scheme://host[:port], no path) or *"
            )
        return ",".join(origins)

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """Origins whose pages may call the API from a browser; empty: CORS off."""
        return tuple(o for o in self.recsys_api_cors_origins.split(",") if o)

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The accepted API keys; empty when auth is off."""
        if self.recsys_api_keys is None:
            return ()
        return tuple(self.recsys_api_keys.get_secret_value().split(","))

    @property
    def api_cache_dir(self) -> Path:
        """Where the API keeps its local copies of snapshots (downloaded from the lake)."""
        if self.recsys_api_cache_dir is not None:
            return self.recsys_api_cache_dir.expanduser().resolve()
        return self.data_dir / "api_cache"

    def max_event_timestamp_ms(self) -> int:
        """The latest event time accepted now: this machine's clock plus the allowed skew."""
        return int(time.time() * 1000) + self.recsys_max_clock_skew_seconds * 1000

    @property
    def data_dir(self) -> Path:
        return self.recsys_data_dir.expanduser().resolve()

    @property
    def dbt_project_dir(self) -> Path:
        return self.recsys_dbt_project_dir.expanduser().resolve()

    @property
    def lake_uri(self) -> str:
        return self.recsys_lake_uri or str(self.data_dir / "lake")

    # Where the pipeline keeps its files under the data folder: named once here, for the
    # command line, the pipeline and the DAGs alike.
    @property
    def models_dir(self) -> Path:
        """The trained models: `ranker/`, the conformal calibrations, `training.json`."""
        return self.data_dir / "models"

    @property
    def ranker_dir(self) -> Path:
        return self.models_dir / "ranker"

    @property
    def reports_dir(self) -> Path:
        """The evaluation's `metrics.json`, its report and plots, the feature importance."""
        return self.data_dir / "reports"

    @property
    def metrics_path(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def snapshot_build_path(self) -> Path:
        """Where `publish` builds the snapshot file before it is verified and uploaded."""
        return self.data_dir / "snapshot_build" / "snapshot.duckdb"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @cached_property
    def s3_options(self) -> dict[str, object]:
        """Keyword arguments for `s3fs.S3FileSystem`, from the standard AWS variables."""
        # listings are not cached: another process (dbt, the API) may have written meanwhile
        options: dict[str, object] = {"use_listings_cache": False}
        if self.aws_access_key_id:
            options["key"] = self.aws_access_key_id
        if self.aws_secret_access_key:
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.aws_endpoint_url:
            options["endpoint_url"] = self.aws_endpoint_url
        if self.aws_region:
            options["client_kwargs"] = {"region_name": self.aws_region}
        return options

    def dbt_env(self) -> dict[str, str]:
        """Environment for dbt: absolute paths so dbt's cwd does not matter, and the S3
        credentials wherever they came from (s3fs inside dbt reads only the AWS variables, and
        a `*_FILE` secret is not one)."""
        env = {
            "RECSYS_DATA_DIR": str(self.data_dir),
            "RECSYS_LAKE_URI": self.lake_uri,
            # dbt's source freshness (models/staging/*sources.yml) reads its ages from these
            "RECSYS_FRESHNESS_WARN_HOURS": f"{self.recsys_freshness_warn_hours:g}",
            "RECSYS_FRESHNESS_ERROR_HOURS": f"{self.recsys_freshness_error_hours:g}",
        }
        if self.recsys_dbt_target:  # the profile's `target:` reads it
            env["RECSYS_DBT_TARGET"] = self.recsys_dbt_target
        if self.aws_access_key_id:
            env["AWS_ACCESS_KEY_ID"] = self.aws_access_key_id
        if self.aws_secret_access_key:
            env["AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key.get_secret_value()
        return env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            SecretFiles(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


# settings that may come from a file named by `<NAME>_FILE` (how Docker and Kubernetes mount
# secrets) instead of the variable itself
SECRET_FILE_SETTINGS = (
    "recsys_api_keys",
    "aws_access_key_id",
    "aws_secret_access_key",
    "recsys_monitoring_webhook_token",
)
MAX_SECRET_FILE_BYTES = 65_536


class SecretFiles(PydanticBaseSettingsSource):
    """`RECSYS_API_KEYS_FILE`, `AWS_ACCESS_KEY_ID_FILE`, `AWS_SECRET_ACCESS_KEY_FILE`,
    `RECSYS_MONITORING_WEBHOOK_TOKEN_FILE`: the
    setting is the file's content (surrounding whitespace stripped). Setting both a variable
    and its `_FILE` is an error, not a silent choice."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # all the work is in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_FILE_SETTINGS:
            variable = name.upper()
            path = os.environ.get(f"{variable}_FILE", "").strip()
            if not path:
                continue
            if variable in os.environ:  # even empty: `VAR: ${VAR:-}` must not switch auth off
                raise SettingsError(f"{variable} and {variable}_FILE are both set: set one")
            try:
                with open(path, "rb") as fh:
                    data = fh.read(MAX_SECRET_FILE_BYTES + 1)
            except OSError as exc:
                raise SettingsError(
                    f"{variable}_FILE: cannot read {path}: {exc.strerror}"
                ) from None
            if len(data) > MAX_SECRET_FILE_BYTES:
                raise SettingsError(f"{variable}_FILE: {path} is larger than a secret can be")
            try:
                text = data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise SettingsError(f"{variable}_FILE: {path} is not UTF-8 text") from None
            if not text:  # an empty key file would silently mean "no auth"
                raise SettingsError(f"{variable}_FILE: {path} is empty")
            values[name] = text
        return values


def get_settings() -> Settings:
    return Settings()
