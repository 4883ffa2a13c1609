"""CLI commands of the service: ``ml3 serve``, ``ml3 worker``, ``ml3 db upgrade``, ``ml3 jobs ...``,
``ml3 losses ...``.

The jobs/losses commands talk to a running server (``--server`` or ML3_SERVER, default
http://127.0.0.1:8000) through ``ml3core.client``; only ``serve`` and ``db`` load the server stack."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

from ml3core.progress import GREEN, RED, colours


def cmd_serve(args) -> int:
    import uvicorn

    if args.data_dir:
        os.environ["ML3_DATA_DIR"] = args.data_dir
    if args.runner:
        os.environ["ML3_RUNNER"] = args.runner
    from app.core.config import get_settings
    from app.main import create_app

    os.environ["ML3_HOST"] = args.host  # ML3_AUTH=auto requires API keys off loopback
    settings = get_settings()
    print(f"ml3 serving on http://{args.host}:{args.port} (data {settings.data_dir.resolve()}, "
          f"runner {settings.runner}); API docs at /docs", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def cmd_worker(args) -> int:
    if args.concurrency < 1:
        print("ml3: --concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.queues == "gpu" and args.concurrency != 1:
        print("ml3: a GPU worker runs one job at a time; start one worker per GPU instead", file=sys.stderr)
        return 2
    from worker.celery_app import start

    start(args.queues, args.concurrency, args.log_level)
    return 0


def cmd_db_upgrade(args) -> int:
    from app.core.config import get_settings
    from app.db.session import upgrade

    url = get_settings().db_url
    upgrade(url, args.revision)
    print(f"database at revision {args.revision}: {url.split('@')[-1]}")
    return 0


def cmd_keys(args) -> int:
    """Create, list and revoke API keys in the database itself (no server needed)."""
    from app.core.config import get_settings
    from app.db.models import iso
    from app.db.session import get_sessionmaker, upgrade
    from app.services import security

    url = get_settings().db_url
    upgrade(url)
    with get_sessionmaker(url).begin() as db:
        if args.keys_command == "create":
            key, token = security.create_key(db, args.scope, args.name)
            print(f"key {key.prefix} (scope {key.scope}) created; its token, shown only now:", file=sys.stderr)
            print(token)
        elif args.keys_command == "revoke":
            key = security.revoke_key(db, args.key)
            if key is None:
                print(f"ml3: no key {args.key!r}", file=sys.stderr)
                return 1
            print(f"key {key.prefix} revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        elif args.json:
            _print([{"prefix": k.prefix, "scope": k.scope, "name": k.name, "created_at": iso(k.created_at),
                     "revoked_at": iso(k.revoked_at)} for k in security.list_keys(db, args.all)])
        else:
            for key in security.list_keys(db, args.all):
                revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                created = f"{key.created_at:%Y-%m-%d %H:%M}"
                print(f"{key.prefix}  {key.scope:<6}  {created}  {revoked:<24}  {key.name}")
    return 0


def add_keys_commands(sub) -> None:
    keys = sub.add_parser("keys", help="API keys (ML3_DATABASE_URL or ML3_DATA_DIR)").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("create", help="create a key; prints its token once")
    p.add_argument("--scope", choices=["read", "submit", "admin"], required=True,
                   help="read: GETs, evaluate; submit: also jobs, meta-tests, data sets; admin: also aliases, tags")
    p.add_argument("--name", default="", help="who or what the key is for")
    p = keys.add_parser("list", help="keys by prefix, scope and state (never the tokens)")
    p.add_argument("--all", action="store_true", help="revoked keys too")
    p.add_argument("--json", action="store_true", help="print the keys as JSON (never the tokens)")
    p = keys.add_parser("revoke", help="revoke a key at once")
    p.add_argument("key", help="its prefix (from `ml3 keys list`) or the token")
    for parser in keys.choices.values():
        parser.set_defaults(func=cmd_keys)


def _client(args):
    from ml3core.client import Client

    return Client(args.server)


def _print(obj) -> None:
    print(json.dumps(obj, indent=1))


def _guard(fn):
    """Print a server problem, a server that cannot be reached or a file that cannot be read as one
    line and exit 1 instead of a traceback."""
    from ml3core.client import one_line_errors

    return one_line_errors("ml3")(fn)


def cmd_jobs_submit(args) -> int:
    from app.cli.spec_flags import apply_sets

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
        if args.json:
            _print(job)
            _warn(job)
        else:
            print(job_summary(job))
        return 0 if job["status"] in ("queued", "running", "succeeded") else 1


def job_summary(job: dict) -> str:
    """A job in a few lines: id, kind and status, the registered loss, its verdict, warnings or the
    error, and where to read the rest (``--json`` gives the whole job)."""
    result, error = job.get("result") or {}, job.get("error") or {}
    p = job.get("progress") or {}
    lines = [f"job {job['id']} ({job.get('kind', 'meta-train')}): {job['status']}"
             + (f", {p['completed']}/{p['total']} {p['unit']}" if p.get("total") else "")]
    if "loss" in result:
        sha = f" (sha256 {result['sha256'][:12]}…)" if result.get("sha256") else ""
        lines.append(f"loss:    {result['loss'] or 'none registered'}{sha}")
    if result.get("verdict"):
        lines.append(f"verdict: {result['verdict']} (meta-validation tasks)")
    horizon = result.get("horizon") or []
    if horizon:  # learned / tuned baseline per horizon: red where the loss loses
        paint = colours(sys.stdout)
        lines.append("vs tuned:" + "".join(" " + paint(f"{_ratio(h)} @{h['steps']}", RED if _loses(h) else GREEN)
                                           for h in horizon))
    lines += [colours(sys.stdout)(f"warning: {w}", RED) for w in result.get("warnings", [])]
    if error:
        lines.append(f"error:   {error.get('code')}: {error.get('detail')}")
    links = job.get("links") or {}
    lines.append(f"details: {links.get('self', '/v1/jobs/' + str(job['id']))} (ml3 jobs show {job['id']} "
                 f"--json: the whole job)")
    return "\n".join(lines)


def _ratio(row: dict) -> str:
    r = row.get("ratio_vs_tuned", row.get("heldout_ratio"))
    return "diverged" if r is None else f"{r:.3g}"


def _loses(row: dict) -> bool:
    r = row.get("ratio_vs_tuned", row.get("heldout_ratio"))
    return r is None or r > 1


def _table(header: tuple, rows: list[tuple]) -> None:
    """Columns as wide as their widest cell, under a header line; numbers right-aligned."""
    cells = [tuple(str(v) for v in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(row, widths, right, strict=True)).rstrip())


def cmd_jobs_list(args) -> int:
    with _client(args) as c:
        jobs = list(itertools.islice(c.jobs(status=args.status, kind=args.kind), args.limit))
        if args.json:
            _print(jobs)
            return 0
        rows = []
        for job in jobs:
            p = job["progress"]
            phase = (job.get("metrics") or {}).get("phase", "") if job["status"] == "running" else ""
            result = (job.get("result") or {}).get("loss", "")
            rows.append((job["id"], job["kind"], job["status"], phase, f"{p['completed']}/{p['total']} {p['unit']}",
                         result))
        _table(("ID", "KIND", "STATUS", "PHASE", "PROGRESS", "LOSS"), rows)
    return 0


def cmd_jobs_show(args) -> int:
    with _client(args) as c:
        job = c.job(args.id)
    if args.json:
        _print(job)
    else:
        print(job_summary(job))
    return 0


def cmd_jobs_watch(args) -> int:
    with _client(args) as c:
        job = c.wait(args.id)
        _print({k: job[k] for k in ("id", "status", "progress", "metrics", "error", "result")})
        _warn(job)
        return 0 if job["status"] == "succeeded" else 1


def _warn(job: dict) -> None:
    """The published loss's verdict, where it loses to the tuned baseline, or why nothing was published: on stderr."""
    if (job.get("result") or {}).get("verdict"):
        print(f"verdict: {job['result']['verdict']} (meta-validation tasks)", file=sys.stderr)
    paint = colours(sys.stderr)
    for warning in (job.get("result") or {}).get("warnings", []):
        print(paint(f"warning: {warning}", RED), file=sys.stderr)


