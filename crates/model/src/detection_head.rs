//! Anchor-free, decoupled detection head (one branch classifies, one regresses), shared design
//! over the three neck levels, each level with its own weights.
//!
//! Every cell of every level is an *anchor point* at the cell centre. For each, the head predicts
//! per-class logits and, for each of the four box edges (left, top, right, bottom), a
//! distribution over [`REG_BINS`] distances `0, 1, ..., REG_BINS - 1` strides from the point
//! (Generalized Focal Loss, Li et al., NeurIPS 2020, as in YOLOv8). The distance to an edge is
//! the distribution's mean times the stride, so it is positive, scales with the level and reaches
//! `(REG_BINS - 1) * stride`: 120 px at stride 8, 480 px at stride 32.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::conv2d;
use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::inference_graph::{plain_conv, GraphBuilder, Op, ValueId};
use crate::neck::NeckFeatures;

/// Strides of the three detection levels.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Bins of each edge's distance distribution (YOLOv8's `reg_max`).
pub const REG_BINS: usize = 16;

/// Objects expected in a 640x640 image at initialisation (YOLOv8's bias prior): each level's
/// classification bias starts at `ln p` with `p = PRIOR_OBJECTS / classes / cells at 640x640`,
/// so the summed BCE over thousands of anchors starts near its steady state instead of swamping
/// the first steps.
const PRIOR_OBJECTS: f64 = 5.0;

/// Configuration of a [`DetectionHead`].
#[derive(Config, Debug)]
pub struct DetectionHeadConfig {
    /// Input channels at strides 8, 16, 32.
    pub in_channels: [usize; 3],
    /// Width of the hidden convolutions of both branches.
    pub hidden: usize,
    pub num_classes: usize,
}

/// Head of one level.
#[derive(Module, Debug)]
pub struct LevelHead<B: Backend> {
    cls: Vec<ConvBlock<B>>,
    cls_out: Conv2d<B>,
    reg: Vec<ConvBlock<B>>,
    reg_out: Conv2d<B>,
}

/// Raw detection outputs, all levels concatenated in [`anchor_points`] order.
#[derive(Debug, Clone)]
pub struct DetectionOutput<B: Backend> {
    /// `[batch, anchors, classes]` logits.
    pub class_logits: Tensor<B, 3>,
    /// `[batch, anchors, 4 * REG_BINS]` logits of the edge distributions: edge `e`'s bin `k`
    /// (in strides) at `e * REG_BINS + k`, edges left, top, right, bottom.
    pub box_logits: Tensor<B, 3>,
    /// `[batch, anchors, 4]` distances (left, top, right, bottom) in input pixels: the mean of
    /// each edge's distribution times the stride.
    pub distances: Tensor<B, 3>,
}

#[derive(Module, Debug)]
pub struct DetectionHead<B: Backend> {
    levels: Vec<LevelHead<B>>,
}

/// An anchor point: the centre of a cell of one level, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnchorPoint {
    pub x: f32,
    pub y: f32,
    pub stride: f32,
    /// Index into [`STRIDES`].
    pub level: usize,
}

/// All anchor points of a `[height, width]` input, level by level, row-major within a level:
/// the order of the anchor axis of [`DetectionOutput`].
pub fn anchor_points(height: usize, width: usize) -> Vec<AnchorPoint> {
    let mut points = Vec::new();
    for (level, &stride) in STRIDES.iter().enumerate() {
        for gy in 0..height / stride {
            for gx in 0..width / stride {
                points.push(AnchorPoint {
                    x: (gx as f32 + 0.5) * stride as f32,
                    y: (gy as f32 + 0.5) * stride as f32,
                    stride: stride as f32,
                    level,
                });
            }
        }
    }
    points
}

