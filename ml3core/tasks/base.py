"""The task-family interface: what the engine needs to know about a family of tasks.

A family owns its optimizee (init + forward), its data (sampled per seed from that seed's
generator) and its task loss L_T = beta * MSE + gamma * extra (review eq. 5). Data are dicts
of tensors whose leading dims are (*batch, ...): the engine stacks seeds and tasks in front.
Keys every family provides: ``x``/``y`` (train points, used for the SGD steps) and
``x_heldout``/``y_heldout`` (points of the same task the model never trains on).
Classification families predict logits and keep one-hot ``y``; their L_T, plain loss and
metrics are cross-entropy and error rate (the helpers at the end of this module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import torch

from ..config import check, check_range


@dataclass(frozen=True)
class TaskLoss:
    """L_T of review eq. 5 under one name: beta * the family's fit loss (MSE or cross-entropy) +
    gamma * its extra loss, measured on the points the inner steps train on ("train") or on the
    task's held-out points ("heldout": L_phi is then meta-trained for predictions on new points)."""

    points: str = "train"
    beta: float = 1.0
    gamma: float = 0.0

    def __call__(self, family: TaskFamily, theta: dict, data: dict):
        part = "_heldout" if self.points == "heldout" else ""
        fit, extra = family.task_terms(theta, data, part, bool(self.beta), bool(self.gamma))
        out = self.beta * fit if self.beta else 0.0
        return out + self.gamma * extra if self.gamma else out


