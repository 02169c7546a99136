"""Settings shared by every stage, read from the environment (and a `.env` file if present)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"


class Settings(BaseSettings):
    """Where the pipeline reads and writes. See the settings table in DESIGN.md."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    recsys_data_dir: Path = Path("./data")
    recsys_lake_uri: str | None = None
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_region: str | None = None

    @field_validator("recsys_lake_uri")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.strip().rstrip("/")

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
