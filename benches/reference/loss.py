"""percept's target assigner (crates/model/src/assign.rs) and multi-task loss
(crates/model/src/loss.rs), ported to NumPy (host side, as percept does it) and PyTorch.

This is YOLOv8's detection recipe (Ultralytics YOLOv8, Jocher, Chaurasia and Qiu, 2023: its
TaskAlignedAssigner, BCE, CIoU and DFL losses), with percept's additions noted below.

Assignment: task-aligned (TOOD, Feng et al., ICCV 2021), run per batch *after* the forward
pass on the detached predictions (class scores `sigmoid(class_logits)` and boxes decoded from
the distances). For each valid ground-truth box the candidates are the anchor points of every
level strictly inside it (or, when none is, the nearest stride-8 point: percept's addition,
YOLOv8 leaves such boxes unassigned); each candidate's alignment is `score^ALPHA * IoU^BETA`
(score of the box's class, IoU of the predicted box with it); the `TOP_K` best (ties: lower
anchor index) are its positives; a point chosen by several boxes keeps the one its prediction
overlaps most (ties: the earlier box). A positive's quality is `alignment / max alignment *
max IoU` over its box's final positives: its class target (soft) and the weight of its box
losses. Points inside ignore regions and all points of images without detection labels get
classification weight 0 (a positive keeps weight 1).

Loss, normalised by the sum of all qualities (at least 1):
- classification: binary cross-entropy with the soft quality targets, every anchor and class
  (YOLOv8's quality-aware BCE, no focal term);
- box_iou: `1 - CIoU` (Zheng et al., AAAI 2020; the aspect-ratio weight alpha detached)
  weighted by quality;
- dfl: distribution focal loss (Li et al., NeurIPS 2020, "Generalized Focal Loss") on the
  per-side distance distributions, mean over the four sides, weighted by quality;
- drivable, lanes: BCE (mean over pixels) + soft Dice per image, over the labelled images.

The assigner computes in float32 as percept does in f32, with the same operation order, so its
positives, weights and boxes are bit-identical; its qualities may differ from percept's by an
ulp where `powf` rounds differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STRIDES = (8, 16, 32)
REG_BINS = 16  # distance bins per box side (YOLOv8's reg_max)
TOP_K = 10  # positives per box, at most
ALPHA = 0.5  # exponent of the class score in the alignment metric
BETA = 6.0  # exponent of the IoU in the alignment metric
IOU_EPS = np.float32(1e-7)
QUALITY_EPS = np.float32(1e-9)
EPS = 1e-7
DFL_MAX = REG_BINS - 1 - 0.01  # largest DFL target, in strides

# percept's LossWeights::default() (the run config's [loss]).
DEFAULT_WEIGHTS = {
    "classification": 1.0,
    "box_iou": 5.0,
    "dfl": 1.0,
    "drivable": 1.0,
    "lanes": 1.0,
}
LOSS_TERMS = ("classification", "box_iou", "dfl", "drivable", "lanes")


def anchor_points(height: int, width: int) -> np.ndarray:
    """`[anchors, 3]` float32 (x, y, stride), level by level, row-major within a level."""
    rows = []
    for s in STRIDES:
        gy, gx = np.meshgrid(
            np.arange(height // s, dtype=np.float32),
            np.arange(width // s, dtype=np.float32),
            indexing="ij",
        )
        sf = np.float32(s)
        pts = np.stack([(gx + 0.5) * sf, (gy + 0.5) * sf, np.full_like(gx, sf)], -1)
        rows.append(pts.reshape(-1, 3))
    return np.concatenate(rows).astype(np.float32)


@dataclass
class DetectionTargets:
    classes: np.ndarray  # [b, anchors, classes]: a positive's quality at its class, else 0
    boxes: np.ndarray  # [b, anchors, 4]: a positive's box, else 0
    positive: np.ndarray  # [b, anchors]: 1 or 0
    quality: np.ndarray  # [b, anchors]: a positive's quality, else 0
    weight: np.ndarray  # [b, anchors]: classification weight, 1 or 0
    num_positive: int

    def normaliser(self) -> float:
        """The loss normaliser: the sum of all qualities, at least 1 (YOLOv8's
        `target_scores_sum`), summed in float32 in anchor order as percept does."""
        q = self.quality.reshape(-1)
        # np.add.accumulate adds one element after the other (np.sum adds pairwise).
        total = np.add.accumulate(q, dtype=np.float32)[-1] if q.size else np.float32(0)
        return float(max(total, np.float32(1)))


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float32 IoU of boxes `pred [n, 4]` with one box `gt [4]` -> `[n]`, in percept's
    `box_iou` operation order; a box with negative sides counts as empty."""
    pred = pred.astype(np.float32, copy=False)
    gt = np.asarray(gt, np.float32)
    zero = np.float32(0)
    area_p = np.maximum(pred[:, 2] - pred[:, 0], zero) * np.maximum(pred[:, 3] - pred[:, 1], zero)
    area_g = np.maximum(gt[2] - gt[0], zero) * np.maximum(gt[3] - gt[1], zero)
    iw = np.maximum(np.minimum(pred[:, 2], gt[2]) - np.maximum(pred[:, 0], gt[0]), zero)
    ih = np.maximum(np.minimum(pred[:, 3], gt[3]) - np.maximum(pred[:, 1], gt[1]), zero)
    inter = iw * ih
    return inter / (area_p + area_g - inter + IOU_EPS)