class TaskFamily:
    name: str = ""
    config_cls: type = object
    fixed_train: bool = False  # True: one set of meta-train tasks for the whole run
    extra_metrics: tuple[str, ...] = ()  # family metrics beyond mse_train / mse_heldout
    validation_split: str = "test"  # the split meta-validation tasks are drawn from (own stream)
    heldout_metric: str = "mse_heldout"  # the metric that judges a loss (validation, horizon ratios)

    def __init__(self, config):
        self.config = config

    # -- what the engine calls -------------------------------------------------------
    def resolve(self) -> None:
        """Load and check what the config names outside itself (a data set); raises ConfigError.
        Jobs call it when they are parsed; a landscape of a stored loss does not need it."""

    def loss_defaults(self) -> dict:
        """Default LossSpec fields for this family (architecture and input dims)."""
        return {}

    def loss_defaults_for(self, form: str | None) -> dict:
        """``loss_defaults`` for a loss form (None: the spec names none, the family chooses): a
        ``weighted_se`` weight reads the same inputs but pred (it weighs the error of pred) and
        stays positive (softplus)."""
        d = self.loss_defaults()
        if form != "weighted_se":
            return d
        return {**d, "form": form, "output": "softplus",
                "inputs": [n for n in d.get("inputs", ["pred", "target"]) if n != "pred"]}

    @classmethod
    def presets(cls) -> dict:
        """Named partial specs a job can start from (``"preset": name``); "default" applies when a
        spec names none. Every family has "paper", the settings of the paper's code. Data, not
        code: ml3core/presets.json, where each says why."""
        return {name: p["spec"] for name, p in preset_entries(cls.name).items()}

    @classmethod
    def preset_overlay(cls, preset: str, task: dict) -> dict:
        """A partial spec laid over preset ``preset`` for the spec's ``task`` object (under what the
        spec states): e.g. a loss form that suits noisy train points. {}: the preset as it is."""
        return {}

    def train_defaults(self) -> dict:
        """TrainConfig fields this family's official setting uses where a spec gives none."""
        return {}

    def robust_baselines(self) -> list:
        """The hand-designed robust losses every meta-test of this family also tunes (ml3core.robust):
        those of its task type when its train points are noisy (task.label_noise, task.outliers); else none."""
        from ..robust import baselines_for

        return baselines_for(self)

    def init_theta(self, generators: list, n: int) -> dict:
        """n fresh models per generator (one generator per seed), stacked (S, n, ...)."""
        raise NotImplementedError

    def predict(self, theta: dict, x):
        raise NotImplementedError

    def sample_tasks(self, generators: list, n: int, split: str) -> dict:
        """n tasks per generator of ``split`` 'train' (meta-train distribution) or 'test'
        (meta-test), stacked (S, n, ...). Each seed's tasks come from its own generator."""
        raise NotImplementedError

    def loss_inputs(self, theta: dict, data: dict):
        """(pred, target, x) on the train points: what L_phi sees."""
        return self.predict(theta, data["x"]), data["y"], data["x"]

    def objective(self) -> TaskLoss:
        """L_T of this family's config: which loss, on which points (the families' spec fields for it
        differ by history: ``meta_objective``, ``objective``, ``task_loss``, ``beta``, ``gamma``)."""
        c = self.config
        return TaskLoss(getattr(c, "meta_objective", "train"), getattr(c, "beta", 1.0), getattr(c, "gamma", 0.0))

    def fit_loss(self, pred, target):
        """The loss a model is fit with, per task: MSE here, cross-entropy for classification."""
        return mse(pred, target)

    def task_terms(self, theta: dict, data: dict, part: str, fit: bool, extra: bool) -> tuple:
        """(fit loss, extra loss) on the train (``part`` "") or held-out ("_heldout") points; a
        term not asked for is None. Families whose forward yields both at once override this."""
        out_fit = self.fit_loss(self.predict(theta, data["x" + part]), data["y" + part]) if fit else None
        return out_fit, self.extra_loss(theta, data, part) if extra else None

    def extra_loss(self, theta: dict, data: dict, part: str = ""):
        """L_extra of eq. 5: information only available at meta-train time."""
        raise NotImplementedError(f"{self.name} has no extra task loss")

    def task_loss(self, theta: dict, data: dict):
        """L_T, one value per task (``objective()``)."""
        return self.objective()(self, theta, data)

    def plain_loss(self, theta: dict, data: dict):
        """The baseline a learned loss is compared with: the fit loss on the train points."""
        return self.fit_loss(self.predict(theta, data["x"]), data["y"])

    def metrics(self, theta: dict, data: dict) -> dict:
        return {
            "mse_train": mse(self.predict(theta, data["x"]), data["y"]),
            "mse_heldout": mse(self.predict(theta, data["x_heldout"]), data["y_heldout"]),
        }

    # -- what the service shows -------------------------------------------------------------
    def landscape(self, spec, params: dict, options: dict) -> dict:
        """L_phi(pred, target) over a grid of predictions for each given target, beside MSE.

        options: targets (list), lo, hi, points, x (inputs for losses that read x).
        """
        from ..losses import apply_loss

        check(spec.pred_dim == 1, "loss", "the prediction-grid landscape needs a scalar prediction")
        targets = options.get("targets", [0.0])
        lo, hi, n = options.get("lo", -3.0), options.get("hi", 3.0), options.get("points", 121)
        check(isinstance(targets, list) and 0 < len(targets) <= 16, "targets", "1..16 numbers")
        check_range(n, "points", 2, 10_000)
        check_range(lo, "lo", -1e6, 1e6)
        check_range(hi, "hi", lo, 1e6)
        for t in targets:
            check_range(t, "targets", -1e6, 1e6)
        grid = torch.linspace(float(lo), float(hi), int(n))
        curves = {}
        for t in targets:
            pred = grid.view(-1, 1)
            target = torch.full_like(pred, float(t))
            x = None
            if "x" in spec.inputs:
                x = torch.full((int(n), spec.x_dim), float(options.get("x", 0.0)))
            with torch.no_grad():
                values = apply_loss(spec, params, pred.unsqueeze(-2), target.unsqueeze(-2),
                                    None if x is None else x.unsqueeze(-2))
            curves[f"learned, target={t:g}"] = values.tolist()
            curves[f"MSE, target={t:g}"] = (grid - t).pow(2).tolist()
        return {"kind": "prediction", "grid": grid.tolist(), "xlabel": "prediction", "targets": targets,
                "curves": curves, "markers": targets, "title": "Learned loss vs MSE"}

    def describe(self) -> dict:
        """Facts about the tasks a report should keep (e.g. a data set's split); JSON."""
        return {}

    def input_scales(self) -> dict | None:
        """What L_phi's inputs were divided by during meta-training, per feature: {"pred": [...],
        "target": [...], "x": [...]}. Bundles keep it, so ``load_loss(..., raw_units=True)`` can
        take unscaled values. None: L_phi saw raw values."""
        return None

    def input_offsets(self) -> dict | None:
        """What was subtracted from L_phi's inputs before the division by ``input_scales`` (a
        standardisation's means), in the same form. None: nothing."""
        return None

    def figures(self, spec, params: dict, report: dict) -> dict:
        """Extra figures (name -> PNG bytes) a family adds to a finished job."""
        return {}


