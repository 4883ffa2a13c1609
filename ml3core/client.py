"""A small Python client of the ml3 service (needs only httpx; never imports the server): part of the
base install, so a training script talks to a server without the server's dependencies.

    from ml3core.client import Client
    c = Client("http://127.0.0.1:8000")
    job = c.submit({"task": {"family": "sine"}, "seeds": 2, "register_as": "my-loss"})
    job = c.wait(job["id"])                      # follows the event stream, prints a progress bar
    c.evaluate("my-loss", pred=[0.1, 0.5], target=[0.0, 1.0])
    path = c.pull("my-loss@production", "my-loss.zip")   # then ml3core.load_loss(path)
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterator

import httpx

from .portable import LossBundleError

FINAL = ("succeeded", "failed", "canceled")


class ApiError(Exception):
    """A problem+json answer: ``status``, ``code`` and ``detail`` as the server sent them, and the
    request that got it (``url``)."""

    def __init__(self, status: int, problem: dict, url: str | None = None):
        self.status, self.problem, self.url = status, problem, url
        self.code, self.detail = problem.get("code"), problem.get("detail")
        super().__init__(f"{status} {self.code}: {self.detail}" + (f" ({url})" if url else ""))


class ServerUnreachable(ConnectionError):
    """No answer from the server (refused, DNS, timeout): the message names the URL and what to do."""

    def __init__(self, method: str, url: str, error: Exception):
        self.url, self.error = url, error
        timeout = isinstance(error, httpx.TimeoutException)
        what = f"no answer in time ({type(error).__name__})" if timeout else f"{type(error).__name__}: {error}"
        super().__init__(f"cannot reach the ml3 server for {method} {url} ({what}); start it with `ml3 serve` "
                         "or point --server / ML3_SERVER at a running one")


def one_line_errors(prog: str, on_404: str = ""):
    """Decorate a command's main: a server's problem, a server out of reach, a loss that cannot be loaded or
    a file that cannot be read end it as one line on stderr (``prog: ...``, then ``on_404`` after a 404)
    and exit status 1, not a traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (ApiError, LossBundleError, OSError) as e:  # OSError: ServerUnreachable, a missing file
                hint = f"; {on_404}" if on_404 and getattr(e, "status", None) == 404 else ""
                print(f"{prog}: {e}{hint}", file=sys.stderr)
                return 1

        return run

    return wrap


