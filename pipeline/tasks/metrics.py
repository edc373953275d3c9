"""Streaming evaluation metrics for the SAK tasks, mergeable across DDP ranks.

Every metric keeps only float64 sums (``state()``), so ranks combine by adding
(``merge`` locally, ``sync`` with ``torch.distributed.all_reduce``). ``update(pred, label,
mask=None)`` takes the raw head output (logits / regressions, (B, C, H, W)) and the batch
labels at the same resolution; ``mask`` is a per-sample bool (False = no label, skipped).
``compute()`` returns a dict of floats (percent for IoU / F-measures, meters, degrees).

Conventions (official SAK ``evaluation/``, checked against the official meters in the tests):
- mIoU (``eval_semseg.py``, ``eval_human_parts.py``): tp / fp / fn summed over the whole split on
  pixels whose label is not 255; IoU_c = tp / max(tp + fp + fn, 1e-8); mIoU = 100 x the mean over
  **every** class, so a class absent from both labels and predictions counts 0 (``miou="official"``,
  the default). ``miou="present"`` is sak's earlier convention: the mean over classes that occur
  in the labels or the predictions. Both agree when every class occurs (full NYUD / PASCAL val
  splits); on a subset they differ a lot (e.g. 7.14 vs 75.0 on the G7 case of the research doc).
- depth RMSE (``eval_depth.py``): sqrt(sum of squared errors / valid pixels), pooled over every
  valid pixel of the split (not a mean of per-image RMSEs); valid = 0 < depth < 80 (so 255 is
  ignored); predictions clamped to >= 0, then <= 0 -> 1e-9.
- normals (``eval_normals.py``): mean angle in degrees over the pixels whose label has no channel
  equal to 255 (and is not the zero vector), ``2 * atan2(|p - g|, |p + g|)`` on unit vectors,
  pooled. The official code maps the unit prediction to ``(p + 1) * 255 / 2`` and back before
  normalizing; that is a float round trip, not an 8-bit quantisation (nothing is rounded), and it
  moves an angle by < 3e-5 degrees in float32, so we skip it.
- saliency maxF (``eval_sal.py``): precision / recall pooled over the split at the official 19
  float32 thresholds ``arange(0.05, 1, 0.05)`` (prediction >= t), F with beta^2 = 0.3, max over t.
- boundary odsF / oisF: see :class:`BoundaryF`: **not** the official SEISM evaluator (sak's own
  tolerance test with SEISM's per-dataset maxDist), so comparable across sak runs, not with papers.

Which metric a task uses, on which dataset with which settings, is the task's declaration
(:mod:`sak.pipeline.tasks`); this module only holds the accumulators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError
from .base import IGNORE_INDEX


class StreamingMetric:
    """Base: named float64 sum tensors, reset/state/merge/sync."""

    _fields: dict[str, tuple[int, ...]] = {}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name, shape in self._fields.items():
            setattr(self, name, torch.zeros(shape, dtype=torch.float64))

    def state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self._fields}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name in self._fields:
            setattr(self, name, torch.as_tensor(state[name], dtype=torch.float64).cpu().clone())

    def merge(self, other: StreamingMetric | Mapping[str, torch.Tensor]) -> StreamingMetric:
        st = other.state() if isinstance(other, StreamingMetric) else other
        for name in self._fields:
            add = torch.as_tensor(st[name], dtype=torch.float64).cpu()
            if add.shape != getattr(self, name).shape:
                raise ConfigError(f"{type(self).__name__}.merge: {name} shapes differ ({tuple(add.shape)}); "
                                  "merge only metrics built with the same settings")
            setattr(self, name, getattr(self, name) + add)
        return self

    def sync(self, group: Any = None) -> None:
        """All-reduce (sum) the state over a torch.distributed group; no-op when not distributed."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
        for name in self._fields:
            t = getattr(self, name).to(device) if device is not None else getattr(self, name).clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            setattr(self, name, t.cpu())

    @staticmethod
    def _select(mask: Any, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if mask is None:
            return tensors
        m = torch.as_tensor(mask, dtype=torch.bool).flatten()
        return tuple(t[m.to(t.device)] for t in tensors)

    def _add(self, name: str, value: torch.Tensor | float) -> None:
        setattr(self, name, getattr(self, name) + torch.as_tensor(value, dtype=torch.float64).cpu())


def _class_map(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] if x.ndim == 4 else x


def _check_hw(pred: torch.Tensor, label: torch.Tensor, what: str) -> None:
    if pred.shape[-2:] != label.shape[-2:] and not (label.ndim == 4 and label.shape[1:3] == pred.shape[-2:]):
        raise ConfigError(f"{what}: prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size; "
                          "resize predictions to the label resolution first")


#: mIoU conventions: "official" (mean over every class, absent = 0) and "present" (sak's earlier mean over seen classes).
MIOU_CONVENTIONS = ("official", "present")


class MeanIoU(StreamingMetric):
    """Semantic / part segmentation mIoU (percent) and pixel accuracy from a confusion matrix.

    ``miou``: ``"official"`` (default) averages IoU over all ``num_classes`` classes with 0 for a
    class absent from both labels and predictions, as the official SemsegMeter; ``"present"``
    averages over the classes that occur. NaN while no labeled pixel has been seen.
    """

    confusion: torch.Tensor  # the state tensors of ``_fields``, set by reset()/load_state()/merge()

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX, miou: str = "official") -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.miou = check_miou(miou)
        self._fields = {"confusion": (num_classes, num_classes)}  # rows: label, cols: prediction
        super().__init__()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None:
        pred, label = self._select(mask, pred, label)
        _check_hw(pred, label, "MeanIoU")
        cls = pred.argmax(dim=1) if pred.is_floating_point() and pred.ndim == 4 else _class_map(pred)
        label = _class_map(label).to(cls.device).long()
        valid = label != self.ignore_index
        if bool(((label < 0) | (label >= self.num_classes))[valid].any()):
            raise ConfigError(f"MeanIoU: labels outside [0, {self.num_classes}) other than {self.ignore_index}")
        c = self.num_classes
        idx = label[valid] * c + cls[valid].long()
        self._add("confusion", torch.bincount(idx, minlength=c * c).reshape(c, c))

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class in [0, 1]; NaN for classes absent from labels and predictions."""
        tp = self.confusion.diag()
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp  # tp + fp + fn
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan)

    def compute(self) -> dict[str, float]:
        iou = self.per_class_iou()
        present = ~torch.isnan(iou)
        total = float(self.confusion.sum())
        if not total:
            miou = math.nan
        elif self.miou == "official":
            miou = float(torch.nan_to_num(iou, nan=0.0).mean())
        else:
            miou = float(iou[present].mean())
        acc = float(self.confusion.diag().sum()) / total if total else math.nan
        return {"mIoU": miou * 100.0, "pixAcc": acc * 100.0}


def check_miou(miou: str) -> str:
    if miou not in MIOU_CONVENTIONS:
        raise ConfigError(f"miou convention must be one of {', '.join(MIOU_CONVENTIONS)} (official: mean over every "
                          f"class, absent = 0; present: mean over the classes seen), got {miou!r}")
    return miou


class DepthRMSE(StreamingMetric):
    """Root mean squared depth error (meters), pooled over every valid pixel of the split."""

    _fields = {"sq_err": (), "count": ()}
    sq_err: torch.Tensor
    count: torch.Tensor

    def __init__(self, *, min_depth: float = 0.0, max_depth: float = 80.0) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth
        super().__init__()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None:
        pred, label = self._select(mask, pred, label)
        _check_hw(pred, label, "DepthRMSE")
        p = _class_map(pred).double().clamp(min=1e-9)  # official: clamp at 0 (utils.py), then <= 0 -> 1e-9
        g = _class_map(label).to(p.device).double()
        valid = torch.isfinite(g) & (g > self.min_depth) & (g < self.max_depth)
        self._add("sq_err", ((p - g)[valid] ** 2).sum())
        self._add("count", valid.sum())

    def compute(self) -> dict[str, float]:
        n = float(self.count)
        return {"rmse": math.sqrt(float(self.sq_err) / n) if n else math.nan}


def _unit(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp(min=1e-30), 0.0)


class NormalsAngle(StreamingMetric):
    """Mean angular error (degrees) over valid pixels, and the share within 11.25/22.5/30 degrees."""

    _fields = {"deg_sum": (), "count": (), "within": (3,)}
    deg_sum: torch.Tensor
    count: torch.Tensor
    within: torch.Tensor
    _limits = (11.25, 22.5, 30.0)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None:
        pred, label = self._select(mask, pred, label)
        if label.ndim == 4 and label.shape[1] != 3 and label.shape[-1] == 3:
            label = label.permute(0, 3, 1, 2)
        _check_hw(pred, label, "NormalsAngle")
        p, g = _unit(pred.double()), label.to(pred.device).double()
        valid = (g != 0).any(dim=1) & (g != IGNORE_INDEX).all(dim=1)
        g = _unit(g)
        deg = torch.rad2deg(2 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))[valid]
        self._add("deg_sum", deg.sum())
        self._add("count", valid.sum())
        self._add("within", torch.stack([(deg < lim).sum() for lim in self._limits]))

    def compute(self) -> dict[str, float]:
        n = float(self.count)
        if not n:
            return {"mean_angle": math.nan, "within_11.25": math.nan, "within_22.5": math.nan, "within_30": math.nan}
        w = (self.within / n * 100.0).tolist()
        return {"mean_angle": float(self.deg_sum) / n, "within_11.25": w[0], "within_22.5": w[1], "within_30": w[2]}


def _probabilities(pred: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """(B, 1, H, W) logits -> sigmoid, (B, 2, H, W) -> softmax[:, 1], (B, H, W) as is."""
    if pred.ndim == 4 and pred.shape[1] == 2:
        return torch.softmax(pred.float(), dim=1)[:, 1] if from_logits else pred[:, 1].float()
    p = _class_map(pred).float()
    return torch.sigmoid(p) if from_logits else p


def _count_at_least(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``[#(values >= t) for t in thresholds]`` via one histogram (thresholds ascending)."""
    idx = torch.bucketize(values, thresholds, right=True)  # number of thresholds <= value
    hist = torch.bincount(idx, minlength=thresholds.numel() + 1).double()
    return hist.flip(0).cumsum(0).flip(0)[1:]


