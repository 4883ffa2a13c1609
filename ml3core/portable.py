"""Load a learned ML3 loss for your own training: one self-contained file.

Copy this file into any project; it needs only ``torch`` and ``safetensors``.
A loss loaded by URL is cached under ``~/.cache/ml3`` (``ML3_CACHE``; ``ML3_OFFLINE=1``: cache only).

    from portable import load_loss
    loss_fn = load_loss("my-loss/")            # bundle dir, .zip, zip bytes or server URL
    loss = loss_fn(pred, target)               # scalar, differentiable w.r.t. pred
    loss = loss_fn(pred, target, x=inputs)     # for losses that also read the inputs

A bundle is ``loss.safetensors`` (weights) + ``loss.json`` (architecture, provenance,
``weights_sha256`` of the weights and ``sha256`` of the whole bundle: the weights and the
canonical JSON of the spec, so an edited ``loss.json`` is refused too; bundles written before
``sha256`` existed are checked on their weights alone). Nothing is ever unpickled. ``ml3core`` uses the same math
(``mlp_loss``) for meta-training, so a served loss is exactly the trained one.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors

FORMAT = "ml3-loss"
# 2 added architecture "form" (a form-"net" bundle is still written as 1); 3 added "weights" (a bundle with
# shared weights is still written as 2), so an older loader refuses a weight per output it would misread;
# 4 added form "weighted_ce" and the input "abs_error" (only bundles that use them are written as 4)
FORMAT_VERSION = 4
WEIGHTS_FILE = "loss.safetensors"
SPEC_FILE = "loss.json"

ACTIVATIONS = {
    "relu": torch.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}
OUTPUTS = {"softplus": F.softplus, "linear": lambda h: h, "square": torch.square, "exp": torch.exp}
# "net": the network's output is the per-point loss (the paper's L_phi). "weighted_se": it is a
# weight on the squared error, w_phi(target[, x])·(pred − target)²: never below zero and zero
# exactly at pred = target, so meta-training can shape the landscape but not move its minimum.
# With ``weights: "per_output"`` the net gives one weight per output dimension, mean_j w_j·(pred_j − target_j)²
# (a learned, state-dependent weighting of each joint's torque error, as in Morse et al. 2020).
# "ce_classwise" (classification): cross-entropy plus a learned correction summed over classes,
#   L = CE(logits, y) + sum_c g_phi(p_c, y_c, log p_c)   (per example; inputs chosen by name)
# one small network g shared by every class, so a loss meta-trained on 2-way tasks applies to
# 4- or 10-way ones; with g's last layer zero it is exactly cross-entropy.
# "weighted_ce" (classification, the Meta-Weight-Net idea): a learned weight on each example's
#   cross-entropy, L = mean_i w_phi(features_i)·CE_i, w >= 0 from EXAMPLE_INPUTS of the example (its
#   CE, the target class's probability, the largest probability); with the last layer zero and the
#   output bias at out⁻¹(1), w = 1 and L is exactly cross-entropy.
# The weight of "weighted_ce", and of "weighted_se" when it reads "abs_error" (|pred − target| per output),
# depends on the model's prediction; it is held constant in the gradient of the loss (the model is
# trained on w·CE_i or w·(pred − target)², never on how w changes), while a meta-gradient through an
# unroll still follows how w moves with the model (``_weigh``).
FORMS = ("net", "weighted_se", "ce_classwise", "weighted_ce")
CLASS_INPUTS = ("prob", "target", "logprob")
EXAMPLE_INPUTS = ("ce", "target_prob", "max_prob")


class LossBundleError(ValueError):
    """A bundle that cannot be read: missing file, bad format, weights that fail their checksum, or a
    URL that answers with an error (the message carries the server's problem detail)."""


def loss_features(arch: dict, pred, target, x=None):
    """Stack the network's per-point inputs in the bundle's ``inputs`` order.

    pred/target: (..., N, D). x: (..., N, X). Returns (..., N, F), or (..., N, D, F)
    when ``per_output`` (one shared network applied to each output dimension). "level" is the log
    of the batch's mean squared error per output, the same for every point and held constant for
    the gradient: a signal of how far training has come, so a weight can act as a schedule.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    per_output = arch.get("per_output", False)
    parts = []
    for name in arch["inputs"]:
        if name == "x":
            if x is None:
                raise ValueError("this loss reads the inputs: call it with x=...")
            if per_output:
                x = x.unsqueeze(-2).expand(*pred.shape, x.shape[-1])
            parts.append(x.to(pred.dtype))
        elif name == "abs_error":  # per output; held constant in the loss's gradient by _weigh
            t = (pred - target).abs()
            parts.append(t.unsqueeze(-1) if per_output else t)
        else:
            t = pred if name == "pred" else target
            if name == "level":
                level = (pred - target).detach().square().mean(-2, keepdim=True).add(1e-12).log()
                t = level.expand(pred.shape)
            parts.append(t.unsqueeze(-1) if per_output else t)
    return torch.cat(parts, dim=-1)


def _network(params: dict, arch: dict, h):
    """The MLP over per-point features: (..., P, F) -> (..., P). Weights may carry leading batch
    dims (one loss per seed) that broadcast against the data's leading dims (before P)."""
    act = ACTIVATIONS[arch["activation"]]
    n = len(arch["hidden"]) + 1
    for i in range(n):
        h = h @ params[f"layers.{i}.weight"].mT
        if arch["bias"]:
            h = h + params[f"layers.{i}.bias"].unsqueeze(-2)
        h = act(h) if i < n - 1 else OUTPUTS[arch["output"]](h)
    return h.squeeze(-1)  # (..., P), or (..., P, D) with D weights per point


class _Weigh(torch.autograd.Function):
    """w·v with a gradient to v only (w·dv): the weight is a constant for the loss's gradient; the ops of
    that gradient are recorded (create_graph), so a gradient of it sees w's own dependencies."""

    @staticmethod
    def forward(ctx, w, v):
        ctx.save_for_backward(w)
        return w * v

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return None, grad * w


def _weigh(w, v):
    return _Weigh.apply(w, v)


def weighted_ce_loss(params: dict, arch: dict, logits, target, reduction: str = "mean"):
    """Form weighted_ce: mean_i w_phi(features_i)·CE_i. logits, target: (..., N, C); target one-hot or soft."""
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
    logp = F.log_softmax(logits, dim=-1)
    target = target.to(logp.dtype)
    ce = -(target * logp).sum(-1)  # (..., N)
    p = logp.exp()
    feats = {"ce": ce, "target_prob": (target * p).sum(-1), "max_prob": p.max(-1).values}
    h = torch.stack([feats[name] for name in arch["inputs"]], dim=-1)  # (..., N, F)
    w = _network(params, arch, h)  # (..., N)
    return _reduce(_weigh(w, ce), reduction or arch.get("reduction", "mean"))


def _reduce(values, reduction: str):
    if reduction == "mean":
        return values.mean(-1)
    if reduction == "sum":
        return values.sum(-1)
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r} (mean, sum, none)")


