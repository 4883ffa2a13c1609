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

    # the Celery runner (ML3_RUNNER=celery) and its workers
    visibility_timeout: float = Field(3600.0, gt=0)  # Redis re-delivers an unacked message after this
    sweep_seconds: float = Field(5.0, gt=0, le=3600)  # how often the API sends the jobs that have no message

    # request limits
    max_eval_values: int = Field(4_000_000, ge=1)  # elements of pred in one evaluate request
    max_query_values: int = Field(1000, ge=1)  # values in a GET evaluate query
    max_body_bytes: int = Field(64 * 2**20, ge=1024)
    max_big_evaluates: int = Field(2, ge=1)  # evaluate bodies over 256 KiB parsed at once (the others wait)
    # memory estimate of one evaluate batch or landscape grid in the API process: with max_big_evaluates
    # of them at once the process stays well under 2 GB
    max_request_bytes: int = Field(512 * 2**20, ge=1)
    loss_cache_size: int = Field(32, ge=1)
    # how long evaluate serves a cached loss before re-reading and re-checking its stored bundle: a
    # version damaged in the database is refused (bundle_corrupt) after at most this long
    loss_recheck_seconds: float = Field(10.0, gt=0, le=3600)
    # how long evaluate may reuse what a loss id resolved to (0: ask the database every time); this
    # process's own alias/version changes drop the cache at once, other processes' after at most this
    resolve_cache_seconds: float = Field(1.0, ge=0, le=60)
    page_limit: int = Field(100, ge=1)  # most items per page

    # access (app/services/security.py): auto = keys required unless the server listens on loopback only
    auth: Literal["auto", "on", "off"] = "auto"
    auth_reads: bool = False  # reads need a key (scope read) too
    host: str = "127.0.0.1"  # the address served on (ml3 serve --host); what auth=auto decides on
    bench_routes: bool = False  # /v1/_echo, the bare route bench/ compares against: off unless asked for

    # job sizes and per-key quotas (app/services/limits.py); each violation is a 4xx naming the setting
    max_array_items: int = Field(1000, ge=1)  # items in any list of a job or meta-test spec
    max_seeds: int = Field(32, ge=1)
    max_outer_iterations: int = Field(100_000, ge=1)
    max_inner_steps: int = Field(1000, ge=1)  # the unroll length M
    max_hidden: int = Field(1024, ge=1)  # widest layer of L_phi or of the optimizee
    max_tasks: int = Field(1000, ge=1)  # tasks per batch, per curve, per meta-test
    max_steps: int = Field(20_000, ge=1)  # SGD steps of a curve or a meta-test (horizons too)
    # memory estimate of a run's largest phase (an unroll, a curve, a meta-test and its recorded curves):
    # 1 GiB keeps a runner process well under 2 GB
    max_unroll_bytes: int = Field(2**30, ge=1)
    max_work: int = Field(10**15, ge=1)  # multiply-adds of a whole run: training, curves, meta-test
    max_active_jobs: int = Field(8, ge=1)  # queued + running jobs of one key
    max_sweep_trials: int = Field(64, ge=1)  # trials of one sweep (each a meta-train job)
    max_key_writes: int = Field(4, ge=1)  # submits and uploads of one key (of one address when open) at once
    max_streams: int = Field(20, ge=1)  # open event streams (SSE) of one key (of one address when open)
    sse_keepalive_seconds: float = Field(15.0, gt=0, le=300)  # an idle event stream sends a comment this often
    eval_rate: float = Field(100.0, ge=0)  # evaluate requests per second per key (0: no limit)
    eval_burst: int = Field(200, ge=1)

    # uploaded data sets (POST /v1/datasets); a violation is a 4xx naming the setting
    dataset_max_bytes: int = Field(32 * 2**20, ge=1024)  # an upload, and its arrays once unpacked
    dataset_max_rows: int = Field(1_000_000, ge=1)
    dataset_max_columns: int = Field(1024, ge=2)  # inputs + outputs
    dataset_max_tasks: int = Field(10_000, ge=3)
    dataset_min_tasks: int = Field(3, ge=3)  # one each for meta-train, meta-validation, meta-test
    dataset_min_task_rows: int = Field(4, ge=2)  # rows of every task: train and held-out points

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