def disk_max_pool(x_b1hw: torch.Tensor, radius: float) -> torch.Tensor:
    """Max of ``x`` over the Euclidean disk ``dx^2 + dy^2 <= radius^2`` around each pixel (outside = -inf)."""
    r = int(math.floor(radius + 1e-9))
    if r <= 0:
        return x_b1hw
    h = x_b1hw.shape[-2]
    rows: dict[int, torch.Tensor] = {}
    out = torch.full_like(x_b1hw, -math.inf)
    for dy in range(-r, r + 1):
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        if half not in rows:
            rows[half] = F.max_pool2d(x_b1hw, kernel_size=(1, 2 * half + 1), stride=1, padding=(0, half)) if half else x_b1hw
        src = rows[half]
        # out[y] = max(out[y], src[y + dy]) where 0 <= y + dy < h
        if dy >= 0:
            out[..., : h - dy, :] = torch.maximum(out[..., : h - dy, :], src[..., dy:, :])
        else:
            out[..., -dy:, :] = torch.maximum(out[..., -dy:, :], src[..., : h + dy, :])
    return out


class BoundaryF(StreamingMetric):
    """Boundary detection odsF / oisF (percent) with a distance tolerance. **Not the SEISM evaluator.**

    A predicted edge pixel (probability >= t) is a hit when a ground-truth edge pixel lies
    within ``max_dist * image diagonal`` (Euclidean); a ground-truth pixel is recalled when a
    predicted pixel lies within that distance. Counts pool over the split per threshold
    (ODS: one threshold for the split; OIS: the best threshold per image).

    The paper's odsF comes offline from the authors' MATLAB SEISM fork (official ``README.md``,
    ``evaluation/edge_evaluation.py``): predictions saved as 8-bit ``sigmoid * 255`` pngs, MATLAB
    NMS, then SEISM with ``maxDist`` 0.011 (NYUD) / 0.0075 (PASCAL). We take the same per-dataset
    tolerance (the edge task passes it per dataset format) but not the rest: SEISM matches pixels
    one to one (bipartite ``correspondPixels``), so a thick prediction next to a thin boundary earns
    one hit per boundary pixel, while this tolerance-disk test counts every nearby predicted pixel
    as a hit (optimistic precision for thick edges); SEISM thins the binarized predictions after
    NMS, we do neither; SEISM binarizes 8-bit images, we threshold float probabilities. So our
    odsF is comparable across sak runs, **not** with published numbers. Defaults: ``max_dist``
    0.011, 99 thresholds 0.01..0.99.
    """

    cnt_p: torch.Tensor  # the state tensors of ``_fields``
    sum_p: torch.Tensor
    cnt_r: torch.Tensor
    sum_r: torch.Tensor
    ois: torch.Tensor

    def __init__(self, *, max_dist: float = 0.011, num_thresholds: int = 99,
                 ignore_index: int = IGNORE_INDEX, from_logits: bool = True) -> None:
        self.max_dist, self.ignore_index, self.from_logits = max_dist, ignore_index, from_logits
        self.thresholds = torch.linspace(0.01, 0.99, num_thresholds, dtype=torch.float64).float()
        t = num_thresholds
        self._fields = {"cnt_p": (t,), "sum_p": (t,), "cnt_r": (t,), "sum_r": (), "ois": (4,)}
        super().__init__()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None:
        pred, label = self._select(mask, pred, label)
        _check_hw(pred, label, "BoundaryF")
        prob = _probabilities(pred, self.from_logits)
        label = _class_map(label).to(prob.device)
        h, w = label.shape[-2:]
        radius = self.max_dist * math.hypot(h, w)
        thr = self.thresholds.to(prob.device)
        for p, y in zip(prob, label, strict=True):
            valid = y != self.ignore_index
            gt = valid & (y > 0.5)
            p = torch.where(valid, p, -math.inf)  # ignored pixels never count as predictions
            near_gt = disk_max_pool(gt[None, None].float(), radius)[0, 0] > 0
            best_near = disk_max_pool(p[None, None], radius)[0, 0]
            cnt_p = _count_at_least(p[valid & near_gt], thr)
            sum_p = _count_at_least(p[valid], thr)
            cnt_r = _count_at_least(best_near[gt], thr)
            sum_r = float(gt.sum())
            self._add("cnt_p", cnt_p)
            self._add("sum_p", sum_p)
            self._add("cnt_r", cnt_r)
            self._add("sum_r", sum_r)
            f = _fmeasure(cnt_p, sum_p, cnt_r, torch.full_like(cnt_r, sum_r))
            j = int(torch.argmax(f))
            self._add("ois", torch.tensor([cnt_p[j], sum_p[j], cnt_r[j], sum_r], dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        f = _fmeasure(self.cnt_p, self.sum_p, self.cnt_r, self.sum_r.expand_as(self.cnt_r))
        j = int(torch.argmax(f))
        ois = float(_fmeasure(*self.ois.unbind()))
        return {"odsF": float(f[j]) * 100.0, "ods_threshold": float(self.thresholds[j]), "oisF": ois * 100.0}


def _fmeasure(cnt_p: torch.Tensor, sum_p: torch.Tensor, cnt_r: torch.Tensor, sum_r: torch.Tensor) -> torch.Tensor:
    """BSDS convention: P = cntP / sumP (0 when sumP = 0), R likewise, F = 2PR / (P + R) (0 when both 0)."""
    p = cnt_p / torch.where(sum_p > 0, sum_p, 1.0)
    r = cnt_r / torch.where(sum_r > 0, sum_r, 1.0)
    s = p + r
    return 2 * p * r / torch.where(s > 0, s, 1.0)


class SaliencyMaxF(StreamingMetric):
    """Saliency maxF (percent): pooled precision/recall at the official thresholds 0.05..0.95, beta^2 = 0.3."""

    tp: torch.Tensor  # the state tensors of ``_fields``
    pred_pos: torch.Tensor
    actual_pos: torch.Tensor

    def __init__(self, *, beta2: float = 0.3, ignore_index: int = IGNORE_INDEX, from_logits: bool = True) -> None:
        self.beta2, self.ignore_index, self.from_logits = beta2, ignore_index, from_logits
        self.thresholds = torch.arange(0.05, 1.0, 0.05, dtype=torch.float32)  # the official float32 values
        self._fields = {"tp": (19,), "pred_pos": (19,), "actual_pos": ()}
        super().__init__()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None:
        pred, label = self._select(mask, pred, label)
        _check_hw(pred, label, "SaliencyMaxF")
        prob = _probabilities(pred, self.from_logits)
        y = _class_map(label).to(prob.device)
        valid = y != self.ignore_index
        pos = valid & (y > 0.5)
        thr = self.thresholds.to(prob.device)
        self._add("tp", _count_at_least(prob[pos], thr))
        self._add("pred_pos", _count_at_least(prob[valid], thr))
        self._add("actual_pos", pos.sum())

    def compute(self) -> dict[str, float]:
        eps = 1e-8  # as the official SaliencyMeter
        precision = self.tp / (self.pred_pos + eps)
        recall = self.tp / (self.actual_pos + eps)
        f = (1 + self.beta2) * precision * recall / (self.beta2 * precision + recall + eps)
        return {"maxF": float(torch.nan_to_num(f, nan=0.0).max()) * 100.0}
