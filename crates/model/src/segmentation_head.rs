//! Segmentation head shared by the drivable-area and lane-line tasks: it up-samples the
//! stride-8 neck output to input resolution, taking in the stride-4 backbone map on the way
//! because lane lines are a few pixels wide.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::neck::upsample2;

/// Configuration of a [`SegmentationHead`].
#[derive(Config, Debug)]
pub struct SegmentationHeadConfig {
    /// Channels of the stride-8 neck map.
    pub in_channels: usize,
    /// Channels of the stride-4 backbone map.
    pub skip_channels: usize,
    /// Width of the first hidden convolution; later ones are half of it.
    pub hidden: usize,
}

/// `p3: [batch, in, h/8, w/8]`, `s4: [batch, skip, h/4, w/4]` -> logits `[batch, 1, h, w]`.
#[derive(Module, Debug)]
pub struct SegmentationHead<B: Backend> {
    reduce: ConvBlock<B>,
    fuse: ConvBlock<B>,
    refine: ConvBlock<B>,
    out: Conv2d<B>,
}

impl SegmentationHeadConfig {
    fn blocks(&self) -> [ConvBlockConfig; 3] {
        let half = (self.hidden / 2).max(8);
        [
            ConvBlockConfig::new([self.in_channels, self.hidden]),
            ConvBlockConfig::new([self.hidden + self.skip_channels, half]),
            ConvBlockConfig::new([half, half]),
        ]
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> SegmentationHead<B> {
        let [reduce, fuse, refine] = self.blocks();
        SegmentationHead {
            out: Conv2dConfig::new([refine.channels[1], 1], [1, 1]).init(device),
            reduce: reduce.init(device),
            fuse: fuse.init(device),
            refine: refine.init(device),
        }
    }

    /// Multiply-accumulates for a network input of `[height, width]`.
    pub fn macs(&self, hw: [usize; 2]) -> u64 {
        let [reduce, fuse, refine] = self.blocks();
        let at = |s: usize| [hw[0] / s, hw[1] / s];
        reduce.macs(at(8)).0
            + fuse.macs(at(4)).0
            + refine.macs(at(2)).0
            + (hw[0] / 2 * hw[1] / 2 * refine.channels[1]) as u64
    }
}

impl<B: Backend> SegmentationHead<B> {
    pub fn forward(&self, p3: Tensor<B, 4>, s4: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = upsample2(self.reduce.forward(p3));
        let x = upsample2(self.fuse.forward(Tensor::cat(vec![x, s4], 1)));
        // A 1x1 conv commutes with nearest up-sampling, so classify at stride 2 and up-sample the
        // logits bilinearly: same capacity, a quarter of the work, smoother thin lines.
        let logits = self.out.forward(self.refine.forward(x));
        let [_, _, h, w] = logits.dims();
        interpolate(
            logits,
            [2 * h, 2 * w],
            InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false),
        )
    }
}
