"""Training-step benchmark of the PyTorch reference, measured as `percept bench train` measures
percept's (its part (a), data loading excluded):

    python benches/reference/bench.py --model nano --batch 8 --threads 2

One fixed synthetic batch; each step does what percept's trainer step does: upload the images
and masks, forward, task-aligned assignment of the detection targets on the host (NumPy, on the
forward's detached predictions read back from the device), upload of the targets, multi-task
loss, backward, the gradients' global norm read to the host with the loss values, a clip to 10
when over it, and AdamW (lr 0.002, betas 0.9/0.999, eps 1e-8, weight decay 5e-4 on >1-D
parameters only). The first step is timed alone, then `--warmup` untimed steps, then `--steps`
timed steps, the device synced at the end of each. Prints one JSON line.

Memory: on CPU the peak resident set during the timed steps (the high-water mark reset just
before, as percept does, via /proc/self/clear_refs) and the process's lifetime maximum
(getrusage); on CUDA the allocator's peak allocated and reserved bytes during the timed steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["nano", "small", "medium"], default="nano")
    ap.add_argument("--classes", type=int, default=10, help="detection classes (default 10, "
                    "as percept bench train and BDD100K)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra- and inter-op threads (default: PyTorch's choice)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                    help="autocast the forward (fp16: CUDA only, with a GradScaler)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--optimizer-impl", choices=["default", "foreach", "fused"],
                    default="default", help="torch AdamW implementation")
    ap.add_argument("--torch-bn-stats", action="store_true",
                    help="PyTorch's own running-variance update (unbiased) instead of percept's")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time forward+loss / backward / clip check / update, synced")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weights", default=None,
                    help="a percept model file (percept export/checkpoint) to start from, so "
                    "the two benchmarks step the same network; its card sets --model and "
                    "--classes")
    a = ap.parse_args()
    if a.batch < 1 or a.steps < 1 or a.warmup < 0 or a.classes < 1:
        ap.error("--batch, --steps and --classes must be >= 1, --warmup >= 0")
    if a.height % 32 or a.width % 32 or a.height <= 0 or a.width <= 0:
        ap.error(f"--width {a.width} --height {a.height}: both must be positive multiples of 32")
    if a.threads is not None and a.threads < 1:
        ap.error("--threads must be >= 1")
    if a.amp == "fp16" and a.device != "cuda":
        ap.error("--amp fp16 needs --device cuda")
    return a


ARGS = parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402

if ARGS.threads is not None:
    # Before any parallel work: the inter-op pool can be sized only once.
    torch.set_num_threads(ARGS.threads)
    torch.set_num_interop_threads(ARGS.threads)

import model as model_mod  # noqa: E402
from loss import TargetTensors, anchor_points, assign_targets, multitask_loss  # noqa: E402
from loss import predictions_for_assignment  # noqa: E402

NORM_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
NORM_STD = np.array([0.229, 0.224, 0.225], np.float32)
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 0.002, (0.9, 0.999), 1e-8, 5e-4, 10.0
LOSS_NAMES = ("total", "classification", "box_iou", "dfl", "drivable", "lanes")


def synthetic_batch(rng, batch, h, w, classes):
    """A road-like batch: a noisy image, a drivable trapezoid, a few lane lines, 6 to 12 boxes
    of 8 to 160 px per image (percept's synthetic scenes have about as many)."""
    img = rng.integers(0, 256, (batch, h, w, 3)).astype(np.float32) / 255.0
    images = ((img - NORM_MEAN) / NORM_STD).transpose(0, 3, 1, 2).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = 0.45 * h
    t = np.clip((yy - horizon) / (h - horizon), 0, 1)
    drivable = ((yy > horizon) & (np.abs(xx - w / 2) < t * 0.45 * w + 4)).astype(np.float32)
    lanes = np.zeros((h, w), np.float32)
    for offset in (-0.3, 0.0, 0.3):
        x_line = w / 2 + offset * t * w
        lanes[(yy > horizon) & (np.abs(xx - x_line) < 1.5 + 2 * t)] = 1.0
    boxes = []
    for _ in range(batch):
        n = int(rng.integers(6, 13))
        side = rng.uniform(8, 160, (n, 2)).astype(np.float32)
        x1 = rng.uniform(0, w - 8, n).astype(np.float32)
        y1 = rng.uniform(0.3 * h, h - 8, n).astype(np.float32)
        x2 = np.minimum(x1 + side[:, 0], w).astype(np.float32)
        y2 = np.minimum(y1 + side[:, 1] * 0.7, h).astype(np.float32)
        cls = rng.integers(0, classes, n).astype(np.float32)
        boxes.append(np.stack([cls, x1, y1, x2, y2], 1))
    return {
        "images": images.astype(np.float32),
        "drivable": np.repeat(drivable[None], batch, 0),
        "lanes": np.repeat(lanes[None], batch, 0),
        "labelled": np.ones(batch, np.float32),
        "boxes": boxes,
        "ignore": [np.zeros((0, 4), np.float32) for _ in range(batch)],
    }


def total_norm(grads):
    # torch >= 2.6 splits clip_grad_norm_ into its two halves; percept reads the norm first.
    get = getattr(torch.nn.utils, "get_total_norm", None)
    if get is not None:
        return get(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_with_norm(params, norm):
    clip = getattr(torch.nn.utils, "clip_grads_with_norm_", None)
    if clip is not None:
        clip(params, GRAD_CLIP, norm)
    else:
        for p in params:
            p.grad.mul_(GRAD_CLIP / (norm + 1e-6))


class Stepper:
    def __init__(self, net, batch, device, args):
        self.net, self.batch, self.device, self.args = net, batch, device, args
        self.params = [p for p in net.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim > 1]
        no_decay = [p for p in self.params if p.ndim <= 1]
        impl = {}
        if args.optimizer_impl == "foreach":
            impl["foreach"] = True
        elif args.optimizer_impl == "fused":
            impl["fused"] = True
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": WEIGHT_DECAY},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=LR, betas=BETAS, eps=EPS, **impl,
        )
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        self.scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
        h, w = args.height, args.width
        self.anchors = torch.from_numpy(anchor_points(h, w)).to(device)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self, phase_done=lambda: None):
        b, a, dev = self.batch, self.args, self.device
        images = torch.from_numpy(b["images"]).to(dev)
        if a.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labelled = torch.from_numpy(b["labelled"]).to(dev)
        seg = {
            "drivable": torch.from_numpy(b["drivable"]).to(dev),
            "lanes": torch.from_numpy(b["lanes"]).to(dev),
            "drivable_labelled": labelled,
            "lanes_labelled": labelled,
        }
        if self.amp_dtype is not None:
            with torch.autocast(dev.type, dtype=self.amp_dtype):
                out = self.net(images)
            out = {k: v.float() for k, v in out.items()}
        else:
            out = self.net(images)
        # Task-aligned assignment ranks the anchors by this forward's detached predictions.
        scores, pred_boxes = predictions_for_assignment(out, self.anchors[:, :2])
        t = assign_targets(
            a.height, a.width, b["boxes"], b["ignore"], b["labelled"] > 0, a.classes,
            scores, pred_boxes,
        )
        targets = TargetTensors(t, dev)
        parts = multitask_loss(out, targets, seg, self.anchors)
        phase_done()
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(parts["total"]).backward()
            self.scaler.unscale_(self.opt)
        else:
            parts["total"].backward()
        phase_done()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = total_norm(grads)
        terms = [parts[k] for k in LOSS_NAMES]
        values = torch.stack([v.detach().float().reshape(()) for v in terms] + [norm]).tolist()
        finite = all(math.isfinite(v) for v in values)
        if finite and values[-1] > GRAD_CLIP:
            clip_with_norm(self.params, norm)
        phase_done()
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        elif finite:
            self.opt.step()
        else:
            raise RuntimeError(f"non-finite loss or gradient norm: {values}")
        phase_done()
        return values


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_mib(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main():
    a = ARGS
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: PyTorch sees no CUDA device")
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    batch = synthetic_batch(rng, a.batch, a.height, a.width, a.classes)

    rss_start = status_mib("VmRSS")
    if a.weights is not None:
        net, card = model_mod.load_percept(a.weights)
        a.model = card["architecture"]["size"]
        a.classes = card["architecture"]["num_classes"]
        batch = synthetic_batch(rng, a.batch, a.height, a.width, a.classes)
    else:
        net = model_mod.build(a.model, a.classes)
    if a.torch_bn_stats:
        # Swap in PyTorch's own batch norm (same eps and momentum, unbiased running variance).
        for m in net.modules():
            if isinstance(m, model_mod.ConvBlock):
                bn = torch.nn.BatchNorm2d(m.norm.num_features, model_mod.BN_EPSILON,
                                          model_mod.BN_MOMENTUM)
                m.norm = bn
    net = net.to(device).train()
    if a.channels_last:
        net = net.to(memory_format=torch.channels_last)
    params = model_mod.count_parameters(net)
    running = sum(m.num_features for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stepper = Stepper(net, batch, device, a)

    stepper.sync()
    start = time.perf_counter()
    stepper.step()
    stepper.sync()
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(a.warmup):
        stepper.step()
    stepper.sync()

    rss_before = status_mib("VmRSS") if reset_peak_rss() else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms = []
    for _ in range(a.steps):
        start = time.perf_counter()
        losses = stepper.step()
        stepper.sync()
        step_ms.append((time.perf_counter() - start) * 1e3)
    peak_rss = status_mib("VmHWM") if rss_before is not None else None
    cuda_alloc = cuda_reserved = None
    if device.type == "cuda":
        cuda_alloc = torch.cuda.max_memory_allocated() / 2**20
        cuda_reserved = torch.cuda.max_memory_reserved() / 2**20

    breakdown = None
    if a.breakdown:
        phases = [0.0] * 4
        for _ in range(a.steps):
            k, last = 0, time.perf_counter()

            def done():
                nonlocal k, last
                stepper.sync()
                now = time.perf_counter()
                phases[k] += (now - last) * 1e3
                k += 1
                last = time.perf_counter()

            stepper.step(done)
        f, b, c, u = (p / a.steps for p in phases)
        breakdown = {
            "forward_loss_ms": f, "backward_ms": b, "clip_check_ms": c, "update_ms": u,
            "step_ms": f + b + c + u,
        }

    total = sum(step_ms)
    report = {
        "reference": "pytorch",
        "torch": torch.__version__,
        "model": a.model,
        "parameters": params,
        # percept counts batch norm's running statistics among its parameters.
        "parameters_as_percept_counts": params + 2 * running,
        "classes": a.classes,
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda"
                                 else ""),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "batch_size": a.batch,
        "input": f"{a.width}x{a.height}",
        "amp": a.amp,
        "channels_last": a.channels_last,
        "optimizer_impl": a.optimizer_impl,
        "batch_norm_stats": "pytorch" if a.torch_bn_stats else "percept",
        "warmup_steps": a.warmup,
        "steps": a.steps,
        "first_step_ms": first_ms,
        "images_per_second": a.batch * a.steps / (total / 1e3),
        "step_ms_mean": total / a.steps,
        "step_ms_median": statistics.median(step_ms),
        "step_ms_min": min(step_ms),
        "step_ms_max": max(step_ms),
        "step_ms": step_ms,
        "breakdown": breakdown,
        "rss_start_mib": rss_start,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "cuda_max_allocated_mib": cuda_alloc,
        "cuda_max_reserved_mib": cuda_reserved,
        "last_losses": dict(zip([*LOSS_NAMES, "grad_norm"], losses)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
