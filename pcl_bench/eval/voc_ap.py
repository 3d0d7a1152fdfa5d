"""PASCAL VOC average precision: the interpolated AP, ranking AP for classification, AP for detection.

All functions return AP in [0, 1]; callers multiply by 100 for tables.

- All-point AP (VOC2010+, and the AP of PCL's ``eval_svm_voc.py`` and Goyal et al.'s ``svm_helper``): pad
  recall with 0 and 1 and precision with 0 and 0, replace precision by its running max from the right (the
  envelope), and sum ``delta recall * precision`` where recall changes. It is not sklearn's
  ``average_precision_score``, which does not take the envelope.
- 11-point AP (VOC2007 detection): the mean over t = 0, 0.1, ..., 1 of the max precision at recall >= t.

Ranking order: scores descending; tied scores keep their input order (a stable sort). The references use an
unstable ``np.argsort``, so their order among ties is unspecified; any fixed order is as faithful.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from ..runtime.errors import UsageError


def average_precision(recall: np.ndarray, precision: np.ndarray, eleven_point: bool = False) -> float:
    """AP from the cumulative recall and precision (M,) of a ranked list (M may be 0, giving 0)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise UsageError(f"recall {recall.shape} and precision {precision.shape} must be 1-d arrays of one "
                         "length; pass the cumulative values of one ranked list")
    if eleven_point:
        # t = i / 10 exactly (as the MATLAB devkit's 0:0.1:1), so a recall of exactly 0.3 counts for t = 0.3;
        # summing 0.1 steps would give 0.30000000000000004 and skip it.
        points = [precision[recall >= i / 10].max(initial=0.0) for i in range(11)]
        return float(np.mean(points))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def classification_ap(scores: np.ndarray, labels: np.ndarray, ignore_difficult: bool = False,
                      eleven_point: bool = False) -> float:
    """Ranking AP of one class from scores (N,) and VOC labels (N,) in {1, -1, 0} (0 = difficult).

    ``ignore_difficult=False`` (PCL ``eval_svm_voc.py``): label 0 counts as a negative.
    ``ignore_difficult=True`` (Goyal et al. 2019 / VISSL): label-0 images are dropped before ranking.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise UsageError(f"scores {scores.shape} and labels {labels.shape} must be 1-d arrays of one length")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise UsageError("labels must be VOC labels in {1, -1, 0} (present, absent, difficult)")
    if ignore_difficult:
        scores, labels = scores[labels != 0], labels[labels != 0]
    positive = labels > 0
    if not positive.any():
        raise UsageError("AP is undefined for a class without positive images; drop the class or fix labels")
    hits = positive[np.argsort(-scores, kind="stable")]
    tp = np.cumsum(hits)
    return average_precision(tp / tp[-1], tp / np.arange(1, len(tp) + 1), eleven_point)


def box_iou_inclusive(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (G,) of one box (4,) with boxes (G, 4), all (x1, y1, x2, y2) inclusive pixel indices.

    VOC convention: a box spans x2 - x1 + 1 pixels, so [1, 1, 10, 10] has area 100.
    """
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1, 0, None)
    inter = iw * ih
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / (area + areas - inter)


def detection_ap(detections: tuple[Sequence[Hashable], np.ndarray, np.ndarray],
                 ground_truth: Mapping[Hashable, tuple[np.ndarray, np.ndarray]],
                 iou: float = 0.5, eleven_point: bool = True) -> float:
    """VOC detection AP of one class.

    Args:
        detections: ``(image_ids (M,), scores (M,), boxes (M, 4))``.
        ground_truth: ``{image_id: (boxes (G, 4), difficult (G,) bool)}``; an image missing here has no
            object of this class, so its detections are false positives.
        iou: match threshold; a detection matches if its IoU >= ``iou`` (MATLAB devkit ``VOCevaldet``).
        eleven_point: True (default) for the VOC2007 metric, False for all-point AP.

    Boxes are ``(x1, y1, x2, y2)`` inclusive pixel indices as in VOC XML (1-based; 0-based gives the same
    IoU), with area ``(x2 - x1 + 1) * (y2 - y1 + 1)``. Convert exclusive/continuous boxes (torchvision) first
    by subtracting 1 from x2 and y2.

    Matching (devkit rules): detections are taken by descending score; each one goes to the gt of highest
    IoU in its image, matched or not. Below ``iou`` -> false positive (FP); a difficult gt -> ignored
    (neither TP nor FP); a gt already matched -> FP (duplicate); otherwise TP. The number of positives
    counts non-difficult gts only, so a missed gt lowers recall.
    """
    image_ids, scores, boxes = detections
    scores = np.asarray(scores, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not (len(image_ids) == len(scores) == len(boxes)):
        raise UsageError(f"detections hold {len(image_ids)} image ids, {len(scores)} scores and {len(boxes)} "
                         "boxes; pass one of each per detection")
    gts = {img: (np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(d, dtype=bool))
           for img, (b, d) in ground_truth.items()}
    npos = sum(int((~difficult).sum()) for _, difficult in gts.values())
    if npos == 0:
        raise UsageError("detection AP is undefined without non-difficult ground-truth boxes for the class")
    matched = {img: np.zeros(len(difficult), dtype=bool) for img, (_, difficult) in gts.items()}
    outcome = []  # +1 TP, 0 FP; ignored detections are left out (they change neither recall nor precision)
    for d in np.argsort(-scores, kind="stable"):
        gt_boxes, difficult = gts.get(image_ids[d], (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(gt_boxes) == 0:
            outcome.append(0)
            continue
        overlaps = box_iou_inclusive(boxes[d], gt_boxes)
        j = int(np.argmax(overlaps))
        if overlaps[j] < iou:
            outcome.append(0)
        elif difficult[j]:
            continue
        elif matched[image_ids[d]][j]:
            outcome.append(0)
        else:
            matched[image_ids[d]][j] = True
            outcome.append(1)
    tp = np.cumsum(outcome, dtype=np.float64)
    return average_precision(tp / npos, tp / np.arange(1, len(tp) + 1), eleven_point)


def mean_ap(per_class: Mapping[str, float]) -> float:
    """Unweighted mean of per-class APs."""
    if not per_class:
        raise UsageError("mean AP needs at least one class")
    return float(np.mean(list(per_class.values())))