def _pow_f32(x: np.ndarray, e: float) -> np.ndarray:
    # libm's powf rounds (almost always) correctly; the float64 power rounded to float32 is
    # the correctly rounded value (NumPy's own float32 power may use SIMD approximations).
    return np.power(x.astype(np.float64), e).astype(np.float32)


def candidates(anchors: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """Anchor indices strictly inside `box` (x1, y1, x2, y2), every level; when none, the
    nearest stride-8 point."""
    x1, y1, x2, y2 = box
    ax, ay = anchors[:, 0], anchors[:, 1]
    inside = np.nonzero((ax > x1) & (ax < x2) & (ay > y1) & (ay < y2))[0]
    if len(inside):
        return inside
    stride = np.float32(STRIDES[0])
    gw, gh = width // STRIDES[0], height // STRIDES[0]

    def cell(v, cells):
        return min(int(max(np.floor(v / stride), np.float32(0))), cells - 1)

    cx, cy = (x1 + x2) / np.float32(2), (y1 + y2) / np.float32(2)
    return np.array([cell(cy, gh) * gw + cell(cx, gw)], np.int64)


def assign_targets(
    height, width, boxes, ignore, labelled, num_classes, scores, pred_boxes
) -> DetectionTargets:
    """percept's `assign_targets`. `boxes`: per image a float32 `[n, 5]` (class, x1, y1, x2,
    y2); `ignore`: per image a float32 `[m, 4]`; `labelled`: per image a bool; `scores`:
    `[b, anchors, classes]` detached sigmoid class scores and `pred_boxes`: `[b, anchors, 4]`
    detached predicted boxes (xyxy, input pixels), both float32 of the same batch's forward."""
    anchors = anchor_points(height, width)
    n = len(anchors)
    batch = len(boxes)
    scores = np.asarray(scores, np.float32)
    pred_boxes = np.asarray(pred_boxes, np.float32)
    if scores.shape != (batch, n, num_classes):
        raise ValueError(f"scores {scores.shape}, expected {(batch, n, num_classes)}")
    if pred_boxes.shape != (batch, n, 4):
        raise ValueError(f"predicted boxes {pred_boxes.shape}, expected {(batch, n, 4)}")
    classes = np.zeros((batch, n, num_classes), np.float32)
    tboxes = np.zeros((batch, n, 4), np.float32)
    positive = np.zeros((batch, n), np.float32)
    quality = np.zeros((batch, n), np.float32)
    weight = np.ones((batch, n), np.float32)
    num_positive = 0
    ax, ay = anchors[:, 0], anchors[:, 1]
    for b in range(batch):
        if not labelled[b]:
            weight[b] = 0.0
            continue
        for r in np.asarray(ignore[b], np.float32).reshape(-1, 4):
            inside = (ax >= r[0]) & (ax <= r[2]) & (ay >= r[1]) & (ay <= r[3])
            weight[b, inside] = 0.0
        rows = np.asarray(boxes[b], np.float32).reshape(-1, 5)
        # Per anchor: IoU, box index (-1: none) and alignment of the box it is assigned to.
        owner_iou = np.zeros(n, np.float32)
        owner = np.full(n, -1, np.int64)
        owner_align = np.zeros(n, np.float32)
        for g, row in enumerate(rows):
            cls = int(row[0])
            x1, y1, x2, y2 = row[1:5]
            if x2 <= x1 or y2 <= y1 or cls >= num_classes:
                continue
            cand = candidates(anchors, (x1, y1, x2, y2), height, width)
            iou = box_iou(pred_boxes[b, cand], row[1:5])
            align = np.sqrt(scores[b, cand, cls]) * _pow_f32(iou, BETA)
            # Descending alignment, ties in anchor order (cand is ascending).
            order = np.argsort(-align, kind="stable")[:TOP_K]
            for i in order:
                a = cand[i]
                if owner[a] < 0 or iou[i] > owner_iou[a]:
                    owner_iou[a], owner[a], owner_align[a] = iou[i], g, align[i]
        pos = np.nonzero(owner >= 0)[0]
        if not len(pos):
            continue
        g_of = owner[pos]
        best_align = np.zeros(len(rows), np.float32)
        best_iou = np.zeros(len(rows), np.float32)
        np.maximum.at(best_align, g_of, owner_align[pos])
        np.maximum.at(best_iou, g_of, owner_iou[pos])
        q = owner_align[pos] / (best_align[g_of] + QUALITY_EPS) * best_iou[g_of]
        positive[b, pos] = 1.0
        quality[b, pos] = q
        weight[b, pos] = 1.0
        classes[b, pos, rows[g_of, 0].astype(np.int64)] = q
        tboxes[b, pos] = rows[g_of, 1:5]
        num_positive += len(pos)
    return DetectionTargets(classes, tboxes, positive, quality, weight, num_positive)


def predictions_for_assignment(outputs, centres):
    """The detached predictions the assigner ranks, on the host as float32: `(scores
    [b, n, classes], boxes [b, n, 4])`."""
    with torch.no_grad():
        scores = torch.sigmoid(outputs["class_logits"].float())
        boxes = distances_to_boxes(outputs["distances"].float(), centres.float())
    return scores.cpu().numpy(), boxes.cpu().numpy()


# --- Loss ---------------------------------------------------------------------------------


def distances_to_boxes(distances, centres):
    """`distances [b, n, 4]` (l, t, r, b), `centres [n, 2]` -> xyxy `[b, n, 4]`."""
    c = centres.to(distances.dtype).repeat(1, 2).unsqueeze(0)
    signs = distances.new_tensor([-1.0, -1.0, 1.0, 1.0])
    return c + distances * signs


def complete_iou(pred, gt):
    """CIoU of paired boxes `[..., 4]` -> `[...]`: `IoU - rho^2 / c^2 - alpha * v`, alpha
    detached; predicted widths and heights clamped at 0."""
    px1, py1, px2, py2 = pred.unbind(-1)
    gx1, gy1, gx2, gy2 = gt.unbind(-1)
    wp, hp = (px2 - px1).clamp_min(0), (py2 - py1).clamp_min(0)
    wg, hg = gx2 - gx1, gy2 - gy1
    iw = (torch.minimum(px2, gx2) - torch.maximum(px1, gx1)).clamp_min(0)
    ih = (torch.minimum(py2, gy2) - torch.maximum(py1, gy1)).clamp_min(0)
    inter = iw * ih
    union = wp * hp + wg * hg - inter
    iou = inter / (union + EPS)
    cw = torch.maximum(px2, gx2) - torch.minimum(px1, gx1)
    ch = torch.maximum(py2, gy2) - torch.minimum(py1, gy1)
    c2 = cw * cw + ch * ch + EPS
    dx = (px1 + px2 - gx1 - gx2) * 0.5
    dy = (py1 + py2 - gy1 - gy2) * 0.5
    rho2 = dx * dx + dy * dy
    v = (4.0 / math.pi**2) * (torch.atan(wg / (hg + EPS)) - torch.atan(wp / (hp + EPS))).pow(2)
    with torch.no_grad():
        alpha = v / (1.0 - iou + v + EPS)
    return iou - rho2 / c2 - alpha * v


def dfl_targets(gt_boxes, anchors):
    """Per side (left, top, right, bottom) the distance from the anchor centre to the box edge
    in strides, clamped to `[0, REG_BINS - 1 - 0.01]`: `gt_boxes [b, n, 4]`, `anchors [n, 3]`
    (x, y, stride) -> `[b, n, 4]`."""
    ax, ay, stride = (anchors[:, i].to(gt_boxes.dtype) for i in range(3))
    x1, y1, x2, y2 = gt_boxes.unbind(-1)
    d = torch.stack([ax - x1, ay - y1, x2 - ax, y2 - ay], -1)
    return (d / stride[None, :, None]).clamp(0.0, DFL_MAX)


def distribution_focal_loss(box_logits, t):
    """DFL per anchor, mean over the four sides: `box_logits [b, n, 4 * REG_BINS]`, `t
    [b, n, 4]` targets in strides -> `[b, n]`. The target spreads over the two bins around
    `t`: `l + 1 - t` at `l = floor(t)`, `t - l` at `l + 1`."""
    b, n, _ = box_logits.shape
    log_p = F.log_softmax(box_logits.reshape(b, n, 4, REG_BINS), -1)
    lower = t.detach().floor()
    wl = lower + 1.0 - t
    wr = t - lower
    li = lower.long()
    soft = F.one_hot(li, REG_BINS).to(t.dtype) * wl.unsqueeze(-1) + F.one_hot(
        li + 1, REG_BINS
    ).to(t.dtype) * wr.unsqueeze(-1)
    ce = -(soft * log_p).sum(-1)
    return ce.mean(-1)


def segmentation_loss(logits, targets, labelled):
    """BCE (mean over pixels) + 1 - soft Dice per image, averaged over labelled images."""
    b = logits.shape[0]
    x = logits.reshape(b, -1)
    t = targets.reshape(b, -1)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1)
    p = torch.sigmoid(x)
    dice = (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)
    per_image = bce - dice + 1.0
    return (per_image * labelled).sum() / labelled.sum().clamp_min(1.0)


