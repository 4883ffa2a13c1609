"""Tasks from a user's data set: each task is the group of rows (x, y) that share a task label.

The rows come from outside the config: ``dataset`` names them and ``resolve`` turns the name
into a ``TaskData``, from arrays a script ``provide``d or from the loader a host application
installed (the service reads its database). ml3core never opens a file or a database here,
so a job spec cannot make a server read a path.

Splits are by task, drawn from ``split_seed`` (the same for every run seed): meta-train tasks
train L_phi, meta-validation tasks choose the published seed, meta-test tasks are only seen at
meta-test. Inside each task a fixed fraction of the rows is held out; models train on the
rest; a data set whose rows carry a ``trusted`` marker (0/1) holds out exactly its trusted rows
instead, so the meta-objective and the meta-test's scores read trusted rows only and the inner
steps train on the others (the noisy ones). Inputs and outputs are standardised per feature
with the mean/std of the meta-train tasks' rows, so no statistic leaks from the validation or
test tasks.

Tasks differ in size but the engine stacks them to (S, n, N, dim): each draw takes ``points``
train rows and ``heldout_points`` held-out rows of a task, without replacement when the task
has that many and with replacement when it has fewer. The n tasks of a draw go through a
random order of the split's tasks, repeating it when n is larger than the split.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace

import torch

from ..config import ConfigError, check, check_layers, check_range
from ..models import mlp_forward, mlp_init
from ..portable import ACTIVATIONS
from .base import (
    CLASSIFICATION_LOSS,
    TaskFamily,
    classification_loss_defaults,
    classification_metrics,
    cross_entropy,
    margin_landscape,
    mse,
)
from .noise import add_outliers, flip_labels, label_noise, outliers

FORMAT = "ml3-tasks"
SPLITS = ("train", "validation", "test")
MAX_CLASSES = 100  # classes of a classification data set: one logit each


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


@dataclass
class TaskData:
    """A data set of regression tasks: rows (x, y) and the index of each row's task."""

    x: torch.Tensor  # (N, X) float64
    y: torch.Tensor  # (N, Y) float64
    task: torch.Tensor  # (N,) int64, an index into ``names``
    names: list[str]
    inputs: list[str]  # X column names
    outputs: list[str]  # Y column names
    classes: list[str] | None = None  # classification: y is one column of indices into these class names
    trusted: torch.Tensor | None = None  # (N,) bool: the rows held out (meta-objective, meta-test scores)

    def __post_init__(self):
        x, y, t = self.x, self.y, self.task
        check(x.dim() == 2 and x.shape[0] > 0 and x.shape[1] > 0, "x", f"a (rows, inputs) array, got {tuple(x.shape)}")
        check(y.dim() == 2 and y.shape[1] > 0, "y", f"a (rows, outputs) array, got {tuple(y.shape)}")
        check(y.shape[0] == x.shape[0], "y", f"{y.shape[0]} rows, but x has {x.shape[0]}")
        check(t.dim() == 1 and t.shape[0] == x.shape[0], "task", f"one label per row ({x.shape[0]})")
        check(len(self.inputs) == x.shape[1] and len(self.outputs) == y.shape[1], "columns",
              "one name per input and output column")
        check(len(set(self.names)) == len(self.names), "task", "task names must be unique")
        check(not t.is_floating_point() and bool(((t >= 0) & (t < len(self.names))).all()), "task",
              "indices into the task names")
        for name, a, cols in (("x", x, self.inputs), ("y", y, self.outputs)):
            bad = (~torch.isfinite(a)).nonzero()
            if len(bad):
                row, col = bad[0].tolist()
                raise ConfigError(name, f"row {row}, column {cols[col]!r}: {a[row, col].item()} is not finite")
        if self.classes is not None:
            c = len(self.classes)
            check(2 <= c <= MAX_CLASSES, "classes", f"2..{MAX_CLASSES} classes, got {c}")
            check(len(set(self.classes)) == c, "classes", "class names must be unique")
            check(y.shape[1] == 1 and bool(((y >= 0) & (y < c) & (y == y.round())).all()), "y",
                  "one column of class indices into the class names")
        if self.trusted is not None:
            tr = self.trusted
            check(tr.dtype == torch.bool and tr.dim() == 1 and tr.shape[0] == x.shape[0], "trusted",
                  f"one 0/1 marker per row ({x.shape[0]})")

    def check_trusted(self) -> None:
        """Every task needs trusted rows (its held-out side: the meta-objective and the meta-test's
        scores) and untrusted ones (what the inner steps train on); a ConfigError names the tasks."""
        if self.trusted is None:
            return
        T = len(self.names)
        trusted = torch.bincount(self.task[self.trusted], minlength=T).tolist()
        counts = self.counts()
        none = [n for n, k in zip(self.names, trusted, strict=True) if k == 0]
        every = [n for n, k, m in zip(self.names, trusted, counts, strict=True) if k == m]
        if none:
            raise ConfigError("trusted", f"{len(none)} of {T} tasks have no trusted row: "
                              f"{', '.join(map(repr, none[:5]))}; every task needs trusted rows (1), its held-out "
                              "side that the meta-objective and the meta-test score on")
        if every:
            what = "every row is trusted" if len(every) == T else f"{len(every)} of {T} tasks have only trusted rows"
            raise ConfigError("trusted", f"{what}: {', '.join(map(repr, every[:5]))}; every task also needs "
                              "untrusted rows (0), the ones the inner steps train on")

    @classmethod
    def from_labels(cls, x, y, labels, inputs=None, outputs=None, trusted=None) -> TaskData:
        """Rows with one task label each (any values; compared as text). 1-D x or y is one column.
        trusted: None, or one 0/1 (bool) marker per row."""
        x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        x, y = x.reshape(len(x), -1) if x.dim() == 1 else x, y.reshape(len(y), -1) if y.dim() == 1 else y
        labels = [str(v) for v in labels]
        names = sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        task = torch.tensor([index[v] for v in labels], dtype=torch.int64)
        inputs = list(inputs) if inputs is not None else [f"x{i + 1}" for i in range(x.shape[-1])]
        outputs = list(outputs) if outputs is not None else [f"y{i + 1}" for i in range(y.shape[-1])]
        if trusted is not None:
            trusted = torch.as_tensor(trusted)
            check(bool(((trusted == 0) | (trusted == 1)).all()), "trusted", "0 or 1 per row")
            trusted = trusted != 0
        return cls(x, y, task, names, inputs, outputs, trusted=trusted)

    @classmethod
    def from_class_labels(cls, x, labels, tasks, inputs=None, output: str = "label", trusted=None) -> TaskData:
        """Classification rows: x, one class label per row (ints or strings, compared as text) and
        one task label per row. Classes are indexed in sorted order (numerically when all are integers)."""
        labels = [str(v) for v in labels]
        names = sorted(set(labels), key=lambda v: (0, int(v), "") if _is_int(v) else (1, 0, v))
        index = {n: i for i, n in enumerate(names)}
        y = torch.tensor([[float(index[v])] for v in labels], dtype=torch.float64)
        data = cls.from_labels(x, y, tasks, inputs, [output], trusted)
        return cls(data.x, data.y, data.task, data.names, data.inputs, data.outputs, names, data.trusted)

    def class_counts(self) -> list[list[int]]:
        """Rows per (task, class) of a classification data set."""
        c = len(self.classes)
        flat = torch.bincount(self.task * c + self.y[:, 0].long(), minlength=len(self.names) * c)
        return flat.reshape(len(self.names), c).tolist()

    def counts(self) -> list[int]:
        return torch.bincount(self.task, minlength=len(self.names)).tolist()

    # -- storage: safetensors, so the bytes are deterministic and loading never unpickles ------------
    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {"format": FORMAT, "version": 1, "names": self.names, "inputs": self.inputs, "outputs": self.outputs}
        if self.classes is not None:
            meta["classes"] = self.classes
        tensors = {"x": self.x.contiguous(), "y": self.y.contiguous(), "task": self.task.contiguous()}
        if self.trusted is not None:  # absent otherwise: a data set without markers keeps its bytes (and sha256)
            tensors["trusted"] = self.trusted.to(torch.uint8).contiguous()
        return save(tensors, metadata={"json": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> TaskData:
        from safetensors.torch import load

        try:
            n = int.from_bytes(blob[:8], "little")
            meta = json.loads(json.loads(blob[8 : 8 + n])["__metadata__"]["json"])
            t = load(blob)
            check(meta.get("format") == FORMAT, "dataset", "not an ml3 task file")
            trusted = t["trusted"].to(torch.bool) if "trusted" in t else None
            return cls(t["x"], t["y"], t["task"], meta["names"], meta["inputs"], meta["outputs"], meta.get("classes"),
                       trusted)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError("dataset", f"unreadable task file: {type(e).__name__}: {e}") from None

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def summary(self) -> dict:
        """Shapes, rows per task and per-column statistics: what a user checks after an upload."""
        counts = self.counts()

        def stats(a, cols):
            return {c: {"mean": float(a[:, i].mean()), "std": float(a[:, i].std(correction=0)),
                        "min": float(a[:, i].min()), "max": float(a[:, i].max())} for i, c in enumerate(cols)}

        extra = {} if self.classes is None else {"task_type": "classification", "classes": self.classes}
        if self.trusted is not None:
            per_task = torch.bincount(self.task[self.trusted], minlength=len(self.names)).tolist()
            extra.update({"trusted_rows": int(self.trusted.sum()),
                          "task_trusted_rows": dict(zip(self.names, per_task, strict=True))})
        return {**extra, "rows": self.x.shape[0], "tasks": len(self.names), "x_dim": self.x.shape[1],
                "y_dim": self.y.shape[1], "inputs": self.inputs, "outputs": self.outputs,
                "task_rows": dict(zip(self.names, counts, strict=True)),
                "min_task_rows": min(counts), "max_task_rows": max(counts),
                "stats": {"inputs": stats(self.x, self.inputs), "outputs": stats(self.y, self.outputs)}}


# -- where data sets come from ----------------------------------------------------------------------
_PROVIDED: dict[str, TaskData] = {}
_LOADER = None


def provide(name: str, data: TaskData) -> None:
    """Make ``data`` available as ``task.dataset = name`` in this process (scripts, tests)."""
    _PROVIDED[str(name)] = data


def set_loader(loader) -> None:
    """Install ``loader(name) -> TaskData`` (raising ConfigError for unknown names); the service's
    loader reads its database. Names ``provide``d in-process are looked up first."""
    global _LOADER
    _LOADER = loader


def resolve(name) -> TaskData:
    name = str(name)
    if name in _PROVIDED:
        return _PROVIDED[name]
    check(_LOADER is not None, "task.dataset", f"unknown data set {name!r}")
    return _LOADER(name)


# -- the family -------------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    dataset: str | int = ""  # the service: a data set id from POST /v1/datasets
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # meta-train / validation / test tasks
    split_seed: int = 0  # the task split and each task's held-out rows
    heldout_fraction: float = 0.25  # rows of each task never trained on
    points: int = 32  # train rows drawn per task and draw
    heldout_points: int = 32  # held-out rows drawn per task and draw
    normalize: bool = True  # standardise with the meta-train tasks' mean/std
    model_hidden: list[int] = field(default_factory=lambda: [40, 40])
    model_activation: str = "relu"
    meta_objective: str = "heldout"  # L_T on the held-out rows of meta-train tasks, or on the "train" rows
    beta: float = 1.0
    label_noise: float | dict = 0.0  # classification: a fraction of train labels flipped (tasks/noise.py)
    outliers: float | dict = 0.0  # regression: a fraction of train targets replaced by outliers

    def __post_init__(self):
        ok = isinstance(self.dataset, (str, int)) and not isinstance(self.dataset, bool) and str(self.dataset) != ""
        check(ok, "task.dataset", "required: the id (or name) of a data set")
        ok = isinstance(self.split, (list, tuple)) and len(self.split) == 3
        ok = ok and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in self.split)
        check(ok and abs(sum(self.split) - 1) < 1e-6, "task.split",
              "three fractions in (0, 1) summing to 1: meta-train, meta-validation, meta-test tasks")
        check_range(self.split_seed, "task.split_seed", 0, 2**31 - 1)
        check_range(self.heldout_fraction, "task.heldout_fraction", 0.01, 0.99)
        check_range(self.points, "task.points", 1, 100_000)
        check_range(self.heldout_points, "task.heldout_points", 1, 100_000)
        check_layers(self.model_hidden, "task.model_hidden")
        check(self.model_activation in ACTIVATIONS, "task.model_activation", f"one of {sorted(ACTIVATIONS)}")
        check(self.meta_objective in ("heldout", "train"), "task.meta_objective", "heldout or train")
        check(self.beta == 1.0, "task.beta", "the dataset family has only the MSE task loss (beta = 1)")
        noisy = label_noise(self.label_noise).rate > 0 or outliers(self.outliers).rate > 0
        check(not noisy or self.meta_objective == "heldout", "task.meta_objective",
              "heldout with noisy train rows: L_T must judge on the clean held-out rows")

    @property
    def noisy(self) -> bool:
        return label_noise(self.label_noise).rate > 0 or outliers(self.outliers).rate > 0


@dataclass
class _Prepared:
    """The data standardised and split: for each split, padded row indices of its tasks."""

    x: torch.Tensor
    y: torch.Tensor
    tasks: dict  # split -> list of task indices
    rows: dict  # (split, "train" | "heldout") -> ((tasks, max rows) long, (tasks,) counts)
    task_rows: dict  # task index -> (train rows, held-out rows)
    norm: dict
    data: TaskData


class DatasetFamily(TaskFamily):
    """Tasks of an uploaded data set (the service: ml3 datasets upload; a script: dataset.provide)."""

    name = "dataset"
    config_cls = DatasetConfig
    validation_split = "validation"

    def __init__(self, config):
        super().__init__(config)
        self._prepared = None

    # -- the data, loaded when first needed (a landscape of a stored loss needs none) --------------
    def resolve(self) -> None:
        self.prepared  # noqa: B018  (loads and checks the data set now)

    @property
    def prepared(self) -> _Prepared:
        if self._prepared is None:
            self._prepared = self._prepare(resolve(self.config.dataset))
        return self._prepared

    def _prepare(self, data: TaskData) -> _Prepared:
        c = self.config
        counts = data.counts()
        small = [n for n, k in zip(data.names, counts, strict=True) if k < 2]
        check(not small, "task.dataset", f"every task needs at least 2 rows (train + held out); {small[:3]} have fewer")
        check(label_noise(c.label_noise).rate == 0 or data.classes is not None, "task.label_noise",
              "for a classification data set; a regression data set takes task.outliers")
        check(outliers(c.outliers).rate == 0 or data.classes is None, "task.outliers",
              "for a regression data set; a classification data set takes task.label_noise")
        if data.trusted is not None:
            data.check_trusted()
            check(c.meta_objective == "heldout", "task.meta_objective",
                  "heldout for a data set with trusted rows: L_T judges on the trusted rows only")
        g = torch.Generator().manual_seed(c.split_seed)
        T = len(data.names)
        n_val, n_test = (max(1, round(f * T)) for f in c.split[1:])
        check(T - n_val - n_test >= 1, "task.split",
              f"{T} tasks are too few for a meta-train, a meta-validation and a meta-test split")
        order = torch.randperm(T, generator=g).tolist()
        n_train = T - n_val - n_test
        tasks = {"train": sorted(order[:n_train]), "validation": sorted(order[n_train : n_train + n_val]),
                 "test": sorted(order[n_train + n_val :])}
        held = {}
        for t in range(T):  # each task's rows, shuffled once: the first part is held out (or its trusted rows)
            rows = (data.task == t).nonzero().squeeze(1)
            rows = rows[torch.randperm(len(rows), generator=g)]
            if data.trusted is not None:
                mark = data.trusted[rows]
                held[t] = (rows[~mark], rows[mark])
                continue
            k = min(len(rows) - 1, max(1, round(c.heldout_fraction * len(rows))))
            held[t] = (rows[k:], rows[:k])
        x, y = data.x, data.y
        if data.classes is not None:  # a class seen only outside meta-training has no trained logit behaviour
            seen = set(data.y[torch.cat([torch.cat(held[t]) for t in tasks["train"]]), 0].long().tolist())
            for split in ("validation", "test"):
                rows = torch.cat([torch.cat(held[t]) for t in tasks[split]])
                unseen = sorted(set(data.y[rows, 0].long().tolist()) - seen)
                check(not unseen, "task.dataset", f"classes {[data.classes[i] for i in unseen][:5]} of "
                      f"{split} tasks never occur in a meta-train task; change task.split_seed or add rows")
            y = torch.nn.functional.one_hot(y[:, 0].long(), len(data.classes)).to(y.dtype)
        norm = {}
        if c.normalize:
            train_rows = torch.cat([torch.cat(held[t]) for t in tasks["train"]])
            for key, a in (("x", x), ("y", y)) if data.classes is None else (("x", x),):
                mean, std = a[train_rows].mean(0), a[train_rows].std(0, correction=0)
                std = torch.where(std > 1e-12, std, torch.ones_like(std))
                norm[f"{key}_mean"], norm[f"{key}_std"] = mean.tolist(), std.tolist()
            x = (x - torch.tensor(norm["x_mean"], dtype=x.dtype)) / torch.tensor(norm["x_std"], dtype=x.dtype)
            if data.classes is None:
                y = (y - torch.tensor(norm["y_mean"], dtype=y.dtype)) / torch.tensor(norm["y_std"], dtype=y.dtype)
        rows = {}
        for split, members in tasks.items():
            for part, i in (("train", 0), ("heldout", 1)):
                lists = [held[t][i] for t in members]
                pad = torch.zeros(len(lists), max(len(r) for r in lists), dtype=torch.int64)
                for j, r in enumerate(lists):
                    pad[j, : len(r)] = r
                rows[split, part] = (pad, torch.tensor([len(r) for r in lists]))
        return _Prepared(x, y, tasks, rows, held, norm, data)

    @property
    def classification(self) -> bool:
        return self.prepared.data.classes is not None

    @property
    def trusted(self) -> bool:
        """The data set marks trusted rows: they are the held-out side, the other rows count as noisy."""
        return self.prepared.data.trusted is not None

    @property
    def noisy(self) -> bool:
        """Noise injected (task.label_noise, task.outliers) or a data set with trusted rows."""
        return self.config.noisy or self.trusted

    def robust_baselines(self) -> list:
        """Those of the task type when noise is injected, and also for a data set with trusted rows
        (its untrusted rows are the user's noisy ones)."""
        from ..robust import grid

        found = super().robust_baselines()
        if found or not self.trusted:
            return found
        return grid("classification" if self.classification else "regression")

    @property
    def heldout_metric(self) -> str:
        return "error_heldout" if self.classification else "mse_heldout"

    def rows_of(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train rows, held-out rows) of task ``task``: indices into the data set."""
        return self.prepared.task_rows[task]

    # -- what the engine calls -----------------------------------------------------------------------
    def loss_defaults(self) -> dict:
        """One shared L_phi(pred, target) per output dimension: it works for any number of outputs."""
        if self.classification:  # logits and labels: the per-class correction of cross-entropy
            return dict(CLASSIFICATION_LOSS)
        d = self.prepared.data
        return {"pred_dim": d.y.shape[1], "x_dim": d.x.shape[1], "per_output": True}

    def loss_defaults_for(self, form: str | None) -> dict:
        """Regression with no form named: a learned weight on each squared error that starts as MSE
        (measured in bench/scoreboard.py: the free-form net of the paper, meta-trained with M = 1, was
        up to 89x worse than MSE at 1000 steps on the diabetes tasks; this one stays near parity)."""
        if self.classification:
            return classification_loss_defaults(form or "ce_classwise")
        if form is None:
            d = super().loss_defaults_for("weighted_se")
            if self.noisy:  # the weight also reads each point's error size: it can turn an outlier down
                d = {**d, "inputs": [*d["inputs"], "abs_error"]}
            return {**d, "hidden": [16], "activation": "tanh", "output": "exp", "bias": True, "init": "baseline"}
        return super().loss_defaults_for(form)

    def train_defaults(self) -> dict:
        # noise is memorised with training time: with noisy train rows the published seed is judged at 100, 1000 steps
        noisy = {"validation_horizons": [100, 1000]} if self.noisy else {}
        if self.classification:
            return {"tasks_per_batch": 4, "inner_lr": 0.1, "eval_tasks": 4, **noisy}
        return {"tasks_per_batch": 8, "inner_lr": 0.01, "eval_tasks": 4, "schedule": "persistent", "inner_steps": 10,
                "train_horizon": 1000, "outer_iterations": 300, "outer_lr": 3e-3, **noisy}

    def init_theta(self, generators, n):
        p = self.prepared  # classification: one output (logit) per class
        return mlp_init([p.x.shape[1], *self.config.model_hidden, p.y.shape[1]], generators, n)

    def predict(self, theta, x):
        return mlp_forward(theta, x, self.config.model_activation)

    def sample_tasks(self, generators, n, split):
        check(split in SPLITS, "split", f"one of {SPLITS}")
        p, c = self.prepared, self.config
        out = {k: [] for k in ("x", "y", "x_heldout", "y_heldout")}
        for g in generators:
            members = len(p.tasks[split])
            order = torch.cat([torch.randperm(members, generator=g) for _ in range(math.ceil(n / members))])[:n]
            for part, size, key in (("train", c.points, ""), ("heldout", c.heldout_points, "_heldout")):
                pad, count = p.rows[split, part]
                rows = _draw(pad[order], count[order], size, g)
                out["x" + key].append(p.x[rows])
                out["y" + key].append(p.y[rows])
            if c.noisy:  # after this seed's draws: a run without noise is what it was
                if self.classification:
                    out["y"][-1] = flip_labels(out["y"][-1], label_noise(c.label_noise), g)
                else:
                    out["y"][-1] = add_outliers(out["y"][-1], outliers(c.outliers), g)
        return {k: torch.stack(v) for k, v in out.items()}

    def fit_loss(self, pred, target):
        """Cross-entropy for a classification data set, MSE otherwise (L_T on the held-out rows by default)."""
        return cross_entropy(pred, target) if self.classification else mse(pred, target)

    def input_scales(self) -> dict | None:
        """The standardisation's stds: a bundle keeps them, so ``load_loss(..., raw_units=True)``
        takes targets and inputs in the data set's own units."""
        return self._standardisation("std")

    def input_offsets(self) -> dict | None:
        return self._standardisation("mean")

    def _standardisation(self, stat: str) -> dict | None:
        norm = self.prepared.norm
        if not norm:
            return None
        out = {"pred": norm.get(f"y_{stat}"), "target": norm.get(f"y_{stat}"), "x": norm.get(f"x_{stat}")}
        return {k: v for k, v in out.items() if v is not None} or None

    def metrics(self, theta, data):
        return classification_metrics(self, theta, data) if self.classification else super().metrics(theta, data)

    # -- what the service shows ----------------------------------------------------------------------
    def describe(self) -> dict:
        """Which tasks are in which split and the standardisation L_phi was trained under."""
        p = self.prepared
        extra = {} if p.data.classes is None else {"classes": p.data.classes}
        if p.data.trusted is not None:
            extra["heldout"] = "trusted rows"
        return {**extra, "dataset": self.config.dataset, "sha256": p.data.sha256(), "inputs": p.data.inputs,
                "outputs": p.data.outputs,
                "tasks": {s: [p.data.names[t] for t in members] for s, members in p.tasks.items()},
                "normalization": p.norm or None}

    def landscape(self, spec, params, options):
        """A per-output loss is one scalar function, whatever the number of outputs; a classification
        loss is drawn against the true class's logit margin (no data needed)."""
        if spec.form in ("ce_classwise", "weighted_ce"):
            return margin_landscape(spec, params, options, 2)
        return super().landscape(replace(spec, pred_dim=1) if spec.per_output else spec, params, options)


def _draw(pad, count, size: int, g) -> torch.Tensor:
    """``size`` rows of each task: (tasks, size) row indices; without replacement where a task
    has at least ``size`` rows, with replacement where it has fewer."""
    tasks, width = pad.shape
    keys = torch.rand(tasks, width, generator=g)
    keys[torch.arange(width) >= count.unsqueeze(1)] = 2.0  # padding sorts last
    if width >= size:
        distinct = keys.argsort(1)[:, :size]
    else:
        distinct = torch.zeros(tasks, size, dtype=torch.int64)
    repeated = (torch.rand(tasks, size, generator=g) * count.unsqueeze(1)).long()
    pos = torch.where((count >= size).unsqueeze(1), distinct, repeated)
    return pad.gather(1, pos)
