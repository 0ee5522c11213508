//! FPN + PAN neck: a top-down path carries semantics to the fine maps, a bottom-up path carries
//! localisation back to the coarse ones. Outputs at strides 8, 16 and 32.

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::backbone::{BackboneFeatures, TracedFeatures};
use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::csp_block::{CspBlock, CspBlockConfig};
use crate::inference_graph::{GraphBuilder, Op, ValueId};

/// Nearest-neighbour 2x up-sampling: `[b, c, h, w]` -> `[b, c, 2h, 2w]`.
pub fn upsample2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    interpolate(
        x,
        [2 * h, 2 * w],
        InterpolateOptions::new(InterpolateMode::Nearest),
    )
}

/// Configuration of a [`Neck`].
#[derive(Config, Debug)]
pub struct NeckConfig {
    /// Channels at strides 8, 16, 32 (the backbone's and the neck's outputs alike).
    pub widths: [usize; 3],
    /// Bottlenecks per CSP block.
    pub depth: usize,
}

/// Neck outputs, `[batch, widths[i], h/stride, w/stride]` for strides 8, 16, 32.
#[derive(Debug, Clone)]
pub struct NeckFeatures<B: Backend> {
    pub p3: Tensor<B, 4>,
    pub p4: Tensor<B, 4>,
    pub p5: Tensor<B, 4>,
}

#[derive(Module, Debug)]
pub struct Neck<B: Backend> {
    top_down4: CspBlock<B>,
    top_down3: CspBlock<B>,
    down3: ConvBlock<B>,
    bottom_up4: CspBlock<B>,
    down4: ConvBlock<B>,
    bottom_up5: CspBlock<B>,
}

impl NeckConfig {
    fn blocks(&self) -> ([CspBlockConfig; 4], [ConvBlockConfig; 2]) {
        let [c3, c4, c5] = self.widths;
        let csp = |cin, cout| CspBlockConfig::new([cin, cout], self.depth).with_shortcut(false);
        (
            [
                csp(c5 + c4, c4),
                csp(c4 + c3, c3),
                csp(c3 + c4, c4),
                csp(c4 + c5, c5),
            ],
            [
                ConvBlockConfig::new([c3, c3]).with_stride(2),
                ConvBlockConfig::new([c4, c4]).with_stride(2),
            ],
        )
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Neck<B> {
        let ([td4, td3, bu4, bu5], [d3, d4]) = self.blocks();
        Neck {
            top_down4: td4.init(device),
            top_down3: td3.init(device),
            down3: d3.init(device),
            bottom_up4: bu4.init(device),
            down4: d4.init(device),
            bottom_up5: bu5.init(device),
        }
    }

    /// Multiply-accumulates for a network input of `[height, width]`.
    pub fn macs(&self, hw: [usize; 2]) -> u64 {
        let at = |s: usize| [hw[0] / s, hw[1] / s];
        let ([td4, td3, bu4, bu5], [d3, d4]) = self.blocks();
        td4.macs(at(16))
            + td3.macs(at(8))
            + d3.macs(at(8)).0
            + bu4.macs(at(16))
            + d4.macs(at(16)).0
            + bu5.macs(at(32))
    }
}

impl<B: Backend> Neck<B> {
    pub fn forward(&self, f: &BackboneFeatures<B>) -> NeckFeatures<B> {
        let n4 = self.top_down4.forward(Tensor::cat(
            vec![upsample2(f.s32.clone()), f.s16.clone()],
            1,
        ));
        let p3 = self
            .top_down3
            .forward(Tensor::cat(vec![upsample2(n4.clone()), f.s8.clone()], 1));
        let p4 = self
            .bottom_up4
            .forward(Tensor::cat(vec![self.down3.forward(p3.clone()), n4], 1));
        let p5 = self.bottom_up5.forward(Tensor::cat(
            vec![self.down4.forward(p4.clone()), f.s32.clone()],
            1,
        ));
        NeckFeatures { p3, p4, p5 }
    }
}

impl<B: Backend> Neck<B> {
    /// [`forward`](Self::forward) as graph nodes: `[p3, p4, p5]`.
    pub(crate) fn trace(&self, g: &mut GraphBuilder, f: &TracedFeatures) -> [ValueId; 3] {
        let cat = |g: &mut GraphBuilder, name: &str, a, b| {
            g.push(
                &format!("neck.{name}.concat"),
                Op::Concat { axis: 1 },
                &[a, b],
            )
        };
        let up = g.push("neck.top_down4.upsample", Op::UpsampleNearest2, &[f.s32]);
        let x = cat(g, "top_down4", up, f.s16);
        let n4 = self.top_down4.trace(g, "neck.top_down4", x);
        let up = g.push("neck.top_down3.upsample", Op::UpsampleNearest2, &[n4]);
        let x = cat(g, "top_down3", up, f.s8);
        let p3 = self.top_down3.trace(g, "neck.top_down3", x);
        let d = self.down3.trace(g, "neck.down3", p3);
        let x = cat(g, "bottom_up4", d, n4);
        let p4 = self.bottom_up4.trace(g, "neck.bottom_up4", x);
        let d = self.down4.trace(g, "neck.down4", p4);
        let x = cat(g, "bottom_up5", d, f.s32);
        let p5 = self.bottom_up5.trace(g, "neck.bottom_up5", x);
        [p3, p4, p5]
    }
}