def cmd_jobs_cancel(args) -> int:
    with _client(args) as c:
        job = c.cancel(args.id)
        print(f"job {job['id']}: {job['status']} (cancel requested)")
    return 0


def cmd_sweep(args) -> int:
    """Submit a sweep (or follow one: --watch ID), a line per trial as it starts and ends and the running trial's
    progress bar (the earliest, when several run), then its leaderboard."""
    with _client(args) as c:
        if args.watch is not None:
            sweep_id = args.watch
        else:
            sweep_id = c.submit(sweep_spec(args), idempotency_key=args.idempotency_key)["id"]
            print(f"sweep {sweep_id} submitted: /v1/jobs/{sweep_id}", file=sys.stderr)
        job = c.job(sweep_id)
        seen: dict[int, str] = {}
        followed: set[int] = set()
        while not args.no_wait:
            for t in job.get("trials", []):
                if seen.get(t["id"]) != t["status"]:
                    seen[t["id"]] = t["status"]
                    print(trial_line(t), file=sys.stderr, flush=True)
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            running = [t["id"] for t in job.get("trials", []) if t["status"] == "running" and t["id"] not in followed]
            if running:  # a trial runs for minutes: its progress bar (as ml3 jobs watch), then the sweep again
                followed.add(running[0])
                c.wait(running[0])
            else:
                time.sleep(args.interval)
            job = c.job(sweep_id)
    if args.json:
        _print(job)
    else:
        print_leaderboard(job)
    return 0 if job["status"] in ("queued", "running", "succeeded") else 1


