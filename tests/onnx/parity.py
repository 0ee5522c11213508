#!/usr/bin/env python3
"""Checks percept's ONNX exports in ONNX Runtime against percept's own outputs.

Run by tests/onnx/parity.rs, which writes into DIR:
  input.npy                   the network input, float32 [batch, 3, H, W], normalised
  <model>.<output>.npy        a model's raw outputs in percept (class_logits, box_logits,
                              distances, drivable, lanes; those the model has)
  <model>.detections.json     percept's decode + NMS of the same input: [[image, class, score,
                              x1, y1, x2, y2], ...], with the model card's decode settings
  cases.json                  [{"file": "full-fp32.onnx", "model": "full", "tolerance": 1e-4,
                                "outputs": [...], "nms": bool}, ...]

For each case: onnx.checker (full check, with shape inference) must pass; every raw output must
match within its tolerance (max absolute difference); with "nms", the graph's `detections` must
equal percept's as a set (image, class exact; score and box within 1e-3). Prints one line per
case with the measured differences; exits 1 on any failure, 2 when onnx/onnxruntime are
missing.
"""

import json
import sys
from pathlib import Path

import numpy as np

try:
    import onnx
    import onnxruntime as ort
except ImportError as e:  # the Rust test decides whether that is a failure
    print(f"missing: {e} (pip install onnx onnxruntime)")
    sys.exit(2)


def detections_equal(got, want, tol=1e-3):
    """Set equality of detection rows: image and class exact, score and box within tol."""
    got = sorted(map(tuple, np.asarray(got).reshape(-1, 7).tolist()))
    want = sorted(map(tuple, np.asarray(want).reshape(-1, 7).tolist()))
    if len(got) != len(want):
        return False, f"{len(got)} detections in ONNX Runtime, {len(want)} in percept"
    unmatched = list(want)
    for g in got:
        match = next(
            (
                w
                for w in unmatched
                if g[0] == w[0] and g[1] == w[1] and all(abs(a - b) <= tol for a, b in zip(g[2:], w[2:]))
            ),
            None,
        )
        if match is None:
            return False, f"ONNX Runtime's {g} has no match in percept's detections"
        unmatched.remove(match)
    return True, f"{len(got)} detections equal as sets"


def main(directory):
    d = Path(directory)
    x = np.load(d / "input.npy")
    cases = json.loads((d / "cases.json").read_text())
    failed = False
    for case in cases:
        path = d / case["file"]
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        for key in ("percept.model_card", "percept.export"):
            if key not in meta:
                print(f"{case['file']}: metadata {key} missing")
                failed = True
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = dict(zip(names, session.run(None, {"images": x})))
        line = [case["file"]]
        for name in case["outputs"]:
            want = np.load(d / f"{case['model']}.{name}.npy")
            got = results[name]
            if got.shape != want.shape:
                line.append(f"{name}: shape {got.shape} vs {want.shape}")
                failed = True
                continue
            diff = float(np.max(np.abs(got.astype(np.float64) - want)))
            line.append(f"{name} max|diff| {diff:.3g}")
            if diff > case["tolerance"]:
                line.append(f"OVER {case['tolerance']}")
                failed = True
        if case.get("nms"):
            want = json.loads((d / f"{case['model']}.detections.json").read_text())
            ok, message = detections_equal(results["detections"], want)
            line.append(message)
            failed |= not ok
        print("; ".join(line))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
