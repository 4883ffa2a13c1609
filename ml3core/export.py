"""A learned loss outside Python: TorchScript (``torch.jit.script``, so C++ and mobile runtimes load it with
``torch::jit::load``) or ONNX (any ONNX runtime; needs the ``onnx`` package, the ``[export]`` extra).

    from ml3core import load_loss, export_torchscript, export_onnx
    loss_fn = load_loss("runs/sine/loss")
    export_torchscript(loss_fn, "loss.pt")      # torch.jit.load("loss.pt")(pred, target) == loss_fn(pred, target)
    export_onnx(loss_fn, "loss.onnx")           # inputs pred, target[, x] as (N, D); or logits (N, C), labels (N,)

``ExportedLoss`` is the math of ``portable.mlp_loss`` written once more in the subset of Python that
TorchScript compiles: the architecture is fixed when the module is built, so every branch is on
constants. A weight held constant in the loss's gradient (``portable._weigh``) is ``w.detach() * v`` here:
the same values and the same gradient (no second-order gradient is exported).
"""

import io
import os
import warnings

import torch
import torch.nn.functional as F

from .portable import LearnedLoss

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17


class ExportError(ValueError):
    """A loss that cannot be exported in the asked format."""


class ExporterMissing(ExportError):
    """The exporter of the asked format is not installed here (ONNX: the ``onnx`` package)."""