def classwise_loss(params: dict, arch: dict, logits, target, reduction: str = "mean"):
    """Form ce_classwise: CE(logits, target) + sum_c g_phi(features of class c), per example.

    logits, target: (..., N, C); target one-hot or soft (rows summing to 1).
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
    logp = F.log_softmax(logits, dim=-1)  # (..., N, C)
    ce = -(target * logp).sum(-1)  # (..., N)
    feats = {"prob": logp.exp(), "logprob": logp, "target": target.to(logp.dtype)}
    h = torch.stack([feats[name] for name in arch["inputs"]], dim=-1)  # (..., N, C, F)
    *lead, n, c, f = h.shape
    g = _network(params, arch, h.reshape(*lead, n * c, f)).reshape(*lead, n, c)  # one net for every class
    return _reduce(ce + g.sum(-1), reduction or arch.get("reduction", "mean"))


def mlp_loss(params: dict, arch: dict, pred, target, x=None, reduction: str = "mean"):
    """L_phi(pred, target[, x]): a pointwise MLP, reduced over points (and output dims).

    Weights may carry leading batch dimensions (one loss per seed) that broadcast
    against the data's leading dimensions. For form ce_classwise pred are logits and
    target one-hot/soft targets, both (..., N, C) (see ``classwise_loss``).
    """
    if arch.get("form", "net") == "ce_classwise":
        return classwise_loss(params, arch, pred, target, reduction)
    if arch.get("form") == "weighted_ce":
        return weighted_ce_loss(params, arch, pred, target, reduction)
    h = loss_features(arch, pred, target, x)
    per_output = arch.get("per_output", False)
    if per_output:
        lead = h.shape[:-3]
        h = h.reshape(*lead, -1, h.shape[-1])  # (..., N*D, F)
    values = _network(params, arch, h)  # (..., P)
    if arch.get("form", "net") == "weighted_se":
        se = (pred - target).square()
        mul = _weigh if "abs_error" in arch["inputs"] else torch.mul  # a weight of the error: constant for its gradient
        if arch.get("weights", "shared") == "per_output":  # (..., N, D) weights, one per output
            values = mul(values.reshape(se.shape), se).mean(-1)
        else:
            values = mul(values, se.reshape(*se.shape[:-2], -1) if per_output else se.sum(-1))
    reduction = reduction or arch.get("reduction", "mean")
    if reduction == "none" and per_output:
        return values.reshape(pred.shape)
    return _reduce(values, reduction)


class LearnedLoss(torch.nn.Module):
    """A learned loss as a torch module. Its weights are buffers: they move with
    ``.to(device)`` but are never picked up by your optimizer.

    raw_units: subtract the bundle's ``input_offsets`` from pred, target and x and divide them by
    its ``input_scales`` (what meta-training did: a data set's standardisation, a robot's torque
    scale) before the network sees them; a bundle without them saw raw values."""

    def __init__(self, params: dict, spec: dict, raw_units: bool = False):
        super().__init__()
        self.spec = spec
        self.arch = spec["architecture"]
        self._names = sorted(params)
        for i, name in enumerate(self._names):
            self.register_buffer(f"p{i}", params[name].detach().clone())
        self._units = {}  # name -> which of "offset", "scale" apply
        for key, kind in (("input_offsets", "offset"), ("input_scales", "scale")):
            given = spec.get(key) if raw_units else None
            for name in sorted(given or {}):
                want = self.arch.get("x_dim" if name == "x" else "pred_dim", 1)
                try:
                    value = torch.as_tensor(given[name], dtype=torch.float32)
                except (TypeError, ValueError, RuntimeError):
                    value = torch.zeros(0)
                ok = name in ("pred", "target", "x") and value.shape == (want,) and bool(torch.isfinite(value).all())
                if not ok or (kind == "scale" and not bool((value > 0).all())):
                    what = "positive" if kind == "scale" else "finite"
                    raise LossBundleError(f"{key}.{name}: expected {want} {what} numbers")
                self.register_buffer(f"{kind}_{name}", value)
                self._units.setdefault(name, []).append(kind)

    @property
    def trained_for(self) -> dict:
        """The inner optimizer and learning rate to train with (e.g. torch.optim.SGD(model.parameters(),
        lr=loss_fn.trained_for["lr"])): the lr the loss recommends, chosen on meta-validation tasks
        against the plain loss at its best lr (bundles before that: the lr it was meta-trained at).
        Adam's eps sits inside the square root, sqrt(v + eps²), as in meta-training."""
        t = self.spec.get("training", {})
        out = {"optimizer": t.get("inner_optimizer", "sgd"), "lr": t.get("recommended_lr", t.get("inner_lr", 1e-3))}
        if out["optimizer"] == "momentum":
            out["momentum"] = t.get("inner_momentum", 0.9)
        if out["optimizer"] == "adam":
            out["betas"] = t.get("inner_betas", [0.9, 0.999])
        return out

    @property
    def params(self) -> dict:
        return {name: getattr(self, f"p{i}") for i, name in enumerate(self._names)}

    def forward(self, pred, target, x=None, reduction: str | None = None):
        if self.arch.get("form") in ("ce_classwise", "weighted_ce"):  # called like F.cross_entropy(logits, labels)
            return mlp_loss(self.params, self.arch, pred, class_targets(pred, target), None,
                            reduction or self.arch.get("reduction", "mean"))
        squeeze = pred.dim() == 1 and self.arch.get("pred_dim", 1) == 1
        if squeeze:  # a flat vector of scalar predictions
            pred, target = pred.unsqueeze(-1), target.unsqueeze(-1)
            if x is not None and x.dim() == 1:
                x = x.unsqueeze(-1)
        pred, target, x = self._unscale("pred", pred), self._unscale("target", target), self._unscale("x", x)
        out = mlp_loss(self.params, self.arch, pred, target, x, reduction or self.arch.get("reduction", "mean"))
        return out

    def _unscale(self, name: str, value):
        kinds = self._units.get(name, ()) if value is not None else ()
        if "offset" in kinds:
            value = value - getattr(self, f"offset_{name}")
        if "scale" in kinds:
            value = value / getattr(self, f"scale_{name}")
        return value

    def extra_repr(self) -> str:
        a = self.arch
        return (f"form={a.get('form', 'net')}, inputs={a['inputs']}, hidden={a['hidden']}, "
                f"activation={a['activation']}, output={a['output']}")


