"""The ``ml3`` console script. Its commands are the service's (app/cli), which run from a clone of the
repository with the ``server`` extra (``make venv``: an editable install that puts the clone on sys.path);
the base install (ml3core: load a loss, train with it, the client) has no app/, so there the script says
in one line which install gives the commands instead of failing with a traceback."""

from __future__ import annotations

import importlib
import sys

# the top-level modules of the service and of the extra ``server``: missing, they mean that install is missing
SERVER_MODULES = {"app", "worker", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "sqlalchemy",
                  "alembic", "celery", "kombu", "redis", "psycopg", "matplotlib", "jinja2", "multipart",
                  "python_multipart", "fastapi_offline"}
HOW = ("the ml3 command needs the service's install: in a clone of the ml3 repository run `make venv` "
       "(or pip install -e '.[server]' --config-settings editable_mode=compat) and use .venv/bin/ml3")


def main(argv=None) -> int:
    try:
        return importlib.import_module("app.cli").main(argv)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in SERVER_MODULES:
            raise
        print(f"ml3: {HOW} (missing: {missing})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
