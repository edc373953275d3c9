"""sak.student: the SAK multi-task student, trained from cached teacher targets.

The public API (everything else is importable but may move between minor versions)::

    from sak.student import TrainConfig, fit, evaluate, load_student, training_set

    result = fit(TrainConfig(cache="./cache", backbone="vit_base_patch16_384", iters=40000, out="runs/b"))
    metrics = evaluate("runs/b")["metrics"]           # {"semseg/mIoU": ..., ...}
    model = load_student("runs/b")                     # or an exported .safetensors student
    data = training_set("./cache", dataset="nyud", teachers=["dinov2"])  # a torch Dataset of fit's samples

Subpackages, bottom to top: ``model`` (stem, adapter paths, routers, heads), ``data`` (cached
targets, sampler, loader), ``runs`` (run directory, configs, checkpoints), ``evaluate``
(metrics, plots), ``train`` (trainer and its parts).
"""

from ..manifests.version import __version__
from .api import TrainingSet, training_set
from .data.cached import CachedTargets
from .evaluate.evaluator import evaluate, evaluate_model
from .model.config import StudentConfig
from .model.student import SAKStudent
from .runs.config import TrainConfig
from .runs.loader import load_student
from .train.trainer import RunResult, fit

__all__ = [
    "CachedTargets", "RunResult", "SAKStudent", "StudentConfig", "TrainConfig", "TrainingSet", "__version__", "evaluate",
    "evaluate_model", "fit", "load_student", "training_set",
]
