"""Task families by name. A family is built from the job spec's ``task`` object."""

from __future__ import annotations

from ..config import ConfigError, from_dict
from .base import TaskFamily
from .dataset import DatasetFamily
from .digits import DigitsFamily
from .inverse_dynamics import InverseDynamicsFamily
from .shaped_sine import ShapedSineFamily
from .sine import SineFamily

FAMILIES: dict[str, type[TaskFamily]] = {SineFamily.name: SineFamily, ShapedSineFamily.name: ShapedSineFamily}
FAMILIES[InverseDynamicsFamily.name] = InverseDynamicsFamily
FAMILIES[DatasetFamily.name] = DatasetFamily
FAMILIES[DigitsFamily.name] = DigitsFamily


def register_family(cls: type[TaskFamily]) -> type[TaskFamily]:
    FAMILIES[cls.name] = cls
    return cls


def make_family(task: dict) -> TaskFamily:
    if not isinstance(task, dict) or "family" not in task:
        raise ConfigError("task.family", f"required; one of {sorted(FAMILIES)}")
    params = dict(task)
    name = params.pop("family")
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError("task.family", f"unknown family {name!r}; one of {sorted(FAMILIES)}")
    cls = FAMILIES[name]
    return cls(from_dict(cls.config_cls, params, "task"))


__all__ = ["FAMILIES", "TaskFamily", "make_family", "register_family"]
