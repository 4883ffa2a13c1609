"""CLI commands of the service: ``ml3 serve``, ``ml3 db upgrade``, ``ml3 jobs ...``, ``ml3 losses ...``.

The jobs/losses commands talk to a running server (``--server`` or ML3_SERVER, default
http://127.0.0.1:8000) through ``app.client``; only ``serve`` and ``db`` load the server stack."""

from __future__ import annotations

import json
import os
import sys


def cmd_serve(args) -> int:
    import uvicorn

    if args.data_dir:
        os.environ["ML3_DATA_DIR"] = args.data_dir
    if args.runner:
        os.environ["ML3_RUNNER"] = args.runner
    from .core.config import get_settings
    from .main import create_app

    settings = get_settings()
    print(f"ml3 serving on http://{args.host}:{args.port} (data {settings.data_dir.resolve()}, "
          f"runner {settings.runner}); API docs at /docs", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def cmd_db_upgrade(args) -> int:
    from .core.config import get_settings
    from .db import upgrade

    url = get_settings().db_url
    upgrade(url, args.revision)
    print(f"database at revision {args.revision}: {url.split('@')[-1]}")
    return 0


def _client(args):
    from .client import Client

    return Client(args.server)


def _print(obj) -> None:
    print(json.dumps(obj, indent=1))


def _guard(fn):
    """Print a server problem as one line and exit 1 instead of a traceback."""

    def run(args):
        from .client import ApiError

        try:
            return fn(args)
        except ApiError as e:
            print(f"ml3: {e}", file=sys.stderr)
            return 1

    return run


def cmd_jobs_submit(args) -> int:
    from .cli import apply_sets

    spec = {}
    if args.spec:
        with open(args.spec) as f:
            spec = json.load(f)
    if args.family:
        spec.setdefault("task", {})["family"] = args.family
    if args.register_as:
        spec["register_as"] = args.register_as
    apply_sets(spec, args.set)
    with _client(args) as c:
        job = c.submit(spec, idempotency_key=args.idempotency_key)
        print(f"job {job['id']} {job['status']}: /v1/jobs/{job['id']}", file=sys.stderr)
        if args.wait:
            job = c.wait(job["id"])
        _print(job)
        return 0 if job["status"] in ("queued", "running", "succeeded") else 1


def cmd_jobs_list(args) -> int:
    with _client(args) as c:
        for i, job in enumerate(c.jobs(status=args.status, kind=args.kind)):
            if i >= args.limit:
                break
            p = job["progress"]
            result = (job.get("result") or {}).get("loss", "")
            print(f"{job['id']:>6}  {job['kind']:<10} {job['status']:<10} {p['completed']}/{p['total']}  {result}")
    return 0


def cmd_jobs_show(args) -> int:
    with _client(args) as c:
        _print(c.job(args.id))
    return 0


def cmd_jobs_watch(args) -> int:
    with _client(args) as c:
        job = c.wait(args.id)
        _print({k: job[k] for k in ("id", "status", "progress", "metrics", "error", "result")})
        return 0 if job["status"] == "succeeded" else 1


def cmd_jobs_cancel(args) -> int:
    with _client(args) as c:
        job = c.cancel(args.id)
        print(f"job {job['id']}: {job['status']} (cancel requested)")
    return 0


def cmd_losses_list(args) -> int:
    with _client(args) as c:
        for loss in c.losses():
            aliases = " ".join(f"@{a}->{v}" for a, v in loss["aliases"].items())
            print(f"{loss['name']:<32} latest {loss['latest_version']}  {aliases}")
    return 0


def cmd_losses_pull(args) -> int:
    with _client(args) as c:
        print(c.pull(args.id, args.out))
    return 0


def cmd_losses_evaluate(args) -> int:
    def numbers(text):
        return None if text is None else [float(v) for v in text.split(",")]

    with _client(args) as c:
        out = c.evaluate(args.id, numbers(args.pred), numbers(args.target), numbers(args.x),
                         reduction=args.reduction, return_grad=args.grad)
        _print(out)
    return 0


def cmd_losses_alias(args) -> int:
    with _client(args) as c:
        _print(c.set_alias(args.name, args.alias, args.version))
    return 0


def add_commands(sub) -> None:
    """Register the service's subcommands on the ``ml3`` parser."""
    p = sub.add_parser("serve", help="run the REST service (SQLite + embedded runner by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", help="where the database lives (ML3_DATA_DIR, default ./var)")
    p.add_argument("--runner", choices=["local", "celery", "none"], help="job runner (ML3_RUNNER)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("upgrade", help="apply the migrations (ML3_DATABASE_URL)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_db_upgrade)

    server = {"help": "server URL (ML3_SERVER, default http://127.0.0.1:8000)"}
    jobs = sub.add_parser("jobs", help="submit and follow jobs on a server").add_subparsers(
        dest="jobs_command", required=True)
    p = jobs.add_parser("submit", help="submit a meta-train job")
    p.add_argument("--spec", help="a JSON job spec file")
    p.add_argument("--family", help="task family (sets task.family)")
    p.add_argument("--register-as", help="registry name of the learned loss")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any spec field, e.g. --set seeds=2")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="follow the job to the end")
    p.set_defaults(func=_guard(cmd_jobs_submit))
    p = jobs.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--kind")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_guard(cmd_jobs_list))
    for name, fn, hlp in (("show", cmd_jobs_show, "a job as JSON"), ("watch", cmd_jobs_watch, "follow a job"),
                          ("cancel", cmd_jobs_cancel, "cancel a job (checkpoint kept)")):
        p = jobs.add_parser(name, help=hlp)
        p.add_argument("id", type=int)
        p.set_defaults(func=_guard(fn))

    losses = sub.add_parser("losses", help="use the loss registry of a server").add_subparsers(
        dest="losses_command", required=True)
    p = losses.add_parser("list", help="registered losses")
    p.set_defaults(func=_guard(cmd_losses_list))
    p = losses.add_parser("pull", help="download a loss bundle (zip)")
    p.add_argument("id", help="name, name:VERSION or name@ALIAS")
    p.add_argument("--out", help="zip path (default NAME-vVERSION.zip)")
    p.set_defaults(func=_guard(cmd_losses_pull))
    p = losses.add_parser("evaluate", help="evaluate a loss on a few points")
    p.add_argument("id")
    p.add_argument("--pred", required=True, help="comma-separated, e.g. 0.1,0.5")
    p.add_argument("--target", required=True)
    p.add_argument("--x")
    p.add_argument("--reduction", choices=["mean", "sum", "none"], default="mean")
    p.add_argument("--grad", action="store_true", help="also return d loss / d pred")
    p.set_defaults(func=_guard(cmd_losses_evaluate))
    p = losses.add_parser("alias", help="set or move an alias")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", type=int)
    p.set_defaults(func=_guard(cmd_losses_alias))
    for parser in (*jobs.choices.values(), *losses.choices.values()):
        parser.add_argument("--server", **server)
