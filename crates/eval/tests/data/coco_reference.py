"""Writes coco_reference.json: a detection test set (boxes, scores, ignore regions) and the
numbers pycocotools gives for it, which percept's DetectionEvaluator must reproduce.

Run from this directory, once (the output is checked in):

    pip install pycocotools==2.0.11 numpy
    python3 coco_reference.py

Ignore regions are class-agnostic in percept; pycocotools gets each one as a crowd box
(iscrowd=1) of every category, which is what percept's rule means. Coordinates are multiples
of 0.25 and scores distinct multiples of 1e-4, so f32 and f64 see the same boxes and order.
"""

import json
import random

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CLASSES = 3
IMAGES = 14
W, H = 200.0, 150.0
rng = random.Random(20261123)


def q(v):
    """Rounds to a multiple of 0.25 inside the image."""
    return round(v * 4) / 4


def random_box(min_side=6, max_side=70):
    w, h = rng.uniform(min_side, max_side), rng.uniform(min_side, max_side)
    x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
    return [q(x), q(y), q(x + w), q(y + h)]


def jitter(box, amount):
    w, h = box[2] - box[0], box[3] - box[1]
    out = [
        box[0] + rng.gauss(0, amount * w),
        box[1] + rng.gauss(0, amount * h),
        box[2] + rng.gauss(0, amount * w),
        box[3] + rng.gauss(0, amount * h),
    ]
    x1, y1 = min(max(out[0], 0), W - 1), min(max(out[1], 0), H - 1)
    x2, y2 = min(max(out[2], x1 + 1), W), min(max(out[3], y1 + 1), H)
    return [q(x1), q(y1), q(x2), q(y2)]


scores = rng.sample(range(1, 10000), 2000)
images = []
for i in range(IMAGES):
    gt = [[c] + random_box() for c in range(CLASSES) for _ in range(rng.randint(0, 4))]
    ignore = [random_box(20, 90) for _ in range(rng.randint(0, 2))]
    dets = []
    for g in gt:
        # Found (well or loosely), missed, or found twice.
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            dets.append([g[0], 0, *jitter(g[1:], rng.choice([0.02, 0.08, 0.2]))])
        if rng.random() < 0.15:
            dets.append([(g[0] + 1) % CLASSES, 0, *jitter(g[1:], 0.05)])
    for r in ignore:
        # Detections inside or across ignore regions.
        for _ in range(rng.randint(1, 3)):
            dets.append([rng.randrange(CLASSES), 0, *jitter(r, 0.3)])
    for _ in range(rng.randint(0, 4)):
        dets.append([rng.randrange(CLASSES), 0, *random_box()])
    for d in dets:
        d[1] = scores.pop() / 10000
    images.append({"gt": gt, "ignore": ignore, "dets": dets})

# COCO form: xywh, area = w * h, one crowd box per ignore region and category.
def xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

gt_json = {
    "images": [{"id": i + 1, "width": W, "height": H} for i in range(IMAGES)],
    "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(CLASSES)],
    "annotations": [],
}
dt_json = []
for i, im in enumerate(images):
    for g in im["gt"]:
        box = xywh(g[1:])
        gt_json["annotations"].append(
            {"image_id": i + 1, "category_id": g[0] + 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        )
    for r in im["ignore"]:
        for c in range(CLASSES):
            box = xywh(r)
            gt_json["annotations"].append(
                {"image_id": i + 1, "category_id": c + 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 1}
            )
    for d in im["dets"]:
        dt_json.append({"image_id": i + 1, "category_id": d[0] + 1, "score": d[1], "bbox": xywh(d[2:])})
for k, a in enumerate(gt_json["annotations"]):
    a["id"] = k + 1

coco = COCO()
coco.dataset = gt_json
coco.createIndex()
dets = coco.loadRes(dt_json)
ev = COCOeval(coco, dets, "bbox")
ev.evaluate()
ev.accumulate()
ev.summarize()
precision = ev.eval["precision"][:, :, :, 0, 2]  # [iou, recall, class] at area all, maxDets 100
per_class = []
for c in range(CLASSES):
    p = precision[:, :, c]
    per_class.append(
        {
            "ap50": float(np.mean(p[0][p[0] > -1])),
            "ap50_95": float(np.mean(p[p > -1])),
            # The interpolated PR curve at IoU 0.5 (101 recall points) and the recall reached.
            "precision50": [float(v) for v in p[0]],
            "recall50": float(ev.eval["recall"][0, c, 0, 2]),
        }
        if (p > -1).any()
        else None
    )
expected = {
    "per_class": per_class,
    "map50": float(ev.stats[1]),
    "map50_95": float(ev.stats[0]),
}
with open("coco_reference.json", "w") as f:
    json.dump(
        {
            "source": "crates/eval/tests/data/coco_reference.py (pycocotools COCOeval, iouType bbox)",
            "classes": CLASSES,
            "images": images,
            "expected": expected,
        },
        f,
        indent=1,
    )
print(json.dumps(expected, indent=1))
print(sum(len(im["dets"]) for im in images), "detections,", sum(len(im["gt"]) for im in images), "boxes,",
      sum(len(im["ignore"]) for im in images), "ignore regions")
