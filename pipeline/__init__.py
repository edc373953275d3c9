"""sak.pipeline: run each teacher once and keep its features in a shared cache.

The public API (everything else is importable but may move between minor versions)::

    from sak.pipeline import ExtractConfig, extract, open_cache, create_teacher

    report = extract(ExtractConfig(cache="./cache", teachers=("dinov2",), datasets=("nyud",)))
    cache = open_cache("./cache")
    store = cache.store("dinov2")            # a FeatureStore, read-only
    maps = store.read_sample(sha256)          # {layer: (h, w, c)}

Subpackages, bottom to top: ``storage`` (local + fsspec behind one interface), ``tasks`` (one
TaskDef per task), ``teachers`` (registry + metadata + adapters), ``store`` (spec, segments,
commits, stats, maintenance), ``data`` (datasets, images, labels, augmentation), ``extract``.
"""

from ..manifests.version import __version__
from .cache import Cache, open_cache
from .data.datasets import Dataset, index_dataset, write_dataset_index
from .extract.job import ExtractConfig, ExtractReport, extract
from .store.feature_store import FeatureStore
from .store.spec import FeatureSpec
from .tasks import TaskDef, get_task, list_tasks, register_task
from .teachers import Teacher, TeacherInfo, create_teacher, list_teachers, register_teacher, teacher_info

__all__ = [
    "Cache", "Dataset", "ExtractConfig", "ExtractReport", "FeatureSpec", "FeatureStore", "TaskDef", "Teacher",
    "TeacherInfo", "__version__", "create_teacher", "extract", "get_task", "index_dataset", "list_tasks",
    "list_teachers", "open_cache", "register_task", "register_teacher", "teacher_info", "write_dataset_index",
]
