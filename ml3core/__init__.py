"""ml3core: meta-learning loss functions (ML3, Bechtle et al. 2020) in pure PyTorch.

No web framework, no database: the service (``app``) and workers only schedule this.
"""

from ._version import __version__
from .config import ConfigError
from .engine import Hooks, MetaTrainer, TrainResult
from .export import export_onnx, export_torchscript
from .losses import LossSpec, apply_loss, init_loss_params
from .portable import LearnedLoss, LossBundleError, load_loss
from .rollout import fit
from .tasks import FAMILIES, TaskFamily, make_family
from .train_config import TrainConfig

__all__ = [
    "ConfigError", "FAMILIES", "Hooks", "LearnedLoss", "LossBundleError", "LossSpec", "MetaTrainer",
    "TaskFamily", "TrainConfig", "TrainResult", "apply_loss", "export_onnx", "export_torchscript", "fit",
    "init_loss_params", "load_loss", "make_family", "__version__",
]