class TargetTensors:
    """Assigned targets on the device, as percept uploads them each step."""

    def __init__(self, t: DetectionTargets, device):
        self.classes = torch.from_numpy(t.classes).to(device)
        self.boxes = torch.from_numpy(t.boxes).to(device)
        self.positive = torch.from_numpy(t.positive).to(device)
        self.quality = torch.from_numpy(t.quality).to(device)
        self.weight = torch.from_numpy(t.weight).to(device).unsqueeze(-1)
        self.num_positive = t.num_positive
        self.norm = t.normaliser()

    def to(self, dtype):
        for k in ("classes", "boxes", "positive", "quality", "weight"):
            setattr(self, k, getattr(self, k).to(dtype))
        return self


def multitask_loss(outputs, targets: TargetTensors | None, seg, anchors, weights=None):
    """percept's `multitask_loss`: returns `{total, classification, box_iou, dfl, drivable,
    lanes}` (terms of switched-off tasks absent). `seg`: dict with `drivable`, `lanes`
    `[b, h, w]` and `drivable_labelled`, `lanes_labelled` `[b]`; `anchors`: `[anchors, 3]`
    anchor points (x, y, stride) on the device."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    parts = {}
    if "class_logits" in outputs and targets is not None:
        norm = targets.norm
        bce = F.binary_cross_entropy_with_logits(
            outputs["class_logits"], targets.classes, reduction="none"
        )
        parts["classification"] = (bce * targets.weight).sum() / norm
        boxes = distances_to_boxes(outputs["distances"], anchors[:, :2])
        ciou = complete_iou(boxes, targets.boxes)
        parts["box_iou"] = ((1.0 - ciou) * targets.quality).sum() / norm
        t = dfl_targets(targets.boxes, anchors)
        dfl = distribution_focal_loss(outputs["box_logits"], t)
        parts["dfl"] = (dfl * targets.quality).sum() / norm
    for task in ("drivable", "lanes"):
        if task in outputs:
            parts[task] = segmentation_loss(
                outputs[task], seg[task], seg[f"{task}_labelled"]
            )
    total = None
    for name in LOSS_TERMS:
        if name in parts:
            term = parts[name] * weights[name]
            total = term if total is None else total + term
    parts["total"] = total
    return parts
