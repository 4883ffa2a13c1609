"""The downstream install: the wheel holds ml3core (and the ml3 command's launcher) and needs none of the
service's packages; loading a loss imports none of them; the ml3 command without the service's install
says in one line which install gives it."""

import email
import re
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT

# the service's packages (the extra "server") and what they bring along
SERVER = ("fastapi", "starlette", "sqlalchemy", "celery", "alembic", "uvicorn", "kombu", "psycopg", "matplotlib",
          "jinja2", "pydantic")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_wheel_holds_ml3core_only_and_the_service_is_the_extra_server(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "ml3_cli.py"):
        shutil.copy(ROOT / name, src / name)
    for name in ("ml3core", "app", "worker"):  # app/ and worker/ beside it, as in a clone: left out all the same
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("ml3-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_bytes(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert top == {"ml3core", "ml3_cli.py"}, top
    assert "ml3core/presets.json" in names and "ml3core/export.py" in names and "ml3core/client.py" in names
    assert "ml3 = ml3_cli:main" in entry_points
    requires = meta.get_all("Requires-Dist")
    base = {_name(r) for r in requires if "extra ==" not in r}
    assert base == {"torch", "safetensors", "numpy", "httpx"}, base
    for r in requires:
        if _name(r) in SERVER or _name(r) in ("psycopg", "redis", "fastapi-offline", "python-multipart"):
            assert re.search(r"""extra == ["']server["']""", r), r
    assert {"server"} <= set(meta.get_all("Provides-Extra"))


def test_loading_a_loss_and_the_client_import_none_of_the_service(tmp_path):
    code = ("import sys\nfrom ml3core import load_loss\n"
            "import ml3core.client, ml3core.export, ml3core.api, ml3core.schema\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER!r} or m.split('.')[0] in "
            "('app', 'worker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def _ml3(tmp_path, argv: list[str], missing: str):
    code = (f"import sys; sys.modules[{missing!r}] = None\nimport ml3_cli\nsys.exit(ml3_cli.main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_ml3_command_without_the_server_install_says_which_install_gives_it(tmp_path):
    for argv, missing in ((["--version"], "app"), (["serve"], "uvicorn"), (["--version"], "matplotlib")):
        out = _ml3(tmp_path, argv, missing)
        if missing == "matplotlib":  # --version needs none of the service's packages: it runs
            assert out.returncode == 0 and out.stdout.startswith("ml3 "), out.stderr
            continue
        assert out.returncode == 1, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "make venv" in lines[0] and "'.[server]'" in lines[0], out.stderr
        assert f"(missing: {missing})" in lines[0]


def test_the_makefile_and_the_dockerfile_install_the_server_extra_in_place():
    compat = r"pip install (-q )?-e '\.\[server[^']*\]' --config-settings editable_mode=compat"
    assert re.search(compat, (ROOT / "Makefile").read_text())
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(compat, docker) and "COPY ml3_cli.py" in docker
