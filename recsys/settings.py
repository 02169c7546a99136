"""Settings shared by every stage, read from the environment (and a `.env` file if present)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
MIN_API_KEY_LENGTH = 16  # a short key can be guessed; it would be no key at all


class Settings(BaseSettings):
    """Where the pipeline reads and writes. See the settings table in DESIGN.md."""

    # hide_input_in_errors: a refused value is never echoed (it may be a key or a secret)
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    recsys_data_dir: Path = Path("./data")
    recsys_lake_uri: str | None = None
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_region: str | None = None

    # the HTTP service (api/); see README, "Serving recommendations"
    recsys_api_keys: SecretStr | None = None  # comma-separated; unset = no auth (local only)
    recsys_api_poll_seconds: float = Field(default=10.0, ge=0.05, le=3600.0)
    recsys_api_cache_dir: Path | None = None  # local copies of snapshots; default under data dir
    recsys_api_max_body_bytes: int = Field(default=1_048_576, ge=1_024, le=64 * 1_048_576)
    recsys_api_cache_mb: int = Field(default=32, ge=0, le=4096)  # answers cached per snapshot

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
        keys = [k.strip() for k in value.get_secret_value().split(",") if k.strip()]
        short = sum(len(k) < MIN_API_KEY_LENGTH for k in keys)
        if short:
            # says how many, never which: the message may end up in a log
            raise ValueError(
                f"RECSYS_API_KEYS: {short} of {len(keys)} keys are shorter than "
                f"{MIN_API_KEY_LENGTH} characters"
            )
        return SecretStr(",".join(keys)) if keys else None

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

    @property
    def data_dir(self) -> Path:
        return self.recsys_data_dir.expanduser().resolve()

    @property
    def lake_uri(self) -> str:
        return self.recsys_lake_uri or str(self.data_dir / "lake")

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
            options["secret"] = self.aws_secret_access_key
        if self.aws_endpoint_url:
            options["endpoint_url"] = self.aws_endpoint_url
        if self.aws_region:
            options["client_kwargs"] = {"region_name": self.aws_region}
        return options

    def dbt_env(self) -> dict[str, str]:
        """Environment for a dbt subprocess: absolute paths so dbt's cwd does not matter."""
        return {"RECSYS_DATA_DIR": str(self.data_dir), "RECSYS_LAKE_URI": self.lake_uri}


def get_settings() -> Settings:
    return Settings()