# -- classification (families whose predictions are logits and whose targets are one-hot) -----------
# the loss a classification family starts from: exactly cross-entropy, with a per-class correction g
CLASSIFICATION_LOSS = {"form": "ce_classwise", "inputs": ["prob", "target", "logprob"], "hidden": [32, 32],
                       "activation": "tanh", "bias": True, "output": "linear", "init": "baseline"}


# the per-example weighting of cross-entropy (Meta-Weight-Net's idea): w_phi(CE_i, p_y,i)·CE_i, w = 1 at the start
WEIGHTED_CE_LOSS = {"form": "weighted_ce", "inputs": ["ce", "target_prob"], "hidden": [16], "activation": "tanh",
                    "bias": True, "output": "softplus", "init": "baseline"}


def classification_loss_defaults(form: str) -> dict:
    check(form in ("net", "ce_classwise", "weighted_ce"), "loss.form",
          "ce_classwise or weighted_ce for a classification family")
    return dict(WEIGHTED_CE_LOSS if form == "weighted_ce" else CLASSIFICATION_LOSS)


def cross_entropy(logits, onehot):
    """Mean cross-entropy per task: logits and one-hot targets (*batch, N, k) -> (*batch)."""
    return -(onehot * torch.log_softmax(logits, dim=-1)).sum(-1).mean(-1)


def classification_metrics(family, theta, data) -> dict:
    """Error rate and cross-entropy on the train and the held-out points of each task."""
    out = {}
    for suffix, key in (("train", ""), ("heldout", "_heldout")):
        logits, y = family.predict(theta, data["x" + key]), data["y" + key]
        out[f"error_{suffix}"] = (logits.argmax(-1) != y.argmax(-1)).to(logits.dtype).mean(-1)
        out[f"ce_{suffix}"] = cross_entropy(logits, y)
    return out


def margin_landscape(spec, params: dict, options: dict, classes: int) -> dict:
    """The loss of one example against the true class's logit margin m (true logit m, the other
    C-1 logits 0), beside cross-entropy. options: classes (C), lo, hi, points."""
    from ..losses import apply_loss

    classes = options.get("classes", classes)
    lo, hi, n = options.get("lo", -6.0), options.get("hi", 6.0), options.get("points", 121)
    check_range(classes, "classes", 2, 1000)
    check_range(n, "points", 2, 10_000)
    check_range(lo, "lo", -1e3, 1e3)
    check_range(hi, "hi", lo, 1e3)
    grid = torch.linspace(float(lo), float(hi), int(n))
    logits = torch.zeros(int(n), int(classes))
    logits[:, 0] = grid
    target = torch.zeros_like(logits)
    target[:, 0] = 1.0
    with torch.no_grad():
        learned = apply_loss(spec, {k: v.float() for k, v in params.items()}, logits, target, reduction="none")
        ce = -torch.log_softmax(logits, -1)[:, 0]
    return {"kind": "margin", "grid": grid.tolist(), "xlabel": "true class's logit margin", "classes": int(classes),
            "curves": {f"learned, C={classes}": learned.tolist(), f"cross-entropy, C={classes}": ce.tolist()},
            "markers": [0.0], "title": "Learned loss vs cross-entropy"}


def preset_entries(family: str) -> dict:
    """{name: {"why": ..., "spec": {...}}} of a family's presets (ml3core/presets.json)."""
    table = json.loads(resources.files("ml3core").joinpath("presets.json").read_text())
    blank = {"why": "", "spec": {}}
    return {"default": blank, "paper": {**blank, "why": "The paper's code."}, **table.get(family, {})}


def mse(pred, target):
    """Mean squared error per task: mean over points and output dims."""
    return (pred - target).pow(2).flatten(-2).mean(-1)


def uniform(generators: list, shape, interval):
    """U[lo, hi) of ``shape`` from each generator, stacked (S, *shape)."""
    lo, hi = interval
    return torch.stack([torch.rand(*shape, generator=g) for g in generators]) * (hi - lo) + lo


def check_task_loss_weights(beta, gamma) -> None:
    """beta (the MSE's weight) and gamma (the extra loss's) of a family with both."""
    check_range(beta, "task.beta", 0, 1e6)
    check_range(gamma, "task.gamma", 0, 1e6)