def sweep_spec(args) -> dict:
    """The sweep a command line asks for: --spec (a whole sweep), --base/--family/--set (its base spec),
    --space KEY=JSON, and the sampler's flags (each given one wins over the file)."""
    from app.cli.spec_flags import apply_sets, parse_value

    spec = {"kind": "sweep"}
    if args.spec:
        with open(args.spec) as f:
            spec.update(json.load(f))
    if args.base:
        with open(args.base) as f:
            spec["base"] = json.load(f)
    base = spec.setdefault("base", {})
    if args.family:
        base.setdefault("task", {})["family"] = args.family
    apply_sets(base, args.set)
    for item in args.space or []:
        key, _, value = item.partition("=")
        spec.setdefault("space", {})[key] = parse_value(value)
    for name in ("trials", "sampler", "seed", "parallel", "register_as"):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    if args.horizons:
        spec["horizons"] = [int(h) for h in args.horizons.split(",")]
    return spec


def _settings(params: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in params.items())


def trial_line(t: dict) -> str:
    score = f" score {t['score']:.4g}" if t.get("score") is not None else ""
    error = f" ({t['error']['code']}: {t['error']['detail']})" if t.get("error") else ""
    return f"trial {t['trial']} (job {t['id']}) {t['status']}{score}  {_settings(t['params'])}{error}"


