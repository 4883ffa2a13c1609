"""The learned loss L_phi: an MLP over (pred, target[, x]) per point, as a parameter dict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .config import ConfigError, check, check_layers, from_dict
from .portable import ACTIVATIONS, CLASS_INPUTS, EXAMPLE_INPUTS, FORMS, OUTPUTS, mlp_loss

# level: log of the batch's MSE; abs_error: |pred − target| per output (both weighted_se only, and constant for
# the gradient of the loss: a weight of the error can turn an outlier's weight down)
INPUT_NAMES = ("pred", "target", "x", "level", "abs_error")
WEIGHTS = ("shared", "per_output")
# "baseline": hidden layers Xavier-uniform, the last layer zero, so the output is a constant; the
# output bias makes that constant 1 (exp(0) = 1 needs none), and weighted_se at weight 1 is MSE.
# For ce_classwise the constant is 0 (linear output, zero bias): the correction vanishes, CE remains.
INITS = ("xavier_uniform", "xavier_normal", "default", "baseline")
BASELINE_BIAS = {"exp": 0.0, "softplus": math.log(math.e - 1), "square": 1.0}  # out(b) = 1


@dataclass
class LossSpec:
    """Architecture of L_phi. Defaults are the official sine loss: 2->50->50->1, ReLU, no bias,
    Softplus output, mean over the batch, Xavier-uniform init."""

    form: str = "net"  # "net": L_phi is the network; "weighted_se": a learned weight on the squared error
    inputs: list[str] = field(default_factory=lambda: ["pred", "target"])
    hidden: list[int] = field(default_factory=lambda: [50, 50])
    activation: str = "relu"
    bias: bool = False
    output: str = "softplus"
    reduction: str = "mean"
    init: str = "xavier_uniform"
    per_output: bool = False  # one shared net applied to each output dimension
    # weighted_se only: "shared", one weight per point on the summed squared error; "per_output", one
    # weight per output dimension (the net's last layer has pred_dim outputs), e.g. per joint torque
    weights: str = "shared"
    pred_dim: int = 1  # set by the task family
    x_dim: int = 0  # set by the task family when "x" is an input

    def __post_init__(self):
        self._arch = None
        self.inputs = list(self.inputs)
        self.hidden = [int(h) for h in self.hidden]
        check(len(self.inputs) > 0 and len(set(self.inputs)) == len(self.inputs), "loss.inputs",
              "a non-empty list without repeats")
        names = {"ce_classwise": CLASS_INPUTS, "weighted_ce": EXAMPLE_INPUTS}.get(self.form, INPUT_NAMES)
        for name in self.inputs:
            check(name in names, "loss.inputs", f"unknown input {name!r} for form {self.form}; choose from {names}")
        check_layers(self.hidden, "loss.hidden")
        check(self.activation in ACTIVATIONS, "loss.activation", f"one of {sorted(ACTIVATIONS)}")
        check(self.output in OUTPUTS, "loss.output", f"one of {sorted(OUTPUTS)}")
        check(self.form in FORMS, "loss.form", f"one of {FORMS}")
        if self.form in ("weighted_se", "weighted_ce"):  # the weight must not see pred, nor go below zero
            check("pred" not in self.inputs, "loss.inputs", "without pred: a weighted_se loss weighs (pred − target)²")
            check(self.output in ("softplus", "square", "exp"), "loss.output",
                  f"softplus, square or exp for {self.form}")
        else:
            check("level" not in self.inputs, "loss.inputs", "level (the batch's log MSE) needs form weighted_se")
            check("abs_error" not in self.inputs, "loss.inputs", "abs_error (|pred − target|) needs form weighted_se")
        check(self.weights in WEIGHTS, "loss.weights", f"one of {WEIGHTS}")
        if self.weights == "per_output":  # one net, pred_dim weights: not with one net per dimension
            check(self.form == "weighted_se", "loss.weights", "per_output needs loss.form weighted_se")
            check(not self.per_output, "loss.weights", "per_output weights need loss.per_output false")
        check(self.reduction in ("mean", "sum"), "loss.reduction", "mean or sum")
        check(self.init in INITS, "loss.init", f"one of {INITS}")
        if self.form in ("ce_classwise", "weighted_ce"):
            check(not self.per_output, "loss.per_output", f"false for {self.form} (it is per example already)")
        if self.init == "baseline" and self.form == "ce_classwise":  # g = 0: exactly cross-entropy
            check(self.output == "linear", "loss.init", "baseline for ce_classwise needs loss.output linear")
        elif self.init == "baseline":  # phi starts as the plain loss, so meta-training improves from parity
            check(self.form in ("weighted_se", "weighted_ce"), "loss.init",
                  "baseline needs a form that contains the plain loss: weighted_se (weight 1 is MSE), "
                  "weighted_ce (weight 1 is cross-entropy), ce_classwise (g = 0 is cross-entropy)")
            check(self.output == "exp" or (self.bias and self.output in BASELINE_BIAS), "loss.init",
                  "baseline needs loss.output exp, or loss.bias true with output softplus or square")

    @classmethod
    def from_dict(cls, d: dict | None, **family_defaults) -> LossSpec:
        merged = {**family_defaults, **(d or {})}
        return from_dict(cls, merged, "loss")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def in_features(self) -> int:
        if self.form in ("ce_classwise", "weighted_ce"):
            return len(self.inputs)  # per class or per example: the same network for any number of classes
        per_point = 1 if self.per_output else self.pred_dim
        return sum(self.x_dim if n == "x" else per_point for n in self.inputs)

    def architecture(self) -> dict:
        """The JSON architecture block of a bundle (what portable.mlp_loss reads)."""
        if self._arch is None:  # cached: mlp_loss reads it on every call of the hot loop
            skip = ("init", "weights") if self.weights == "shared" else ("init",)  # shared: as before "weights"
            self._arch = {"type": "mlp", **{k: v for k, v in self.to_dict().items() if k not in skip}}
        return self._arch

    def layer_sizes(self) -> list[tuple[int, int]]:
        sizes = [self.in_features, *self.hidden, self.pred_dim if self.weights == "per_output" else 1]
        return list(zip(sizes[:-1], sizes[1:], strict=True))


def init_loss_params(spec: LossSpec, generator: torch.Generator, n: int | None = None) -> dict:
    """Fresh phi (n stacked copies if n is given), drawn from ``generator`` on the CPU."""
    lead = () if n is None else (n,)
    params = {}
    for i, (fan_in, fan_out) in enumerate(spec.layer_sizes()):
        if spec.init in ("xavier_uniform", "baseline"):
            a = math.sqrt(6.0 / (fan_in + fan_out))
            w = (torch.rand(*lead, fan_out, fan_in, generator=generator) * 2 - 1) * a
        elif spec.init == "xavier_normal":
            w = torch.randn(*lead, fan_out, fan_in, generator=generator) * math.sqrt(2.0 / (fan_in + fan_out))
        else:  # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            w = (torch.rand(*lead, fan_out, fan_in, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        last = i == len(spec.layer_sizes()) - 1
        params[f"layers.{i}.weight"] = torch.zeros_like(w) if last and spec.init == "baseline" else w
        if spec.bias:
            baseline = last and spec.init == "baseline" and spec.form != "ce_classwise"
            b = BASELINE_BIAS[spec.output] if baseline else 0.0
            params[f"layers.{i}.bias"] = torch.full((*lead, fan_out), b)
    return params


def apply_loss(spec: LossSpec, params: dict, pred, target, x=None, reduction: str | None = None):
    return mlp_loss(params, spec.architecture(), pred, target, x, reduction or spec.reduction)


__all__ = ["LossSpec", "init_loss_params", "apply_loss", "ConfigError"]