def class_targets(logits, labels):
    """Labels as (N,) class indices, or (N, C) one-hot/soft targets, to (N, C) float targets."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2, got {tuple(logits.shape)}")
    n, c = logits.shape
    if labels.dim() == 1 and not labels.is_floating_point():
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for {n} rows of logits")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= c):
            raise ValueError(f"labels must be class indices in [0, {c - 1}]")
        return F.one_hot(labels, c).to(logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError(f"targets shape {tuple(labels.shape)}: (N,) int64 indices or (N, C) = {(n, c)}")
    return labels.to(logits.dtype)


def _read_zip(data: bytes) -> dict:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            missing = {WEIGHTS_FILE, SPEC_FILE} - names
            if missing:
                raise LossBundleError(f"bundle zip lacks {sorted(missing)}")
            return {n: zf.read(n) for n in (WEIGHTS_FILE, SPEC_FILE)}
    except zipfile.BadZipFile as e:
        raise LossBundleError(f"not a loss bundle zip: {e}") from e


def read_bundle_files(source, cache_dir=None) -> dict:
    """Return {'loss.safetensors': bytes, 'loss.json': bytes} from a dir, zip path, zip bytes or URL
    (from a URL also 'sha256': the server's ETag, the checksum registered with the version).

    A URL goes through the local cache (see ``BundleCache``): cache_dir, else $ML3_CACHE, else
    ~/.cache/ml3; ``cache_dir=False`` turns it off."""
    if isinstance(source, (bytes, bytearray)):
        return _read_zip(bytes(source))
    source = os.fspath(source)
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/")
        if not url.endswith("/artifact"):
            url += "/artifact"
        if cache_dir is False:
            if offline():
                raise LossBundleError(f"ML3_OFFLINE=1 and cache_dir=False: {url} would need the network; "
                                      f"unset ML3_OFFLINE or load it through the cache")
            body, etag = _fetch(url)
            files = _read_zip(body)
            if _is_sha256(etag):
                files["sha256"] = etag  # what the registry holds for this version: the bundle must match it
            return files
        return BundleCache(cache_dir).files(url)
    if os.path.isdir(source):
        files = {}
        for name in (WEIGHTS_FILE, SPEC_FILE):
            path = os.path.join(source, name)
            if not os.path.exists(path):
                raise LossBundleError(f"{source}: missing {name}")
            with open(path, "rb") as f:
                files[name] = f.read()
        return files
    if not os.path.exists(source):
        raise LossBundleError(f"{source}: no such bundle directory, zip or URL")
    with open(source, "rb") as f:
        return _read_zip(f.read())


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def default_cache_dir() -> str:
    """$ML3_CACHE, else ~/.cache/ml3 (under $XDG_CACHE_HOME when that is set)."""
    if os.environ.get("ML3_CACHE"):
        return os.path.expanduser(os.environ["ML3_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ml3")


def offline() -> bool:
    """ML3_OFFLINE=1 (or true/yes/on): a URL is served from the cache only, never from the network."""
    return os.environ.get("ML3_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class BundleCache:
    """Bundles fetched by URL, kept like the Hugging Face Hub's cache:

    ``bundles/<sha256>.zip``  the bundle as served, named by its checksum (the server's ETag);
    ``urls/<sha256 of the URL>.json``  the last bundle seen at a URL: {url, sha256, zip_sha256, fetched_at}.

    A later load sends ``If-None-Match`` and uses the cached copy on 304; with the server unreachable
    (or answering 502/503/504) it loads the last bundle cached for that URL and warns once; with
    ML3_OFFLINE=1 it never touches the network. A cached copy is checked against its checksums on
    every read: one that fails is deleted and fetched again."""

    FALLBACK_STATUSES = (502, 503, 504)

    def __init__(self, cache_dir=None):
        self.root = os.fspath(cache_dir) if cache_dir else default_cache_dir()

    def _index_path(self, url: str) -> str:
        return os.path.join(self.root, "urls", hashlib.sha256(url.encode()).hexdigest() + ".json")

    def _bundle_path(self, sha256: str) -> str:
        return os.path.join(self.root, "bundles", sha256 + ".zip")

    def cached(self, url: str) -> tuple[dict, dict] | None:
        """(index entry, files) of the last bundle cached for url, checked; None when there is none
        or it fails its checksums (then it is removed, so the next fetch replaces it)."""
        try:
            with open(self._index_path(url), "rb") as f:
                entry = json.loads(f.read())
            sha = entry["sha256"]
            if not _is_sha256(sha):
                raise ValueError("bad index entry")
            with open(self._bundle_path(sha), "rb") as f:
                data = f.read()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            if hashlib.sha256(data).hexdigest() != entry.get("zip_sha256"):
                raise LossBundleError("the cached zip does not match its recorded sha256")
            files = _read_zip(data)
            files["sha256"] = sha
            parse_bundle(files, sha)  # the bundle's own checksums, and the registry's
        except LossBundleError:
            for path in (self._bundle_path(sha), self._index_path(url)):
                try:
                    os.remove(path)
                except OSError:
                    pass
            return None
        return entry, files

    def files(self, url: str) -> dict:
        hit = self.cached(url)
        if offline():
            if hit is None:
                raise LossBundleError(
                    f"ML3_OFFLINE=1 and no cached copy of {url} in {self.root}: load it once with the "
                    f"server reachable (ML3_OFFLINE unset), set ML3_CACHE to the cache that holds it, "
                    f"or load a downloaded bundle (.zip or directory) instead")
            return hit[1]
        headers = {"If-None-Match": f'"{hit[0]["sha256"]}"'} if hit else {}
        try:
            body, etag = _fetch(url, headers)
        except LossBundleError as e:
            status = getattr(e, "status", None)
            if hit and status == 304:
                return hit[1]
            if hit and (status is None or status in self.FALLBACK_STATUSES):
                warnings.warn(f"{e}; using the copy of {url} cached at {hit[0].get('fetched_at', '?')} "
                              f"(sha256 {hit[0]['sha256'][:12]}…)", stacklevel=4)
                return hit[1]
            raise
        files = _read_zip(body)
        sha = etag if _is_sha256(etag) else None
        if sha is not None:
            files["sha256"] = sha  # what the registry holds for this version: the bundle must match it
        parse_bundle(files, sha)  # nothing unchecked goes into the cache
        self._store(url, sha or hashlib.sha256(body).hexdigest(), body)
        return files

    def _store(self, url: str, sha: str, body: bytes) -> None:
        entry = {"url": url, "sha256": sha, "zip_sha256": hashlib.sha256(body).hexdigest(),
                 "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            _write_atomic(self._bundle_path(sha), body)
            _write_atomic(self._index_path(url), json.dumps(entry, indent=2).encode())
        except OSError as e:  # a read-only home still loads, without a cache
            warnings.warn(f"cannot write the ml3 cache {self.root} ({e}); set ML3_CACHE to a writable "
                          f"directory", stacklevel=4)


def _write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file beside path, then rename: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch(url: str, headers: dict | None = None) -> tuple[bytes, str]:
    """GET a bundle zip: (body, ETag); a failure names the URL and passes on the server's problem detail
    (a LossBundleError whose ``status`` is the HTTP status, 304 included; None when unreachable)."""
    req = urllib.request.Request(url, headers={**_auth_headers(), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read(), (resp.headers.get("ETag") or "").strip('"')
    except urllib.error.HTTPError as e:
        if e.code == 304:
            error = LossBundleError(f"GET {url}: 304 not modified")
            error.status = 304
            raise error from None
        body = e.read()
        try:
            problem = json.loads(body)
            detail = f"{problem.get('code', e.reason)}: {problem.get('detail')}"
        except (ValueError, AttributeError):
            detail = body.decode(errors="replace")[:200] or str(e.reason)
        error = LossBundleError(f"GET {url}: {e.code} {detail}")
        error.status = e.code
        raise error from None
    except (OSError, http.client.HTTPException) as e:  # refused, timed out, cut off mid-answer
        reason = getattr(e, "reason", e)
        error = LossBundleError(f"GET {url}: cannot reach the server ({reason}): is it running there?")
        error.status = None
        raise error from None


def _auth_headers() -> dict:
    key = os.environ.get("ML3_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def bundle_sha256(weights: bytes, spec: dict) -> str:
    """The checksum of a whole bundle: its weights, then its spec (less this ``sha256`` field) as
    canonical JSON (sorted keys, no spaces, ASCII), so reformatting loss.json keeps it."""
    body = {k: v for k, v in spec.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(weights + b"\n" + canonical.encode()).hexdigest()


def parse_bundle(files: dict, sha256: str | None = None) -> tuple[dict, dict]:
    """Check a bundle and return (params, spec). Raises LossBundleError with the reason.

    sha256: what the bundle must hash to (a registry's ETag, a pinned value); without it a bundle
    that carries a whole-bundle ``sha256`` is held to it, an older one to its weights' checksum."""
    try:
        spec = json.loads(files[SPEC_FILE])
    except (ValueError, UnicodeDecodeError) as e:
        raise LossBundleError(f"{SPEC_FILE} is not valid JSON: {e}") from e
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise LossBundleError(f"{SPEC_FILE} is not an {FORMAT} spec")
    if spec.get("format_version", 0) > FORMAT_VERSION:
        raise LossBundleError(
            f"bundle format {spec.get('format_version')} is newer than this loader ({FORMAT_VERSION})"
        )
    digest = hashlib.sha256(files[WEIGHTS_FILE]).hexdigest()
    if digest != spec.get("weights_sha256"):
        raise LossBundleError(
            f"{WEIGHTS_FILE} sha256 {digest[:12]}… does not match the spec's "
            f"{str(spec.get('weights_sha256'))[:12]}…: corrupted or truncated"
        )
    if "sha256" in spec or sha256 is not None:
        whole = bundle_sha256(files[WEIGHTS_FILE], spec) if "sha256" in spec else digest
        for want, where in ((spec.get("sha256", whole), "its own"), (sha256, "the expected")):
            if want is not None and whole != want:
                raise LossBundleError(f"bundle sha256 {whole[:12]}… does not match {where} {str(want)[:12]}…: "
                                      f"{SPEC_FILE} or {WEIGHTS_FILE} was changed after it was written")
    try:
        params = load_safetensors(files[WEIGHTS_FILE])
    except Exception as e:  # safetensors raises its own error types
        raise LossBundleError(f"{WEIGHTS_FILE} is unreadable: {e}") from e
    arch = spec.get("architecture") or {}
    if arch.get("form", "net") not in FORMS:
        raise LossBundleError(f"unknown loss form {arch.get('form')!r}; this loader knows {FORMS}")
    for i in range(len(arch.get("hidden", [])) + 1):
        if f"layers.{i}.weight" not in params:
            raise LossBundleError(f"{WEIGHTS_FILE} lacks layers.{i}.weight")
    return params, spec


def load_loss(source, device=None, raw_units: bool = False, cache_dir=None) -> LearnedLoss:
    """Load a learned loss bundle (directory, .zip path, zip bytes, or server URL).

    raw_units: take values in the task's own units (see ``LearnedLoss``).
    cache_dir: where bundles loaded by URL are kept (default $ML3_CACHE, else ~/.cache/ml3; False: no
    cache). A URL is revalidated by ETag, served from the cache when the server is unreachable (with a
    warning), and never fetched with ML3_OFFLINE=1 (see ``BundleCache``)."""
    files = read_bundle_files(source, cache_dir)
    params, spec = parse_bundle(files, files.get("sha256"))
    module = LearnedLoss(params, spec, raw_units)
    return module.to(device) if device is not None else module