def print_leaderboard(job: dict) -> None:
    """The trials best first (score: worst ratio against the tuned baseline on meta-validation tasks)."""
    trials = [job["trials"][i] for i in job.get("leaderboard", [])]
    horizons = sorted({h for t in trials for h in t["ratios"]}, key=int)
    keys = list(trials[0]["params"]) if trials else []

    def cell(v):
        return "-" if v is None else float(f"{v:.4g}")

    rows = [(rank, t["trial"], t["id"], t["status"], cell(t["score"]), *(cell(t["ratios"].get(h)) for h in horizons),
             *(json.dumps(t["params"][k]) for k in keys)) for rank, t in enumerate(trials, 1)]
    _table(("RANK", "TRIAL", "JOB", "STATUS", "SCORE", *(f"@{h}" for h in horizons), *(k.upper() for k in keys)),
           rows)
    result, error = job.get("result") or {}, job.get("error") or {}
    line = f"sweep {job['id']}: {job['status']}"
    if result.get("loss"):
        line += f"; registered {result['loss']} from trial {result['best_trial']} (job {result['best_job']})"
    if error:
        line += f"; {error.get('code')}: {error.get('detail')}"
    print(line)


def cmd_losses_list(args) -> int:
    with _client(args) as c:
        losses = list(c.losses(family=args.family, q=args.q, tag=args.tag))
        if args.json:
            _print(losses)
            return 0
        rows = [(loss["name"], loss["latest_version"], loss.get("family") or "-",
                 " ".join(f"@{a}->{v}" for a, v in loss["aliases"].items()),
                 loss.get("latest_verdict") or "-") for loss in losses]
        _table(("NAME", "LATEST", "FAMILY", "ALIASES", "VERDICT"), rows)  # the latest version's
    return 0


def cmd_losses_show(args) -> int:
    with _client(args) as c:
        v = c.loss(args.id)
    if args.json:
        _print(v)
        return 0
    arch = v.get("architecture") or {}
    lines = [f"{v['id']}: {(v.get('task') or {}).get('family', '?')} loss, form {arch.get('form', 'net')}, "
             f"{v['status']} (sha256 {v['sha256'][:12]}…)",
             f"created: {v['created_at']}" + (f" by job {v['job_id']}" if v.get("job_id") else "")]
    if v["aliases"]:
        lines.append("aliases: " + " ".join(f"@{a}" for a in v["aliases"]))
    if v["tags"]:
        lines.append("tags:    " + " ".join(f"{k}={t}" for k, t in v["tags"].items()))
    lines.append(f"verdict: {v.get('verdict') or '-'} (meta-validation tasks)")
    if v.get("description"):
        lines.append(f"description: {v['description']}")
    lines.append(f"details: {v['links']['self']} (ml3 losses show {v['id']} --json: the whole version)")
    print("\n".join(lines))
    return 0


def cmd_losses_describe(args) -> int:
    with _client(args) as c:
        v = c.describe(args.id, args.description or None)
        print(f"{v['id']}: {'description set' if v['description'] else 'description removed'}")
    return 0


def cmd_losses_pull(args) -> int:
    with _client(args) as c:
        print(c.pull(args.id, args.out))
    return 0


def cmd_losses_export(args) -> int:
    with _client(args) as c:
        print(c.export(args.id, args.format, args.out))
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


JSON_HELP = "print the JSON the server answered, not a table or summary"