impl DetectionHeadConfig {
    fn branch(&self, cin: usize) -> [ConvBlockConfig; 2] {
        [
            ConvBlockConfig::new([cin, self.hidden]),
            ConvBlockConfig::new([self.hidden, self.hidden]),
        ]
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> DetectionHead<B> {
        let levels = self
            .in_channels
            .iter()
            .zip(STRIDES)
            .map(|(&cin, stride)| {
                let cells = (640.0 / stride as f64).powi(2);
                let bias = (PRIOR_OBJECTS / self.num_classes as f64 / cells).ln();
                let mut cls_out =
                    Conv2dConfig::new([self.hidden, self.num_classes], [1, 1]).init(device);
                cls_out.bias = Some(burn::module::Param::from_tensor(Tensor::full(
                    [self.num_classes],
                    bias,
                    device,
                )));
                LevelHead {
                    cls: self.branch(cin).iter().map(|c| c.init(device)).collect(),
                    cls_out,
                    reg: self.branch(cin).iter().map(|c| c.init(device)).collect(),
                    reg_out: Conv2dConfig::new([self.hidden, 4 * REG_BINS], [1, 1]).init(device),
                }
            })
            .collect();
        DetectionHead { levels }
    }

    /// Multiply-accumulates for a network input of `[height, width]`.
    pub fn macs(&self, hw: [usize; 2]) -> u64 {
        let mut total = 0;
        for (i, &cin) in self.in_channels.iter().enumerate() {
            let at = [hw[0] / STRIDES[i], hw[1] / STRIDES[i]];
            let pixels = (at[0] * at[1]) as u64;
            for c in self.branch(cin) {
                total += 2 * c.macs(at).0;
            }
            total += pixels * (self.hidden * (self.num_classes + 4 * REG_BINS)) as u64;
        }
        total
    }
}

/// `[b, c, h, w]` -> `[b, h*w, c]`.
fn flatten<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// The mean of each edge's distribution, in pixels: `[b, n, 4 * REG_BINS]` -> `[b, n, 4]`.
pub fn expected_distances<B: Backend>(box_logits: Tensor<B, 3>, stride: f32) -> Tensor<B, 3> {
    let [b, n, _] = box_logits.dims();
    let device = box_logits.device();
    let probabilities = softmax(box_logits.reshape([b, n, 4, REG_BINS]), 3);
    let bins: Vec<f32> = (0..REG_BINS).map(|k| k as f32 * stride).collect();
    let bins = Tensor::<B, 1>::from_floats(bins.as_slice(), &device).reshape([1, 1, 1, REG_BINS]);
    (probabilities * bins).sum_dim(3).reshape([b, n, 4])
}

impl<B: Backend> DetectionHead<B> {
    pub fn forward(&self, features: &NeckFeatures<B>) -> DetectionOutput<B> {
        let inputs = [&features.p3, &features.p4, &features.p5];
        let mut logits = Vec::with_capacity(3);
        let mut box_logits = Vec::with_capacity(3);
        let mut distances = Vec::with_capacity(3);
        for ((head, x), stride) in self.levels.iter().zip(inputs).zip(STRIDES) {
            let cls = head.cls.iter().fold(x.clone(), |t, c| c.forward(t));
            let reg = head.reg.iter().fold(x.clone(), |t, c| c.forward(t));
            logits.push(flatten(conv2d::apply(&head.cls_out, cls)));
            let edges = flatten(conv2d::apply(&head.reg_out, reg));
            distances.push(expected_distances(edges.clone(), stride as f32));
            box_logits.push(edges);
        }
        DetectionOutput {
            class_logits: Tensor::cat(logits, 1),
            box_logits: Tensor::cat(box_logits, 1),
            distances: Tensor::cat(distances, 1),
        }
    }
}

impl<B: Backend> DetectionHead<B> {
    /// [`forward`](Self::forward) as graph nodes: class logits, box logits, distances.
    pub(crate) fn trace(&self, g: &mut GraphBuilder, inputs: [ValueId; 3]) -> [ValueId; 3] {
        let mut logits = Vec::with_capacity(3);
        let mut box_logits = Vec::with_capacity(3);
        let mut distances = Vec::with_capacity(3);
        for (i, ((head, x), stride)) in self.levels.iter().zip(inputs).zip(STRIDES).enumerate() {
            let name = format!("detection_head.levels.{i}");
            let mut cls = x;
            for (j, c) in head.cls.iter().enumerate() {
                cls = c.trace(g, &format!("{name}.cls.{j}"), cls);
            }
            let mut reg = x;
            for (j, c) in head.reg.iter().enumerate() {
                reg = c.trace(g, &format!("{name}.reg.{j}"), reg);
            }
            let cls = plain_conv(g, &format!("{name}.cls_out"), &head.cls_out, cls);
            logits.push(g.push(&format!("{name}.cls_rows"), Op::AnchorRows, &[cls]));
            let reg = plain_conv(g, &format!("{name}.reg_out"), &head.reg_out, reg);
            let edges = g.push(&format!("{name}.reg_rows"), Op::AnchorRows, &[reg]);
            distances.push(g.push(
                &format!("{name}.distances"),
                Op::EdgeDistances {
                    bins: REG_BINS,
                    stride,
                },
                &[edges],
            ));
            box_logits.push(edges);
        }
        let cat = Op::Concat { axis: 1 };
        [
            g.push("detection_head.class_logits", cat.clone(), &logits),
            g.push("detection_head.box_logits", cat.clone(), &box_logits),
            g.push("detection_head.distances", cat, &distances),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn distances_are_the_mean_of_each_edge_distribution_in_pixels() {
        let d = Default::default();
        // Anchor 0: uniform logits on every edge (mean 7.5 bins). Anchor 1: edge 0 all but
        // certain of bin 3, edge 1 split evenly between bins 2 and 4, edges 2-3 uniform.
        let mut logits = vec![0.0f32; 2 * 4 * REG_BINS];
        let row = 4 * REG_BINS;
        logits[row..row + REG_BINS].fill(-30.0);
        logits[row + 3] = 30.0;
        logits[row + REG_BINS..row + 2 * REG_BINS].fill(-30.0);
        logits[row + REG_BINS + 2] = 5.0;
        logits[row + REG_BINS + 4] = 5.0;
        let t = Tensor::<Flex, 1>::from_floats(logits.as_slice(), &d).reshape([1, 2, row]);
        let v: Vec<f32> = expected_distances(t, 8.0).into_data().to_vec().unwrap();
        let want = [60.0, 60.0, 60.0, 60.0, 24.0, 24.0, 60.0, 60.0];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-3, "{v:?}");
        }
    }
}
