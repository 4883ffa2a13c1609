"""Service settings, read from ``ML3_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ML3_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str = ""  # default: sqlite file ml3.db in data_dir
    runner: Literal["local", "celery", "none"] = "local"  # none: jobs wait for an external runner
    broker_url: str = "redis://127.0.0.1:6379/0"

    # the embedded runner and the job lease
    poll_seconds: float = Field(0.5, gt=0, le=60)  # how often an idle runner looks for work
    lease_seconds: float = Field(30.0, gt=0, le=86_400)  # a lease without heartbeat for this long is free
    max_attempts: int = Field(3, ge=1, le=100)  # claims of one job before it is failed
    checkpoint_every: int = Field(50, ge=1)  # meta-iterations between checkpoints
    progress_every: int = Field(5, ge=1)  # meta-iterations between progress writes
    runner_threads: int = Field(1, ge=1, le=256)  # torch threads of a job
    api_threads: int = Field(1, ge=1, le=256)  # torch threads of evaluate in the API process

    # request limits
    max_eval_values: int = Field(4_000_000, ge=1)  # elements of pred in one evaluate request
    max_query_values: int = Field(1000, ge=1)  # values in a GET evaluate query
    max_body_bytes: int = Field(64 * 2**20, ge=1024)
    loss_cache_size: int = Field(32, ge=1)
    page_limit: int = Field(100, ge=1)  # most items per page

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ml3.db').resolve()}"

    def env(self) -> dict:
        """These settings as ML3_* variables, for a child process (the embedded runner)."""
        out = {}
        for name, value in self.model_dump().items():
            out[f"ML3_{name.upper()}"] = str(value)
        out["ML3_DATABASE_URL"] = self.db_url
        out["ML3_DATA_DIR"] = str(Path(self.data_dir).resolve())
        return out


@lru_cache
def get_settings() -> Settings:
    s = Settings()
    os.makedirs(s.data_dir, exist_ok=True)
    return s