def add_commands(sub) -> None:
    """Register the service's subcommands on the ``ml3`` parser."""
    p = sub.add_parser("serve", help="run the REST service (SQLite + embedded runner by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", help="where the database lives (ML3_DATA_DIR, default ./var)")
    p.add_argument("--runner", choices=["local", "celery", "none"], help="job runner (ML3_RUNNER)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker (ML3_BROKER_URL, ML3_DATABASE_URL)")
    p.add_argument("--queues", choices=["cpu", "gpu"], default="cpu",
                   help="cpu: jobs on device cpu; gpu: jobs on device cuda (one per GPU worker)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="jobs at once (solo pool for 1, threads above; never forks)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("upgrade", help="apply the migrations (ML3_DATABASE_URL)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_db_upgrade)

    add_keys_commands(sub)
    add_dataset_commands(sub)

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
    p.add_argument("--json", action="store_true", help="print the whole job as JSON, not a summary")
    p.set_defaults(func=_guard(cmd_jobs_submit))
    p = jobs.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--kind")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=_guard(cmd_jobs_list))
    for name, fn, hlp in (("show", cmd_jobs_show, "a job: status, progress, loss, verdict, warnings or error"),
                          ("watch", cmd_jobs_watch, "follow a job"),
                          ("cancel", cmd_jobs_cancel, "cancel a job (checkpoint kept)")):
        p = jobs.add_parser(name, help=hlp)
        p.add_argument("id", type=int)
        p.set_defaults(func=_guard(fn))
    jobs.choices["show"].add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("sweep", help="search settings of a meta-train spec on a server; the best loss is registered",
                       description="Submit a sweep (or --watch one), print a line per trial as it starts and ends "
                       "and the running trial's progress, "
                       "then the leaderboard: each trial's score is its worst ratio against the tuned baseline over "
                       "the meta-validation horizons (lower is better).")
    p.add_argument("--spec", help="a JSON file of the whole sweep ({base, space, trials, sampler, ...})")
    p.add_argument("--base", help="a JSON file of the base meta-train spec")
    p.add_argument("--family", help="the base spec's task family")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a base spec field, e.g. --set seeds=2")
    p.add_argument("--space", action="append", metavar="KEY=JSON",
                   help='a setting: outer_lr=[0.001,0.01] or outer_lr=\'{"low":1e-4,"high":1e-2,"log":true}\'')
    p.add_argument("--trials", type=int)
    p.add_argument("--sampler", choices=["grid", "random", "tpe"])
    p.add_argument("--seed", type=int, help="of the random and tpe samplers")
    p.add_argument("--parallel", type=int, help="trials in flight at once")
    p.add_argument("--horizons", help="comma-separated meta-validation horizons to score at (default: all)")
    p.add_argument("--register-as", help="registry name of the best trial's loss")
    p.add_argument("--idempotency-key")
    p.add_argument("--watch", type=int, metavar="ID", help="follow the sweep ID instead of submitting one")
    p.add_argument("--no-wait", action="store_true", help="submit, print the leaderboard so far and return")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the whole sweep job as JSON, not the leaderboard")
    p.add_argument("--server", **server)
    p.set_defaults(func=_guard(cmd_sweep))

    losses = sub.add_parser("losses", help="use the loss registry of a server").add_subparsers(
        dest="losses_command", required=True)
    p = losses.add_parser("list", help="registered losses")
    p.add_argument("--family", help="only losses whose latest version is of this task family")
    p.add_argument("--q", help="only losses with this text in the name or the latest version's description")
    p.add_argument("--tag", help="only losses whose latest version has this tag: KEY or KEY=VALUE")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=_guard(cmd_losses_list))
    p = losses.add_parser("show", help="a loss version: family, form, aliases, tags, verdict, description")
    p.add_argument("id", help="name (the latest version), name:VERSION or name@ALIAS")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=_guard(cmd_losses_show))
    p = losses.add_parser("describe", help="set a version's markdown description (admin key)")
    p.add_argument("id", help="name (the latest version), name:VERSION or name@ALIAS")
    p.add_argument("description", help="markdown text; '' removes it")
    p.set_defaults(func=_guard(cmd_losses_describe))
    p = losses.add_parser("pull", help="download a loss bundle (zip)")
    p.add_argument("id", help="name, name:VERSION or name@ALIAS")
    p.add_argument("--out", help="zip path (default NAME-vVERSION.zip)")
    p.set_defaults(func=_guard(cmd_losses_pull))
    p = losses.add_parser("export", help="download a loss as TorchScript or ONNX, for use outside Python")
    p.add_argument("id", help="name, name:VERSION or name@ALIAS")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript",
                   help="torchscript: torch.jit.load / torch::jit::load; onnx: any ONNX runtime")
    p.add_argument("-o", "--out", help="file path (default NAME-vVERSION.pt or .onnx)")
    p.set_defaults(func=_guard(cmd_losses_export))
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


