"""Checks the PyTorch reference against percept on one dump written by
`cargo run --example reference_io -- DIR`:

    python benches/reference/check.py DIR [--double]

Compares, tensor by tensor: the assigned detection targets, the outputs in eval mode (running
statistics), the outputs in train mode (batch statistics), the predictions percept's assigner
ranked, every loss term, every parameter's gradient, and the batch-norm running statistics after
that training forward.

The assignment is task-aligned: it ranks anchor points by the network's own detached
predictions of the training forward. percept dumps the predictions its assigner saw
(`assign.scores`, `assign.boxes`); the PyTorch assigner (NumPy, float32, as percept's) runs on
those same values, so the targets can be compared on their own, and PyTorch's training forward is
then checked to predict the same within the output tolerance. The loss is computed from the
PyTorch assigner's targets (after they compared equal).

Targets: `positive`, `weight` and `boxes` must be identical (both sides do the same float32
operations in the same order; a box or a positive set is either right or wrong). `classes` and
`quality` (the soft class targets) may differ by 1e-6 absolute: the alignment `score^0.5 *
IoU^6` uses libm's `powf` in percept and NumPy's float64 power rounded to float32 here; each is
correctly rounded nearly always, and one ulp of the alignment becomes at most a few ulps of a
quality in [0, 1] (~2e-7). A wrong rule (top-k, ties, conflict, normalisation) is off by 1e-2
or more. A one-ulp difference could in principle flip two candidates whose alignments tie to
within an ulp; the report then lists the anchors that differ.

Per tensor it prints the max absolute difference, the max relative difference (elementwise,
|a - b| / |b|, over elements with |b| > 1e-6 * max|b|), the normalised difference
max|a - b| / max|b| and the relative L2 difference ||a - b|| / ||b||. Exits 1 if any exceeds
its tolerance:

- outputs, the assigner's predictions (sigmoid scores, decoded boxes) and running statistics,
  normalised difference <= 1e-4. Both sides compute in float32
  with different summation orders (im2col/GEMM blocking vs oneDNN); one 3x3 conv over 256
  channels rounds at ~sqrt(2304) * 6e-8 = 3e-6 of its output scale, and ~40 layers in a row,
  batch norm re-scaling each, add up to ~1e-5 (measured: 7e-7 in eval mode, 4e-5 in train
  mode). A wrong layer (padding, order, epsilon, interpolation) is off by 1e-2 or more.
- loss terms: 1e-4 relative, for the same reason.
- gradients: relative L2 <= 0.1 per tensor and <= 0.05 over all parameters together. Tighter
  is not possible in float32: a randomly initialised network in training mode on a batch of 2
  amplifies rounding ~1e4-fold on the way back to the stem, and a ReLU input within rounding of
  0 (there are a few among the ~10^7 activations) sends one element's gradient one way in one
  implementation and the other way in the other. PyTorch's own float32 gradients are 2.6e-2
  (all parameters) and up to 4.4e-2 (one tensor) away from its float64 ones on the nano dump;
  the bounds are about twice that. A wrong backward (a missing term, a wrong sign, a wrong
  routing) is off by 0.3 or more.

`--double` runs PyTorch in float64 instead: then the differences are percept's own float32
rounding, for judging the tolerances (the assigner stays float32, on percept's predictions, as
percept's does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from loss import DEFAULT_WEIGHTS, TargetTensors, anchor_points, assign_targets  # noqa: E402
from loss import distances_to_boxes, multitask_loss  # noqa: E402
from model import load_percept, percept_to_torch_name  # noqa: E402

TARGET_TOL = 1e-6  # absolute, soft class targets and qualities
OUTPUT_TOL = 1e-4
LOSS_TOL = 1e-4
GRAD_TOL = 0.1  # relative L2, per tensor
GRAD_GLOBAL_TOL = 0.05  # relative L2, all parameters together
STATS_TOL = 1e-4


class Report:
    def __init__(self):
        self.failures = []
        self.worst = {}

    def compare(self, group: str, name: str, ours, theirs, tol: float, metric: str = "norm"):
        """`metric`: `norm` (max|a - b| / max|b|) or `l2` (||a - b|| / ||b||) is held to
        `tol`."""
        a = ours.detach().double().cpu().numpy()
        b = np.asarray(theirs, np.float64)
        if a.shape != b.shape:
            print(f"  {name:<58} SHAPE {a.shape} vs percept {b.shape}")
            self.failures.append(f"{group}/{name}: shape")
            return
        diff = np.abs(a - b)
        scale = float(np.abs(b).max()) if b.size else 0.0
        max_abs = float(diff.max()) if b.size else 0.0
        sig = np.abs(b) > 1e-6 * scale
        max_rel = float((diff[sig] / np.abs(b[sig])).max()) if sig.any() else 0.0
        norm = max_abs / scale if scale > 0 else max_abs
        l2_ref = float(np.linalg.norm(b))
        l2 = float(np.linalg.norm(a - b)) / (l2_ref if l2_ref > 0 else 1.0)
        value = norm if metric == "norm" else l2
        bad = not np.isfinite(a).all() or value > tol
        mark = "FAIL" if bad else "ok"
        print(
            f"  {name:<58} abs {max_abs:8.2e}  rel {max_rel:8.2e}  norm {norm:8.2e}  "
            f"l2 {l2:8.2e}  {mark}"
        )
        worst = self.worst.get(group, (0.0, 0.0, 0.0, 0.0))
        self.worst[group] = tuple(max(x, y) for x, y in zip(worst, (max_abs, max_rel, norm, l2)))
        if bad:
            self.failures.append(f"{group}/{name}: {metric} {value:.2e} > {tol:.0e}")


def compare_targets(r: Report, name: str, ours: np.ndarray, theirs: np.ndarray):
    """`positive`, `weight`, `boxes`: identical; `classes`, `quality`: within TARGET_TOL."""
    exact = name in ("positive", "weight", "boxes")
    label = f"targets.{name}"
    if ours.shape != theirs.shape:
        print(f"  {label:<58} SHAPE {ours.shape} vs percept {theirs.shape}")
        r.failures.append(f"{label}: shape")
        return
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    differing = int((ours != theirs).sum())
    bad = differing > 0 if exact else not (max_abs <= TARGET_TOL)
    rule = "identical" if exact else f"abs <= {TARGET_TOL:.0e}"
    print(
        f"  {label:<58} abs {max_abs:8.2e}  {differing} of {ours.size} differ  "
        f"({rule})  {'FAIL' if bad else 'ok'}"
    )
    worst = r.worst.get("targets (abs)", (0.0, 0.0, 0.0, 0.0))
    r.worst["targets (abs)"] = (max(worst[0], max_abs), 0.0, 0.0, 0.0)
    if bad:
        r.failures.append(f"{label}: {differing} differ, max abs {max_abs:.2e} ({rule})")
        where = np.argwhere(ours != theirs if exact else diff > TARGET_TOL)
        for idx in where[:8]:
            i = tuple(int(v) for v in idx)
            print(
                f"    at {list(i)}: PyTorch {float(ours[i]):.9g}, percept {float(theirs[i]):.9g}"
            )
        if len(where) > 8:
            print(f"    ... {len(where) - 8} more")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="directory with model.safetensors and io.safetensors")
    ap.add_argument("--double", action="store_true", help="run PyTorch in float64")
    args = ap.parse_args()
    torch.manual_seed(0)
    dtype = torch.float64 if args.double else torch.float32

    net, card = load_percept(os.path.join(args.dir, "model.safetensors"))
    net = net.to(dtype)
    with safe_open(os.path.join(args.dir, "io.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["percept.reference_io"])
        io = {k: f.get_tensor(k) for k in f.keys()}
    h, w, b, classes = meta["height"], meta["width"], meta["batch"], meta["num_classes"]
    weights = {**DEFAULT_WEIGHTS, **meta.get("loss_weights", {})}
    print(
        f"{card['architecture']['size']} network, {classes} classes, batch {b} at {w}x{h}, "
        f"PyTorch {torch.__version__} in {dtype}; percept dump {args.dir}"
    )
    r = Report()

    missing = [k for k in ("assign.scores", "assign.boxes", "targets.quality") if k not in io]
    if missing:
        print(f"{args.dir}: no {', '.join(missing)}: a dump of the old detection recipe?")
        return 1
    print("assigned targets (on percept's assign.scores and assign.boxes):")
    boxes_flat = io["boxes"].numpy()
    ignore_flat = io["ignore"].numpy()
    boxes = [boxes_flat[boxes_flat[:, 0] == i][:, 1:] for i in range(b)]
    ignore = [ignore_flat[ignore_flat[:, 0] == i][:, 1:] for i in range(b)]
    labelled = io["detection_labelled"].numpy() > 0.5
    scores = io["assign.scores"].numpy()
    pred_boxes = io["assign.boxes"].numpy()
    t = assign_targets(h, w, boxes, ignore, labelled, classes, scores, pred_boxes)
    for name in ("positive", "weight", "boxes", "classes", "quality"):
        compare_targets(r, name, getattr(t, name), io[f"targets.{name}"].numpy())
    if "num_positive" in meta and t.num_positive != meta["num_positive"]:
        r.failures.append(f"num_positive {t.num_positive} vs {meta['num_positive']}")
    print(
        f"  {t.num_positive} positives (percept {meta.get('num_positive', '?')}), "
        f"normaliser (sum of qualities) {t.normaliser():.6g}"
    )

    images = io["images"].to(dtype)
    outputs = ("class_logits", "box_logits", "distances", "drivable", "lanes")

    print("eval mode (running statistics):")
    net.eval()
    with torch.no_grad():
        out = net(images)
    for k in outputs:
        if f"eval.{k}" in io:
            r.compare("eval outputs", f"eval.{k}", out[k], io[f"eval.{k}"], OUTPUT_TOL)

    print("train mode (batch statistics):")
    net.train()
    out = net(images)
    for k in outputs:
        if f"train.{k}" in io:
            r.compare("train outputs", f"train.{k}", out[k], io[f"train.{k}"], OUTPUT_TOL)
    anchors = torch.from_numpy(anchor_points(h, w)).to(dtype)
    print("the predictions the assigner ranked (PyTorch's training forward vs percept's):")
    with torch.no_grad():
        scores = torch.sigmoid(out["class_logits"])
        pred = distances_to_boxes(out["distances"], anchors[:, :2])
    r.compare("assigner inputs", "assign.scores", scores, io["assign.scores"], OUTPUT_TOL)
    r.compare("assigner inputs", "assign.boxes", pred, io["assign.boxes"], OUTPUT_TOL)
    seg = {
        k: io[k].to(dtype) for k in ("drivable", "lanes", "drivable_labelled", "lanes_labelled")
    }
    targets = TargetTensors(t, "cpu").to(dtype)
    parts = multitask_loss(out, targets, seg, anchors, weights)
    print("loss terms:")
    for k, v in parts.items():
        if f"loss.{k}" not in io:
            print(f"  loss.{k}: not in percept's dump")
            r.failures.append(f"loss.{k} missing in the dump")
            continue
        r.compare("loss", f"loss.{k}", v.reshape(1), io[f"loss.{k}"], LOSS_TOL)
    for k in sorted(io):
        if k.startswith("loss.") and k[len("loss."):] not in parts:
            print(f"  {k}: percept has a term PyTorch does not")
            r.failures.append(f"{k}: no PyTorch term")

    print("gradients:")
    net.zero_grad()
    parts["total"].backward()
    bn_modules = {n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    params = dict(net.named_parameters())
    seen = set()
    ours_all, theirs_all = [], []
    for key in sorted(io):
        if key.startswith("grad."):
            name = percept_to_torch_name(key[len("grad."):], bn_modules)
            seen.add(name)
            p = params.get(name)
            if p is None or p.grad is None:
                print(f"  {key}: no such PyTorch parameter or no gradient")
                r.failures.append(key)
                continue
            r.compare("gradients", key, p.grad, io[key], GRAD_TOL, metric="l2")
            ours_all.append(p.grad.detach().double().flatten())
            theirs_all.append(io[key].double().flatten())
    r.compare(
        "gradients (all)",
        "all parameters together",
        torch.cat(ours_all),
        torch.cat(theirs_all).numpy(),
        GRAD_GLOBAL_TOL,
        metric="l2",
    )
    for name in sorted(set(params) - seen):
        print(f"  {name}: percept dumped no gradient")
        r.failures.append(f"grad of {name} missing in the dump")

    print("running statistics after the training forward:")
    state = net.state_dict()
    for key in sorted(io):
        if key.startswith("after."):
            name = percept_to_torch_name(key[len("after."):], bn_modules)
            r.compare("running stats", key, state[name], io[key], STATS_TOL)

    print("\nworst per group: max abs, max rel, normalised, relative L2")
    for g, (a, rel, norm, l2) in r.worst.items():
        print(f"  {g:<16} {a:9.2e}  {rel:9.2e}  {norm:9.2e}  {l2:9.2e}")
    if r.failures:
        print(f"\nFAILED ({len(r.failures)}):")
        for f_ in r.failures:
            print(f"  {f_}")
        return 1
    print(
        f"\nall within tolerance: targets identical (soft class targets and qualities within "
        f"{TARGET_TOL:.0e}); outputs, assigner inputs and running statistics "
        f"{OUTPUT_TOL:.0e} normalised, loss terms {LOSS_TOL:.0e} relative, gradients "
        f"{GRAD_TOL:g} relative L2 per tensor and {GRAD_GLOBAL_TOL:g} over all parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
