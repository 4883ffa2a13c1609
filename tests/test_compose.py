"""The container topology, checked without Docker (which cannot run here): every ml3 service runs
a real ``ml3`` subcommand, parsed by the real parser; every ML3_* variable is a real setting with a
valid value; Redis never evicts; the GPU worker reserves an NVIDIA device; and neither file names a
download host (the PyTorch index is a build argument)."""

import re

import pytest
import yaml
from conftest import ROOT

from app.cli.commands import make_parser
from app.cli.service import cmd_db_upgrade, cmd_serve, cmd_worker
from app.core.config import Settings

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ML3 = {"migrate": cmd_db_upgrade, "api": cmd_serve, "worker-cpu": cmd_worker, "worker-gpu": cmd_worker}


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set: the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def test_the_services_of_the_topology():
    assert set(SERVICES) == {"postgres", "redis", *ML3}
    redis = SERVICES["redis"]["command"]
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-cpu", "worker-gpu"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", sorted(ML3))
def test_each_ml3_service_runs_a_real_subcommand_with_real_settings(name, monkeypatch):
    service = SERVICES[name]
    command = service["command"]
    assert command[0] == "ml3"
    args = make_parser().parse_args(command[1:])  # an unknown subcommand or flag exits here
    assert args.func is ML3[name]
    env = service["environment"]
    unknown = [k for k in env if k.startswith("ML3_") and k[4:].lower() not in Settings.model_fields]
    assert unknown == []
    for key, value in env.items():
        monkeypatch.setenv(key, interpolate(value))
    settings = Settings()  # every value parses
    assert settings.runner == "celery"
    assert settings.db_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in settings.db_url
    assert settings.broker_url.startswith("redis://redis:6379/")


def test_workers_take_their_queue_and_the_gpu_worker_reserves_a_gpu():
    parse = make_parser().parse_args
    cpu, gpu = (parse(SERVICES[n]["command"][1:]) for n in ("worker-cpu", "worker-gpu"))
    assert (cpu.queues, gpu.queues, gpu.concurrency) == ("cpu", "gpu", 1)
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert SERVICES["worker-cpu"]["build"]["args"]["TORCH"] == "cpu"
    assert interpolate(SERVICES["worker-gpu"]["build"]["args"]["TORCH"]).startswith("cu")
    assert SERVICES["worker-gpu"]["image"] != SERVICES["worker-cpu"]["image"]
    assert parse(SERVICES["api"]["command"][1:]).host == "0.0.0.0"


def test_the_dockerfile_is_multi_stage_and_takes_the_torch_index_as_an_argument():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    for arg in ("TORCH", "TORCH_INDEX_URL", "TORCH_VERSION"):
        assert re.search(rf"^ARG {arg}\b", text, re.M)
    assert '--index-url "${TORCH_INDEX_URL%/}/${TORCH}"' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)


def test_no_download_host_is_written_into_the_container_files():
    for name in ("Dockerfile", "docker-compose.yml", ".dockerignore"):
        hosts = re.findall(r"https?://([^/\s:'\"]+)", (ROOT / name).read_text())
        assert set(hosts) <= {"127.0.0.1", "localhost"}, (name, hosts)


def test_a_gpu_worker_refuses_to_run_two_jobs_at_once(capsys):
    from app.cli import main

    assert main(["worker", "--queues", "gpu", "--concurrency", "2"]) == 2
    assert "one job at a time" in capsys.readouterr().err