class Client:
    retry_seconds = 120.0  # how long ``events`` keeps resuming a dropped stream

    def __init__(self, base_url: str | None = None, timeout: float = 60.0, api_key: str | None = None):
        base_url = base_url or os.environ.get("ML3_SERVER", "http://127.0.0.1:8000")
        api_key = api_key or os.environ.get("ML3_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServerUnreachable(method, f"{self.http.base_url}{path}", e) from None
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"detail": r.text}
            raise ApiError(r.status_code, problem, f"{method} {r.request.url}")
        return r

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, spec: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/v1/jobs", json=spec, headers=headers).json()

    def job(self, job_id: int) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, status: str | None = None, kind: str | None = None, limit: int = 20) -> Iterator[dict]:
        """Every job (newest first), following the cursor from page to page."""
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit}.items() if v is not None}
        yield from self._pages("/v1/jobs", params)

    def cancel(self, job_id: int) -> dict:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def events(self, job_id: int, last_event_id: int | None = None) -> Iterator[tuple[int, str, dict]]:
        """(id, event, data) from the job's Server-Sent Events until it ends; resumes after drops
        (a server restart) for up to ``retry_seconds``, but a server never reached is an error at once."""
        last, connected, failing_since = last_event_id, False, None
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                      timeout=httpx.Timeout(self.http.timeout.connect, read=60)) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise ApiError(r.status_code, r.json(), f"GET {r.request.url}")
                    connected, failing_since = True, None
                    for ev_id, event, data in _parse_sse(r.iter_lines()):
                        last = ev_id
                        yield ev_id, event, data
                return
            except httpx.TransportError as e:  # the server restarted or the connection dropped: resume
                failing_since = failing_since or time.time()
                if not connected or time.time() - failing_since > self.retry_seconds:
                    raise ServerUnreachable("GET", f"{self.http.base_url}/v1/jobs/{job_id}/events", e) from None
                time.sleep(1.0)

    def wait(self, job_id: int, progress: bool = True, timeout: float | None = None) -> dict:
        """Follow a job to its final status (a progress bar on stderr), then return it."""
        from .progress import Progress  # stdlib only

        bar = Progress(f"job {job_id}") if progress else None
        start = time.time()
        for _, event, data in self.events(job_id):
            if event == "progress" and bar:  # each phase (meta-train, meta-test, figures) has its own bar
                bar(data["completed"], data["total"], phase=data.get("phase"))
            if event == "status" and data["status"] in FINAL:
                break
            if timeout is not None and time.time() - start > timeout:
                raise TimeoutError(f"job {job_id} still running after {timeout}s")
        return self.job(job_id)

    def report(self, job_id: int) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}/report").json()

    # -- losses ------------------------------------------------------------------------------
    def losses(self, limit: int = 50, family: str | None = None, q: str | None = None,
               tag: str | None = None) -> Iterator[dict]:
        """Registered losses; ``family``: the latest version's task family; ``q``: text in the name or description;
        ``tag``: ``KEY`` or ``KEY=VALUE``, a tag of the latest version."""
        params = {k: v for k, v in {"limit": limit, "family": family, "q": q, "tag": tag}.items() if v is not None}
        yield from self._pages("/v1/losses", params)

    def describe(self, loss_id: str, description: str | None) -> dict:
        """Set (None: remove) a version's markdown description (scope admin)."""
        return self.request("PATCH", f"/v1/losses/{loss_id}", json={"description": description}).json()

    def loss(self, loss_id: str) -> dict:
        return self.request("GET", f"/v1/losses/{loss_id}").json()

    def evaluate(self, loss_id: str, pred, target, x=None, reduction: str = "mean",
                 return_grad: bool = False) -> dict:
        body = {"pred": _plain(pred), "target": _plain(target), "reduction": reduction, "return_grad": return_grad}
        if x is not None:
            body["x"] = _plain(x)
        return self.request("POST", f"/v1/losses/{loss_id}/evaluate", json=body).json()

    def evaluate_logits(self, loss_id: str, logits, labels, reduction: str = "mean",
                        return_grad: bool = False) -> dict:
        """Evaluate a classification loss: (N, C) logits, (N,) class indices or (N, C) targets."""
        body = {"logits": _plain(logits), "labels": _plain(labels), "reduction": reduction,
                "return_grad": return_grad}
        return self.request("POST", f"/v1/losses/{loss_id}/evaluate", json=body).json()

    def pull(self, loss_id: str, dest: str | None = None) -> str:
        """Download a loss bundle zip; returns its path (load it with ``ml3core.load_loss``)."""
        return _save(self.request("GET", f"/v1/losses/{loss_id}/artifact"), loss_id, dest, "zip")

    def export(self, loss_id: str, fmt: str = "torchscript", dest: str | None = None) -> str:
        """Download a loss as TorchScript or ONNX (``fmt``); returns its path (default NAME-vVERSION.pt / .onnx)."""
        r = self.request("GET", f"/v1/losses/{loss_id}/export", params={"format": fmt})
        return _save(r, loss_id, dest, "pt" if fmt == "torchscript" else fmt)

    def set_alias(self, name: str, alias: str, version: int) -> dict:
        return self.request("PUT", f"/v1/losses/{name}/aliases/{alias}", json={"version": version}).json()

    def meta_test(self, loss_id: str, **spec) -> dict:
        return self.request("POST", f"/v1/losses/{loss_id}/meta-test", json=spec).json()

    def _pages(self, path: str, params: dict) -> Iterator[dict]:
        cursor = None
        while True:
            page = self.request("GET", path, params={**params, **({"cursor": cursor} if cursor else {})}).json()
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return


def _save(r: httpx.Response, loss_id: str, dest: str | None, suffix: str) -> str:
    """Write a downloaded loss to dest, by default NAME-vVERSION.suffix (the version the server resolved)."""
    dest = dest or f"{r.headers.get('X-Loss-Id', loss_id).replace(':', '-v')}.{suffix}"
    with open(dest, "wb") as f:
        f.write(r.content)
    return dest


def _plain(a):
    """Lists pass through; tensors and arrays become lists."""
    return a.tolist() if hasattr(a, "tolist") else a


def _parse_sse(lines) -> Iterator[tuple[int, str, dict]]:
    ev_id, event, data = None, "message", []
    for line in lines:
        if not line:
            if data:
                yield (int(ev_id) if ev_id else 0), event, json.loads("\n".join(data))
            ev_id, event, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                ev_id = value
            elif field == "event":
                event = value
            elif field == "data":
                data.append(value)