def cmd_datasets(args) -> int:
    """Upload, list, show and delete the data sets of tasks on a server."""
    with _client(args) as c:
        if args.datasets_command == "upload":
            options = {k: getattr(args, k) for k in ("name", "format", "task_column", "inputs", "outputs")}
            with open(args.file, "rb") as f:
                files = {"file": (os.path.basename(args.file), f, "application/octet-stream")}
                out = c.request("POST", "/v1/datasets", files=files,
                                params={k: v for k, v in options.items() if v}).json()
            print(f"data set {out['id']}: {out['tasks']} tasks, {out['rows']} rows, inputs {out['inputs']}, "
                  f"outputs {out['outputs']}; train on it with --set task.dataset={out['id']}", file=sys.stderr)
            _print(out)
        elif args.datasets_command == "list":
            items = list(c._pages("/v1/datasets", {"limit": 50}))
            if args.json:
                _print(items)
            else:
                _table(("ID", "NAME", "TASKS", "ROWS", "X_DIM", "Y_DIM"),
                       [(d["id"], d["name"][:32], d["tasks"], d["rows"], d["x_dim"], d["y_dim"]) for d in items])
        elif args.datasets_command == "show":
            d = c.request("GET", f"/v1/datasets/{args.id}").json()
            if args.json:
                _print(d)
            else:
                print(dataset_summary(d))
        else:
            c.request("DELETE", f"/v1/datasets/{args.id}", params={"force": "true"} if args.force else None)
            print(f"data set {args.id} deleted")
    return 0


def dataset_summary(d: dict) -> str:
    """A data set in a few lines (``--json``: all of it, with per-column statistics)."""
    kind = f"classification, {len(d['classes'])} classes" if d.get("classes") else d.get("task_type", "regression")
    lines = [f"data set {d['id']} {d['name']!r}: {d['tasks']} tasks, {d['rows']} rows ({d['min_task_rows']} to "
             f"{d['max_task_rows']} per task), {kind}",
             f"inputs:  {', '.join(d['inputs'])}", f"outputs: {', '.join(d['outputs'])}"]
    if d.get("trusted_rows") is not None:
        lines.append(f"trusted rows: {d['trusted_rows']}")
    lines.append(f"active jobs: {', '.join(map(str, d.get('active_jobs') or [])) or 'none'}")
    lines.append(f"details: {d['links']['self']} (ml3 datasets show {d['id']} --json: statistics per column)")
    return "\n".join(lines)


def add_dataset_commands(sub) -> None:
    ds = sub.add_parser("datasets", help="data sets of tasks for the dataset family, on a server").add_subparsers(
        dest="datasets_command", required=True)
    p = ds.add_parser("upload", help="upload a CSV (with a task column) or NPZ (x, y, task) file")
    p.add_argument("file")
    p.add_argument("--name", help="a label (default: the file name)")
    p.add_argument("--format", choices=["csv", "npz"], help="default: from the file name or its bytes")
    p.add_argument("--task-column", help="CSV: the column of task labels (default task)")
    p.add_argument("--inputs", help="comma-separated input columns (default: all but task and outputs)")
    p.add_argument("--outputs", help="comma-separated output columns (default: y, y1, y2, ... or y_*)")
    ds.add_parser("list", help="data sets, newest first").add_argument("--json", action="store_true", help=JSON_HELP)
    for name in ("show", "delete"):
        ds.add_parser(name, help=f"{name} a data set").add_argument("id", type=int)
    ds.choices["show"].add_argument("--json", action="store_true", help=JSON_HELP)
    ds.choices["delete"].add_argument("--force", action="store_true",
                                      help="even if registered losses were meta-trained on it")
    for parser in ds.choices.values():
        parser.add_argument("--server", help="server URL (ML3_SERVER, default http://127.0.0.1:8000)")
        parser.set_defaults(func=_guard(cmd_datasets))
