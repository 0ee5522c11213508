"""PyTorch mirror of percept's `PerceptionNet` (crates/model/src), layer for layer.

The module tree uses the same attribute names as percept's burn modules, so a parameter's
PyTorch name is its percept model-file name except for batch norm's leaves (see
`percept_to_torch_name`). Semantics kept identical to percept:

- ConvBlock = Conv2d(bias=False, padding=k//2) -> BatchNorm(eps=1e-3, momentum=0.03) -> ReLU
  (ReLU, not YOLOv8's SiLU).
- Batch norm's running variance is updated with the *biased* batch variance, as percept does
  (PyTorch's own update uses the unbiased one); the correction is a per-channel op on the
  running statistics, not a pass over the activations.
- Up-sampling: nearest 2x in the neck and segmentation heads; the segmentation logits are
  up-sampled bilinearly (align_corners=False) from stride 2.
- Detection outputs, levels concatenated stride 8, 16, 32, row-major within a level:
  `[b, anchors, classes]` class logits; `[b, anchors, 4 * REG_BINS]` box logits (`reg_out`'s
  channels, channel = side * REG_BINS + bin, sides left, top, right, bottom); and
  `[b, anchors, 4]` distances, per side the expectation `sum_k softmax(logits_side)[k] * k` over
  the bins times the level's stride (YOLOv8's DFL head, reg_max 16).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.03  # weight of the current batch, percept's and PyTorch's meaning alike
STRIDES = (8, 16, 32)
PRIOR_PROBABILITY = 0.01
REG_BINS = 16  # distance bins per box side (YOLOv8's reg_max)
MODEL_CARD_KEY = "percept.model_card"

# (width, depth) multipliers of percept's ModelSize.
SIZES = {"nano": (0.25, 0.34), "small": (0.375, 0.34), "medium": (0.4375, 0.67)}


def _round_half_away(x: float) -> int:
    # Rust's f64::round; Python's round() rounds half to even.
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def _scaled(base: int, m: float) -> int:
    return max(_round_half_away(base * m / 8.0) * 8, 8)


@dataclass
class Architecture:
    """percept's `PerceptionNetConfig` (the model card's `architecture`)."""

    size: str
    num_classes: int
    detection: bool = True
    drivable: bool = True
    lanes: bool = True

    @staticmethod
    def from_card(card: dict) -> "Architecture":
        a = card["architecture"]
        tasks = a.get("tasks", {})
        return Architecture(
            size=a["size"],
            num_classes=a["num_classes"],
            detection=tasks.get("detection", True),
            drivable=tasks.get("drivable", True),
            lanes=tasks.get("lanes", True),
        )

    def parts(self) -> dict:
        wm, dm = SIZES[self.size]
        widths = [_scaled(c, wm) for c in (64, 128, 256, 512, 1024)]
        depths = [max(_round_half_away(d * dm), 1) for d in (3, 6, 6, 3)]
        return {
            "widths": widths,
            "depths": depths,
            "neck_depth": depths[0],
            "head_hidden": max(widths[2], 32),
            "seg_hidden": widths[2] // 2,
        }


class BatchNorm2d(nn.BatchNorm2d):
    """percept's BatchNorm2d: batch statistics in training, running ones in eval, running
    variance updated with the biased variance."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # PyTorch folds m * var * n / (n - 1) into the running variance, percept m * var. The
        # op updates a copy (autograd keeps the tensors it was given, so the buffer itself must
        # not change in place under it); the buffer gets the corrected value.
        var = self.running_var.clone()
        m = self.momentum
        y = F.batch_norm(x, self.running_mean, var, self.weight, self.bias, True, m, self.eps)
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            kept = self.running_var * (1 - m)
            self.running_var.copy_(kept + (var - kept) * ((n - 1) / max(n, 1)))
        return y


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.norm = BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.conv1 = ConvBlock(c, c)
        self.conv2 = ConvBlock(c, c)
        self.shortcut = shortcut

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CspBlock(nn.Module):
    """C2f: split in two halves, a chain of bottlenecks on the second, every output kept."""

    def __init__(self, cin: int, cout: int, depth: int, shortcut: bool = True):
        super().__init__()
        hidden = max(cout // 2, 1)
        self.split = ConvBlock(cin, 2 * hidden, kernel=1)
        self.bottlenecks = nn.ModuleList(Bottleneck(hidden, shortcut) for _ in range(depth))
        self.merge = ConvBlock((2 + depth) * hidden, cout, kernel=1)

    def forward(self, x):
        parts = list(self.split(x).chunk(2, 1))
        last = parts[1]
        for b in self.bottlenecks:
            last = b(last)
            parts.append(last)
        return self.merge(torch.cat(parts, 1))


class Sppf(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.reduce = ConvBlock(c, c // 2, kernel=1)
        self.expand = ConvBlock(2 * c, c, kernel=1)

    def forward(self, x):
        x = self.reduce(x)
        p1 = F.max_pool2d(x, 5, 1, 2)
        p2 = F.max_pool2d(p1, 5, 1, 2)
        p3 = F.max_pool2d(p2, 5, 1, 2)
        return self.expand(torch.cat([x, p1, p2, p3], 1))


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int):
        super().__init__()
        self.down = ConvBlock(cin, cout, stride=2)
        self.csp = CspBlock(cout, cout, depth)

    def forward(self, x):
        return self.csp(self.down(x))


class Backbone(nn.Module):
    def __init__(self, widths, depths):
        super().__init__()
        self.stem = ConvBlock(3, widths[0], stride=2)
        self.stages = nn.ModuleList(Stage(widths[i], widths[i + 1], depths[i]) for i in range(4))
        self.sppf = Sppf(widths[4])

    def forward(self, x):
        x = self.stem(x)
        s4 = self.stages[0](x)
        s8 = self.stages[1](s4)
        s16 = self.stages[2](s8)
        s32 = self.sppf(self.stages[3](s16))
        return s4, s8, s16, s32


def upsample2(x):
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Neck(nn.Module):
    def __init__(self, widths3, depth):
        super().__init__()
        c3, c4, c5 = widths3
        self.top_down4 = CspBlock(c5 + c4, c4, depth, shortcut=False)
        self.top_down3 = CspBlock(c4 + c3, c3, depth, shortcut=False)
        self.down3 = ConvBlock(c3, c3, stride=2)
        self.bottom_up4 = CspBlock(c3 + c4, c4, depth, shortcut=False)
        self.down4 = ConvBlock(c4, c4, stride=2)
        self.bottom_up5 = CspBlock(c4 + c5, c5, depth, shortcut=False)

    def forward(self, s8, s16, s32):
        n4 = self.top_down4(torch.cat([upsample2(s32), s16], 1))
        p3 = self.top_down3(torch.cat([upsample2(n4), s8], 1))
        p4 = self.bottom_up4(torch.cat([self.down3(p3), n4], 1))
        p5 = self.bottom_up5(torch.cat([self.down4(p4), s32], 1))
        return p3, p4, p5


class LevelHead(nn.Module):
    def __init__(self, cin: int, hidden: int, num_classes: int):
        super().__init__()
        self.cls = nn.ModuleList([ConvBlock(cin, hidden), ConvBlock(hidden, hidden)])
        self.cls_out = nn.Conv2d(hidden, num_classes, 1)
        self.reg = nn.ModuleList([ConvBlock(cin, hidden), ConvBlock(hidden, hidden)])
        self.reg_out = nn.Conv2d(hidden, 4 * REG_BINS, 1)
        bias = -math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        nn.init.constant_(self.cls_out.bias, bias)


def _flatten(x):
    # [b, c, h, w] -> [b, h*w, c]
    return x.flatten(2).transpose(1, 2)


def expected_distances(box_logits: torch.Tensor) -> torch.Tensor:
    """`[b, n, 4 * REG_BINS]` box logits -> `[b, n, 4]` expected bin per side (in strides)."""
    b, n, _ = box_logits.shape
    probs = box_logits.reshape(b, n, 4, REG_BINS).softmax(-1)
    bins = torch.arange(REG_BINS, dtype=probs.dtype, device=probs.device)
    return (probs * bins).sum(-1)


class DetectionHead(nn.Module):
    def __init__(self, in_channels, hidden, num_classes):
        super().__init__()
        self.levels = nn.ModuleList(LevelHead(c, hidden, num_classes) for c in in_channels)

    def forward(self, features):
        """-> `(class_logits [b, n, classes], box_logits [b, n, 4 * REG_BINS], distances
        [b, n, 4])`."""
        logits, box_logits, distances = [], [], []
        for head, x, stride in zip(self.levels, features, STRIDES):
            cls = x
            for c in head.cls:
                cls = c(cls)
            reg = x
            for c in head.reg:
                reg = c(reg)
            logits.append(_flatten(head.cls_out(cls)))
            box = _flatten(head.reg_out(reg))
            box_logits.append(box)
            distances.append(expected_distances(box) * stride)
        return torch.cat(logits, 1), torch.cat(box_logits, 1), torch.cat(distances, 1)


class SegmentationHead(nn.Module):
    def __init__(self, cin: int, skip: int, hidden: int):
        super().__init__()
        half = max(hidden // 2, 8)
        self.reduce = ConvBlock(cin, hidden)
        self.fuse = ConvBlock(hidden + skip, half)
        self.refine = ConvBlock(half, half)
        self.out = nn.Conv2d(half, 1, 1)

    def forward(self, p3, s4):
        x = upsample2(self.reduce(p3))
        x = upsample2(self.fuse(torch.cat([x, s4], 1)))
        logits = self.out(self.refine(x))
        return F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)


class PerceptionNet(nn.Module):
    """Input `[b, 3, h, w]` (normalised, sides multiples of 32) -> dict of outputs:
    `class_logits [b, anchors, classes]`, `box_logits [b, anchors, 4 * REG_BINS]`,
    `distances [b, anchors, 4]`, `drivable`, `lanes` `[b, 1, h, w]` (absent for tasks switched
    off)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        p = arch.parts()
        w, d = p["widths"], p["depths"]
        self.backbone = Backbone(w, d)
        self.neck = Neck(w[2:5], p["neck_depth"])
        self.detection_head = (
            DetectionHead(w[2:5], p["head_hidden"], arch.num_classes) if arch.detection else None
        )
        seg = lambda: SegmentationHead(w[2], w[1], p["seg_hidden"])  # noqa: E731
        self.drivable_head = seg() if arch.drivable else None
        self.lane_head = seg() if arch.lanes else None

    def forward(self, images):
        s4, s8, s16, s32 = self.backbone(images)
        p3, p4, p5 = self.neck(s8, s16, s32)
        out = {}
        if self.detection_head is not None:
            det = self.detection_head((p3, p4, p5))
            out["class_logits"], out["box_logits"], out["distances"] = det
        if self.drivable_head is not None:
            out["drivable"] = self.drivable_head(p3, s4)
        if self.lane_head is not None:
            out["lanes"] = self.lane_head(p3, s4)
        return out


def build(size: str = "nano", num_classes: int = 10) -> PerceptionNet:
    """A randomly initialised network of a percept size. PyTorch's default conv init is
    burn's (uniform in +-1/sqrt(fan_in)); batch norm starts at 1 and 0."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: give one of {', '.join(SIZES)}")
    return PerceptionNet(Architecture(size, num_classes))


# --- Loading percept model files ------------------------------------------------------------

# percept (burn) leaf name -> PyTorch leaf name, for batch norm; every other leaf (conv
# `weight` [out, in, kh, kw] and `bias`) and every module path is the same on both sides.
BN_LEAVES = {
    "gamma": "weight",
    "beta": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}
# PyTorch-only buffers with no percept counterpart (unused: momentum is fixed).
TORCH_ONLY = ("num_batches_tracked",)


def percept_to_torch_name(name: str, batch_norm_modules: set[str]) -> str:
    """`backbone.stem.norm.gamma` -> `backbone.stem.norm.weight`; other names unchanged."""
    module, _, leaf = name.rpartition(".")
    if module in batch_norm_modules:
        if leaf not in BN_LEAVES:
            raise KeyError(f"{name}: batch-norm tensor {leaf!r} is not one of {list(BN_LEAVES)}")
        return f"{module}.{BN_LEAVES[leaf]}"
    return name


def read_model_card(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if MODEL_CARD_KEY not in meta:
        raise ValueError(f"{path}: no {MODEL_CARD_KEY!r} metadata: not a percept model file")
    return json.loads(meta[MODEL_CARD_KEY])


def load_percept(path: str, device: str | torch.device = "cpu") -> tuple[PerceptionNet, dict]:
    """Builds the network from the model card of percept model file `path` and loads every
    tensor by name; raises listing every unmatched name and shape mismatch."""
    from safetensors.torch import load_file

    card = read_model_card(path)
    net = PerceptionNet(Architecture.from_card(card))
    tensors = load_file(path)
    bn_modules = {n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    state = net.state_dict()
    loaded, problems, unused = {}, [], []
    for name, t in sorted(tensors.items()):
        torch_name = percept_to_torch_name(name, bn_modules)
        if torch_name not in state:
            unused.append(f"{name} {list(t.shape)}")
        elif tuple(state[torch_name].shape) != tuple(t.shape):
            problems.append(
                f"{name} -> {torch_name}: file {list(t.shape)}, network "
                f"{list(state[torch_name].shape)}"
            )
        else:
            loaded[torch_name] = t.to(state[torch_name].dtype)
    missing = [
        f"{n} {list(v.shape)}"
        for n, v in state.items()
        if n not in loaded and not n.endswith(TORCH_ONLY)
    ]
    if problems or unused or missing:
        lines = [f"{path}: weights do not fit the PyTorch network"]
        for title, items in (
            ("shape mismatches", problems),
            ("in the file, not in the network", unused),
            ("in the network, not in the file", missing),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {i}" for i in items)
        raise ValueError("\n".join(lines))
    net.load_state_dict(loaded, strict=False)
    return net.to(device), card


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
