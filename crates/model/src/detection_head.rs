//! Anchor-free, decoupled detection head (one branch classifies, one regresses), shared design
//! over the three neck levels, each level with its own weights.
//!
//! Every cell of every level is an *anchor point* at the cell centre. For each, the head predicts
//! per-class logits and four distances (left, top, right, bottom) from the point to the box
//! edges, in pixels: `softplus(raw) * stride`, so distances are positive and scale with the level.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::softplus;

use crate::conv2d;
use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::neck::NeckFeatures;

/// Strides of the three detection levels.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Prior probability of an object at initialisation; sets the classification bias so the
/// focal loss starts near its steady state instead of swamping the first steps.
const PRIOR_PROBABILITY: f64 = 0.01;

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
    /// `[batch, anchors, 4]` distances (left, top, right, bottom) in input pixels.
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
        let bias = -((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY).ln();
        let levels = self
            .in_channels
            .iter()
            .map(|&cin| {
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
                    reg_out: Conv2dConfig::new([self.hidden, 4], [1, 1]).init(device),
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
            total += pixels * (self.hidden * (self.num_classes + 4)) as u64;
        }
        total
    }
}

/// `[b, c, h, w]` -> `[b, h*w, c]`.
fn flatten<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

impl<B: Backend> DetectionHead<B> {
    pub fn forward(&self, features: &NeckFeatures<B>) -> DetectionOutput<B> {
        let inputs = [&features.p3, &features.p4, &features.p5];
        let mut logits = Vec::with_capacity(3);
        let mut distances = Vec::with_capacity(3);
        for ((head, x), stride) in self.levels.iter().zip(inputs).zip(STRIDES) {
            let cls = head.cls.iter().fold(x.clone(), |t, c| c.forward(t));
            let reg = head.reg.iter().fold(x.clone(), |t, c| c.forward(t));
            logits.push(flatten(conv2d::apply(&head.cls_out, cls)));
            distances.push(flatten(
                softplus(conv2d::apply(&head.reg_out, reg), 1.0) * stride as f64,
            ));
        }
        DetectionOutput {
            class_logits: Tensor::cat(logits, 1),
            distances: Tensor::cat(distances, 1),
        }
    }
}