def _act(h: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return torch.relu(h)
    if name == "elu":
        return F.elu(h)
    if name == "tanh":
        return torch.tanh(h)
    if name == "softplus":
        return F.softplus(h)
    if name == "sigmoid":
        return torch.sigmoid(h)
    if name == "gelu":
        return F.gelu(h)
    if name == "silu":
        return F.silu(h)
    if name == "leaky_relu":
        return F.leaky_relu(h)
    if name == "exp":
        return torch.exp(h)
    if name == "square":
        return h * h
    return h  # "linear"


class _Layer(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone().float())
        self.register_buffer("bias", torch.zeros(weight.shape[0]) if bias is None else bias.detach().clone().float())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight.t() + self.bias


class ExportedLoss(torch.nn.Module):
    """The loss of a ``LearnedLoss`` as a module ``torch.jit.script`` compiles; called like it:
    ``(pred, target, x=None, reduction=None)``, or ``(logits, labels)`` for the classification forms."""

    form: str
    inputs: list[str]
    activation: str
    output: str
    per_output: bool
    weights_per_output: bool
    pred_dim: int
    reduction: str
    detach_weight: bool

    def __init__(self, loss: LearnedLoss):
        super().__init__()
        arch = loss.arch
        params = loss.params
        n = len(arch["hidden"]) + 1
        self.layers = torch.nn.ModuleList(
            [_Layer(params[f"layers.{i}.weight"], params.get(f"layers.{i}.bias") if arch["bias"] else None)
             for i in range(n)])
        self.form = arch.get("form", "net")
        self.inputs = list(arch["inputs"])
        self.activation = arch["activation"]
        self.output = arch["output"]
        self.per_output = bool(arch.get("per_output", False))
        self.weights_per_output = arch.get("weights", "shared") == "per_output"
        self.pred_dim = int(arch.get("pred_dim", 1))
        self.reduction = arch.get("reduction", "mean")
        self.detach_weight = self.form == "weighted_ce" or "abs_error" in self.inputs
        # raw_units of the loaded loss: offsets 0 and scales 1 where it has none (exact: v - 0 = v, v / 1 = v)
        for name, width in (("pred", self.pred_dim), ("target", self.pred_dim), ("x", int(arch.get("x_dim", 0)))):
            self.register_buffer(f"offset_{name}", getattr(loss, f"offset_{name}", torch.zeros(width)).clone())
            self.register_buffer(f"scale_{name}", getattr(loss, f"scale_{name}", torch.ones(width)).clone())

    def _network(self, h: torch.Tensor) -> torch.Tensor:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            h = _act(h, self.activation) if i < n - 1 else _act(h, self.output)
        return h.squeeze(-1)

    def _weigh(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (w.detach() if self.detach_weight else w) * v

    def forward(self, pred: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None = None,
                reduction: str | None = None) -> torch.Tensor:
        red = self.reduction if reduction is None else reduction
        if self.form == "ce_classwise" or self.form == "weighted_ce":
            return self._classification(pred, _class_targets(pred, target), red)
        if pred.dim() == 1 and self.pred_dim == 1:  # a flat vector of scalar predictions
            pred, target = pred.unsqueeze(-1), target.unsqueeze(-1)
            if x is not None and x.dim() == 1:
                x = x.unsqueeze(-1)
        if pred.shape != target.shape:
            raise ValueError("pred and target must have the same shape")
        pred = (pred - self.offset_pred) / self.scale_pred
        target = (target - self.offset_target) / self.scale_target
        if x is not None:
            x = (x - self.offset_x) / self.scale_x
        return self._regression(pred, target, x, red)

    def _regression(self, pred: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None,
                    red: str) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for name in self.inputs:
            if name == "x":
                if x is None:
                    raise ValueError("this loss reads the inputs: call it with x=...")
                xi = x.to(pred.dtype)
                if self.per_output:
                    xi = xi.unsqueeze(-2).expand(pred.shape[0], pred.shape[1], xi.shape[-1])
                parts.append(xi)
            else:
                if name == "pred":
                    t = pred
                elif name == "target":
                    t = target
                elif name == "abs_error":
                    t = (pred - target).abs()
                else:  # "level": the batch's log MSE per output, constant for the gradient
                    t = (pred - target).detach().square().mean(-2, keepdim=True).add(1e-12).log().expand_as(pred)
                parts.append(t.unsqueeze(-1) if self.per_output else t)
        h = torch.cat(parts, dim=-1)
        if self.per_output:
            h = h.reshape(-1, h.shape[-1])
        values = self._network(h)
        if self.form == "weighted_se":
            se = (pred - target).square()
            if self.weights_per_output:
                values = self._weigh(values.reshape(se.shape), se).mean(-1)
            elif self.per_output:
                values = self._weigh(values, se.reshape(-1))
            else:
                values = self._weigh(values, se.sum(-1))
        if red == "none" and self.per_output:
            return values.reshape(pred.shape)
        return _reduce(values, red)

    def _classification(self, logits: torch.Tensor, target: torch.Tensor, red: str) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)
        ce = -(target * logp).sum(-1)
        p = logp.exp()
        if self.form == "weighted_ce":
            feats: list[torch.Tensor] = []
            for name in self.inputs:
                if name == "ce":
                    feats.append(ce)
                elif name == "target_prob":
                    feats.append((target * p).sum(-1))
                else:  # "max_prob"
                    feats.append(p.max(-1).values)
            w = self._network(torch.stack(feats, dim=-1))
            return _reduce(self._weigh(w, ce), red)
        feats = []
        for name in self.inputs:
            feats.append(p if name == "prob" else (logp if name == "logprob" else target))
        h = torch.stack(feats, dim=-1)  # (N, C, F)
        g = self._network(h.reshape(-1, h.shape[-1])).reshape(logits.shape)
        return _reduce(ce + g.sum(-1), red)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean(-1)
    if reduction == "sum":
        return values.sum(-1)
    if reduction == "none":
        return values
    raise ValueError("unknown reduction (mean, sum, none)")


def _class_targets(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) class indices, or (N, C) one-hot/soft targets, as (N, C) float targets (``portable.class_targets``)."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError("logits must be (N, C) with C >= 2")
    if labels.dim() == 1 and not labels.is_floating_point():
        if labels.shape[0] != logits.shape[0]:
            raise ValueError("one label per row of logits")
        classes = torch.arange(logits.shape[1], device=logits.device)
        if not torch.jit.is_tracing() and bool(((labels < 0) | (labels >= logits.shape[1])).any()):
            raise ValueError("labels must be class indices in [0, C - 1]")
        return (labels.unsqueeze(-1) == classes).to(logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError("targets must be (N,) int64 indices or (N, C) like the logits")
    return labels.to(logits.dtype)


def to_torchscript(loss: LearnedLoss) -> torch.jit.ScriptModule:
    """The loss compiled by ``torch.jit.script`` (on the CPU, float32, in eval mode)."""
    with warnings.catch_warnings():  # deprecated in favour of torch.export, which C++ and mobile runtimes do not load
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(ExportedLoss(loss.cpu()).eval())


def export_torchscript(loss: LearnedLoss, path=None) -> bytes:
    """Write the loss as TorchScript to ``path`` (a file name or a binary file); returns the bytes."""
    buf = io.BytesIO()
    module = to_torchscript(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, buf)
    return _write(buf.getvalue(), path)


def onnx_inputs(loss: LearnedLoss, rows: int = 4) -> dict:
    """Example inputs of the exported ONNX graph, by name: what its ``input_names`` and shapes are."""
    arch = loss.arch
    if arch.get("form") in ("ce_classwise", "weighted_ce"):
        classes = 3
        return {"logits": torch.randn(rows, classes), "labels": torch.arange(rows) % classes}
    d = int(arch.get("pred_dim", 1))
    out = {"pred": torch.randn(rows, d), "target": torch.randn(rows, d)}
    if "x" in arch["inputs"]:
        out["x"] = torch.randn(rows, int(arch.get("x_dim", 1)))
    return out


def export_onnx(loss: LearnedLoss, path=None, opset: int = ONNX_OPSET) -> bytes:
    """Write the loss as ONNX (the TorchScript-based exporter, ``dynamo=False``) to ``path``; returns the bytes.

    Inputs: ``pred``, ``target`` (N, pred_dim) and ``x`` (N, x_dim) where the loss reads it; for the
    classification forms ``logits`` (N, C) and ``labels`` (N,) int64. N (and C) are dynamic; output
    ``loss``, a scalar reduced as the bundle says. Raises ExporterMissing without the ``onnx`` package."""
    try:
        import onnx  # noqa: F401 -- torch's exporter needs it
    except ImportError as e:
        raise ExporterMissing(f"ONNX export needs the onnx package ({e}): install the extra export, "
                              f"pip install 'ml3[export]' (in a clone: pip install -e '.[export]')") from None
    inputs = onnx_inputs(loss)
    dynamic = {name: {0: "n"} for name in inputs}
    if "logits" in inputs:
        dynamic["logits"] = {0: "n", 1: "classes"}
    buf = io.BytesIO()
    module = ExportedLoss(loss.cpu()).eval()
    try:
        with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated: chosen, it needs no onnxscript
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(inputs.values()), buf, input_names=list(inputs), output_names=["loss"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    except Exception as e:  # the exporter raises its own error types
        raise ExportError(f"the ONNX exporter refused this loss: {type(e).__name__}: {e}") from None
    return _write(buf.getvalue(), path)


def export(loss: LearnedLoss, fmt: str, path=None) -> bytes:
    """``export_torchscript`` or ``export_onnx`` by name (``FORMATS``)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {FORMATS}")
    return (export_torchscript if fmt == "torchscript" else export_onnx)(loss, path)


def _write(data: bytes, path) -> bytes:
    if path is None:
        return data
    if hasattr(path, "write"):
        path.write(data)
    else:
        with open(os.fspath(path), "wb") as f:
            f.write(data)
    return data
