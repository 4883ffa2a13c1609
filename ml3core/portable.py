"""Load a learned ML3 loss for your own training: one self-contained file.

Copy this file into any project; it needs only ``torch`` and ``safetensors``.

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
import io
import json
import os
import urllib.request
import zipfile

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors

FORMAT = "ml3-loss"
FORMAT_VERSION = 2  # 2 added architecture "form"; a form-"net" bundle is still written as 1
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
FORMS = ("net", "weighted_se")


class LossBundleError(ValueError):
    """A bundle that cannot be read: missing file, bad format, or weights that fail their checksum."""


def loss_features(arch: dict, pred, target, x=None):
    """Stack the network's per-point inputs in the bundle's ``inputs`` order.

    pred/target: (..., N, D). x: (..., N, X). Returns (..., N, F), or (..., N, D, F)
    when ``per_output`` (one shared network applied to each output dimension).
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
        else:
            t = pred if name == "pred" else target
            parts.append(t.unsqueeze(-1) if per_output else t)
    return torch.cat(parts, dim=-1)


def mlp_loss(params: dict, arch: dict, pred, target, x=None, reduction: str = "mean"):
    """L_phi(pred, target[, x]): a pointwise MLP, reduced over points (and output dims).

    Weights may carry leading batch dimensions (one loss per seed) that broadcast
    against the data's leading dimensions.
    """
    h = loss_features(arch, pred, target, x)
    per_output = arch.get("per_output", False)
    if per_output:
        lead = h.shape[:-3]
        h = h.reshape(*lead, -1, h.shape[-1])  # (..., N*D, F)
    act = ACTIVATIONS[arch["activation"]]
    n = len(arch["hidden"]) + 1
    for i in range(n):
        h = h @ params[f"layers.{i}.weight"].mT
        if arch["bias"]:
            h = h + params[f"layers.{i}.bias"].unsqueeze(-2)
        h = act(h) if i < n - 1 else OUTPUTS[arch["output"]](h)
    values = h.squeeze(-1)  # (..., P)
    if arch.get("form", "net") == "weighted_se":
        se = (pred - target).square()
        values = values * (se.reshape(*se.shape[:-2], -1) if per_output else se.sum(-1))
    reduction = reduction or arch.get("reduction", "mean")
    if reduction == "mean":
        return values.mean(-1)
    if reduction == "sum":
        return values.sum(-1)
    if reduction == "none":
        return values.reshape(pred.shape) if per_output else values
    raise ValueError(f"unknown reduction {reduction!r} (mean, sum, none)")


class LearnedLoss(torch.nn.Module):
    """A learned loss as a torch module. Its weights are buffers: they move with
    ``.to(device)`` but are never picked up by your optimizer.

    raw_units: divide pred, target and x by the bundle's ``input_scales`` (what meta-training
    divided them by) before the network sees them; a bundle without scales saw raw values."""

    def __init__(self, params: dict, spec: dict, raw_units: bool = False):
        super().__init__()
        self.spec = spec
        self.arch = spec["architecture"]
        self._names = sorted(params)
        for i, name in enumerate(self._names):
            self.register_buffer(f"p{i}", params[name].detach().clone())
        scales = spec.get("input_scales") if raw_units else None
        self._scaled = sorted(scales or {})
        for name in self._scaled:
            want = self.arch.get("x_dim" if name == "x" else "pred_dim", 1)
            try:
                value = torch.as_tensor(scales[name], dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                value = torch.zeros(0)
            if name not in ("pred", "target", "x") or value.shape != (want,) or not bool((value > 0).all()):
                raise LossBundleError(f"input_scales.{name}: expected {want} positive numbers")
            self.register_buffer(f"scale_{name}", value)

    @property
    def params(self) -> dict:
        return {name: getattr(self, f"p{i}") for i, name in enumerate(self._names)}

    def forward(self, pred, target, x=None, reduction: str | None = None):
        squeeze = pred.dim() == 1 and self.arch.get("pred_dim", 1) == 1
        if squeeze:  # a flat vector of scalar predictions
            pred, target = pred.unsqueeze(-1), target.unsqueeze(-1)
            if x is not None and x.dim() == 1:
                x = x.unsqueeze(-1)
        pred, target, x = self._unscale("pred", pred), self._unscale("target", target), self._unscale("x", x)
        out = mlp_loss(self.params, self.arch, pred, target, x, reduction or self.arch.get("reduction", "mean"))
        return out

    def _unscale(self, name: str, value):
        return value if value is None or name not in self._scaled else value / getattr(self, f"scale_{name}")

    def extra_repr(self) -> str:
        a = self.arch
        return (f"form={a.get('form', 'net')}, inputs={a['inputs']}, hidden={a['hidden']}, "
                f"activation={a['activation']}, output={a['output']}")


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


def read_bundle_files(source) -> dict:
    """Return {'loss.safetensors': bytes, 'loss.json': bytes} from a dir, zip path, zip bytes or URL
    (from a URL also 'sha256': the server's ETag, the checksum registered with the version)."""
    if isinstance(source, (bytes, bytearray)):
        return _read_zip(bytes(source))
    source = os.fspath(source)
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/")
        if not url.endswith("/artifact"):
            url += "/artifact"
        req = urllib.request.Request(url, headers=_auth_headers())
        with urllib.request.urlopen(req, timeout=60) as resp:
            files = _read_zip(resp.read())
            etag = (resp.headers.get("ETag") or "").strip('"')
        if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
            files["sha256"] = etag  # what the registry holds for this version: the bundle must match it
        return files
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


def load_loss(source, device=None, raw_units: bool = False) -> LearnedLoss:
    """Load a learned loss bundle (directory, .zip path, zip bytes, or server URL).

    raw_units: take values in the task's own units (see ``LearnedLoss``)."""
    files = read_bundle_files(source)
    params, spec = parse_bundle(files, files.get("sha256"))
    module = LearnedLoss(params, spec, raw_units)
    return module.to(device) if device is not None else module
