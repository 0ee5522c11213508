"""percept's target assigner (crates/model/src/assign.rs) and multi-task loss
(crates/model/src/loss.rs), ported to NumPy (host side, as percept does it) and PyTorch.

The assigner computes in float32 as percept does in f32, so its targets are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STRIDES = (8, 16, 32)
CENTRE_RADIUS = np.float32(2.5)
SCALE_PER_STRIDE = np.float32(5.0)
FOCAL_ALPHA = 0.25
EPS = 1e-7

# percept's LossWeights::default() (the run config's [loss]).
DEFAULT_WEIGHTS = {"classification": 1.0, "box_iou": 2.5, "drivable": 1.0, "lanes": 1.0}


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
    classes: np.ndarray  # [b, anchors, classes]
    boxes: np.ndarray  # [b, anchors, 4]
    positive: np.ndarray  # [b, anchors]
    weight: np.ndarray  # [b, anchors]
    num_positive: int


def level_for(box: np.ndarray) -> int:
    side = max(box[2] - box[0], box[3] - box[1])
    for level, s in enumerate(STRIDES):
        if side <= SCALE_PER_STRIDE * np.float32(s):
            return level
    return len(STRIDES) - 1


def assign_targets(height, width, boxes, ignore, labelled, num_classes) -> DetectionTargets:
    """percept's `assign_targets`. `boxes`: per image a float32 `[n, 5]` (class, x1, y1, x2,
    y2); `ignore`: per image a float32 `[m, 4]`; `labelled`: per image a bool."""
    anchors = anchor_points(height, width)
    n = len(anchors)
    batch = len(boxes)
    level_start = [0, 0, 0]
    for lv in range(1, 3):
        prev = STRIDES[lv - 1]
        level_start[lv] = level_start[lv - 1] + (height // prev) * (width // prev)
    classes = np.zeros((batch, n, num_classes), np.float32)
    tboxes = np.zeros((batch, n, 4), np.float32)
    positive = np.zeros((batch, n), np.float32)
    weight = np.ones((batch, n), np.float32)
    num_positive = 0
    ax, ay = anchors[:, 0], anchors[:, 1]
    for b in range(batch):
        if not labelled[b]:
            weight[b] = 0.0
            continue
        for r in ignore[b]:
            inside = (ax >= r[0]) & (ax <= r[2]) & (ay >= r[1]) & (ay <= r[3])
            weight[b, inside] = 0.0
        # Per anchor: (area, box index) of its owner; inf = none.
        owner_area = np.full(n, np.inf, np.float32)
        owner = np.full(n, -1, np.int64)
        for g, row in enumerate(boxes[b]):
            cls = int(row[0])
            x1, y1, x2, y2 = (np.float32(v) for v in row[1:5])
            if x2 <= x1 or y2 <= y1 or cls >= num_classes:
                continue
            level = level_for(np.array([x1, y1, x2, y2], np.float32))
            s = STRIDES[level]
            stride = np.float32(s)
            gw, gh = width // s, height // s
            cx, cy = (x1 + x2) / np.float32(2), (y1 + y2) / np.float32(2)
            radius = CENTRE_RADIUS * stride

            def cell(v, cells):
                return min(int(max(np.floor(v / stride), np.float32(0))), cells - 1)

            nearest = (cell(cx, gw), cell(cy, gh))
            area = (x2 - x1) * (y2 - y1)
            gx = np.arange(cell(cx - radius, gw), cell(cx + radius, gw) + 1)
            gy = np.arange(cell(cy - radius, gh), cell(cy + radius, gh) + 1)
            idx = (level_start[level] + gy[:, None] * gw + gx[None, :]).reshape(-1)
            px, py = ax[idx], ay[idx]
            inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
            central = (np.abs(px - cx) < radius) & (np.abs(py - cy) < radius)
            is_nearest = (
                (np.repeat(gx[None, :], len(gy), 0).reshape(-1) == nearest[0])
                & (np.repeat(gy[:, None], len(gx), 1).reshape(-1) == nearest[1])
            )
            take = ((inside & central) | is_nearest) & (area < owner_area[idx])
            owner_area[idx[take]] = area
            owner[idx[take]] = g
        pos = np.nonzero(owner >= 0)[0]
        if len(pos):
            rows = np.asarray(boxes[b], np.float32)[owner[pos]]
            positive[b, pos] = 1.0
            weight[b, pos] = 1.0
            classes[b, pos, rows[:, 0].astype(np.int64)] = 1.0
            tboxes[b, pos] = rows[:, 1:5]
            num_positive += len(pos)
    return DetectionTargets(classes, tboxes, positive, weight, num_positive)


# --- Loss ---------------------------------------------------------------------------------


def focal_loss(logits, targets):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    one_minus_pt = p + targets - 2.0 * p * targets
    alpha = targets * (2.0 * FOCAL_ALPHA - 1.0) + (1.0 - FOCAL_ALPHA)
    return alpha * one_minus_pt.pow(2) * ce


def distances_to_boxes(distances, centres):
    """`distances [b, n, 4]` (l, t, r, b), `centres [n, 2]` -> xyxy `[b, n, 4]`."""
    c = centres.repeat(1, 2).unsqueeze(0)
    signs = distances.new_tensor([-1.0, -1.0, 1.0, 1.0])
    return c + distances * signs


def generalized_iou(a, b):
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    area_a = (ax2 - ax1).clamp_min(0) * (ay2 - ay1).clamp_min(0)
    area_b = (bx2 - bx1).clamp_min(0) * (by2 - by1).clamp_min(0)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_min(0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_min(0)
    inter = iw * ih
    union = area_a + area_b - inter
    enclosing = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)) * (
        torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    )
    return inter / (union + EPS) - (enclosing - union) / (enclosing + EPS)


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
        self.weight = torch.from_numpy(t.weight).to(device).unsqueeze(-1)
        self.num_positive = t.num_positive


def multitask_loss(outputs, targets: TargetTensors | None, seg, centres, weights=None):
    """percept's `multitask_loss`: returns `{total, classification, box_iou, drivable,
    lanes}` (terms of switched-off tasks absent). `seg`: dict with `drivable`, `lanes`
    `[b, h, w]` and `drivable_labelled`, `lanes_labelled` `[b]`; `centres`: `[anchors, 2]`
    anchor centres on the device."""
    weights = weights or DEFAULT_WEIGHTS
    parts = {}
    if "class_logits" in outputs and targets is not None:
        norm = float(max(targets.num_positive, 1))
        focal = focal_loss(outputs["class_logits"], targets.classes) * targets.weight
        parts["classification"] = focal.sum() / norm
        boxes = distances_to_boxes(outputs["distances"], centres)
        giou = generalized_iou(boxes, targets.boxes)
        parts["box_iou"] = ((1.0 - giou) * targets.positive).sum() / norm
    for task in ("drivable", "lanes"):
        if task in outputs:
            parts[task] = segmentation_loss(
                outputs[task], seg[task], seg[f"{task}_labelled"]
            )
    total = None
    for name in ("classification", "box_iou", "drivable", "lanes"):
        if name in parts:
            term = parts[name] * weights[name]
            total = term if total is None else total + term
    parts["total"] = total
    return parts
