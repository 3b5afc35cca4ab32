"""Typed configuration: one settings object, overridable from the environment.

Every default documents itself here; nothing reads files behind the user's back. The
environment variables are ``XINTEREST_<FIELD>`` (e.g. ``XINTEREST_PROFILE=prod``), plus the
conventional ``REDIS_URL`` and ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PSEUDONYM_KEY = "xinterest-local-demo-key-not-for-production"

Profile = Literal["local", "prod"]


class Settings(BaseSettings):
    """Settings for every command; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="XINTEREST_", extra="ignore")

    data_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "data",
        description="Folder holding the public datasets (douban-book-music, taobao-userbehavior, ml-latest-small).",
    )
    workdir: Path = Field(
        default=Path(".xinterest"),
        description="Where a pipeline keeps its lake, features, Feast repo, MLflow store and logs.",
    )
    profile: Profile = Field(
        default="local",
        description="local: file offline store, SQLite online store, file registry. "
        "prod: Redis online store and a SQL registry on PostgreSQL.",
    )
    pseudonym_key: SecretStr = Field(
        default=SecretStr(DEMO_PSEUDONYM_KEY),
        description="Key of the keyed hash that pseudonymises raw user ids. Set it in production.",
    )
    redis_url: str = Field(
        default="127.0.0.1:6379",
        validation_alias=AliasChoices("XINTEREST_REDIS_URL", "REDIS_URL"),
        description="Redis online store for the prod profile (host:port[,db=N] as Feast expects).",
    )
    postgres_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        description="SQLAlchemy URL of the PostgreSQL database holding the prod Feast registry and MLflow.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("XINTEREST_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking + registry URI; default: a SQLite file in the workdir "
        "(local) or postgres_url (prod).",
    )
    feast_project: str = Field(
        default="xinterest",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$",
        description="Feast project name; separates work directories that share a prod registry and Redis.",
    )
    sequence_length: int = Field(default=50, ge=1, le=1000, description="N of the recent-behaviour sequence features.")
    seed: int = Field(default=0, description="Seed for every random choice.")

    @property
    def using_demo_key(self) -> bool:
        return self.pseudonym_key.get_secret_value() == DEMO_PSEUDONYM_KEY


@dataclass(frozen=True)
class Workdir:
    """The layout of one work directory; every path a pipeline writes is named here."""

    root: Path

    @classmethod
    def at(cls, path: Path | str) -> Workdir:
        return cls(Path(path).expanduser().resolve())

    @cached_property
    def lake(self) -> Path:
        return self.root / "lake"

    @cached_property
    def quarantine(self) -> Path:
        """Rows that broke the contract, with reasons (raw text only for unparseable rows)."""
        return self.root / "quarantine"

    @cached_property
    def raw(self) -> Path:
        return self.root / "raw"

    @cached_property
    def feature_repo(self) -> Path:
        """A standard Feast repository for this workdir (`cd` here and use the Feast CLI)."""
        return self.root / "feature_repo"

    @cached_property
    def feature_data(self) -> Path:
        """Offline feature tables, referenced by the definitions as ``data/<table>.parquet``."""
        return self.feature_repo / "data"

    @cached_property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @cached_property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @cached_property
    def feedback(self) -> Path:
        return self.root / "feedback"

    @cached_property
    def reports(self) -> Path:
        return self.root / "reports"


def tracking_uri(settings: Settings, workdir: Workdir) -> str:
    """MLflow tracking + registry URI: explicit setting, else PostgreSQL (prod) or a SQLite file."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    if settings.profile == "prod":
        return settings.postgres_url
    return f"sqlite:///{workdir.mlflow_db}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)  # type: ignore[arg-type]
