//! CSP backbone: a stride-2 stem and four stride-2 stages of CSP blocks, SPPF at the end.

use burn::prelude::*;

use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::csp_block::{CspBlock, CspBlockConfig};
use crate::inference_graph::{GraphBuilder, ValueId};
use crate::sppf::{Sppf, SppfConfig};

/// Configuration of a [`Backbone`].
#[derive(Config, Debug)]
pub struct BackboneConfig {
    /// Channels of the stem and of stages 1..=4 (strides 2, 4, 8, 16, 32).
    pub widths: [usize; 5],
    /// Bottlenecks in the CSP block of stages 1..=4.
    pub depths: [usize; 4],
}

/// Feature maps of the backbone.
#[derive(Debug, Clone)]
pub struct BackboneFeatures<B: Backend> {
    /// Stride 4: `[batch, widths[1], h/4, w/4]` (fine detail for the segmentation heads).
    pub s4: Tensor<B, 4>,
    /// Stride 8: `[batch, widths[2], h/8, w/8]`.
    pub s8: Tensor<B, 4>,
    /// Stride 16: `[batch, widths[3], h/16, w/16]`.
    pub s16: Tensor<B, 4>,
    /// Stride 32: `[batch, widths[4], h/32, w/32]`.
    pub s32: Tensor<B, 4>,
}

/// One down-sampling stage: a stride-2 conv then a CSP block.
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    down: ConvBlock<B>,
    csp: CspBlock<B>,
}

impl<B: Backend> Stage<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.csp.forward(self.down.forward(x))
    }
}

/// `[batch, 3, h, w]` -> [`BackboneFeatures`]; `h` and `w` must be multiples of 32.
#[derive(Module, Debug)]
pub struct Backbone<B: Backend> {
    stem: ConvBlock<B>,
    stages: Vec<Stage<B>>,
    sppf: Sppf<B>,
}

impl BackboneConfig {
    fn stem(&self) -> ConvBlockConfig {
        ConvBlockConfig::new([3, self.widths[0]]).with_stride(2)
    }
    fn stage(&self, i: usize) -> (ConvBlockConfig, CspBlockConfig) {
        let [cin, cout] = [self.widths[i], self.widths[i + 1]];
        (
            ConvBlockConfig::new([cin, cout]).with_stride(2),
            CspBlockConfig::new([cout, cout], self.depths[i]),
        )
    }
    fn sppf(&self) -> SppfConfig {
        SppfConfig::new(self.widths[4])
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Backbone<B> {
        Backbone {
            stem: self.stem().init(device),
            stages: (0..4)
                .map(|i| {
                    let (down, csp) = self.stage(i);
                    Stage {
                        down: down.init(device),
                        csp: csp.init(device),
                    }
                })
                .collect(),
            sppf: self.sppf().init(device),
        }
    }

    /// Multiply-accumulates for an input of `[height, width]`.
    pub fn macs(&self, hw: [usize; 2]) -> u64 {
        let (mut total, mut hw) = self.stem().macs(hw);
        for i in 0..4 {
            let (down, csp) = self.stage(i);
            let (m, out) = down.macs(hw);
            total += m + csp.macs(out);
            hw = out;
        }
        total + self.sppf().macs(hw)
    }
}

impl<B: Backend> Backbone<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneFeatures<B> {
        let x = self.stem.forward(x);
        let s4 = self.stages[0].forward(x);
        let s8 = self.stages[1].forward(s4.clone());
        let s16 = self.stages[2].forward(s8.clone());
        let s32 = self.sppf.forward(self.stages[3].forward(s16.clone()));
        BackboneFeatures { s4, s8, s16, s32 }
    }
}

/// The backbone's feature maps as graph values (see [`BackboneFeatures`]).
pub(crate) struct TracedFeatures {
    pub s4: ValueId,
    pub s8: ValueId,
    pub s16: ValueId,
    pub s32: ValueId,
}

impl<B: Backend> Backbone<B> {
    /// [`forward`](Self::forward) as graph nodes.
    pub(crate) fn trace(&self, g: &mut GraphBuilder, x: ValueId) -> TracedFeatures {
        let x = self.stem.trace(g, "backbone.stem", x);
        let mut maps = Vec::with_capacity(4);
        let mut x = x;
        for (i, stage) in self.stages.iter().enumerate() {
            let name = format!("backbone.stages.{i}");
            x = stage.down.trace(g, &format!("{name}.down"), x);
            x = stage.csp.trace(g, &format!("{name}.csp"), x);
            maps.push(x);
        }
        let s32 = self.sppf.trace(g, "backbone.sppf", maps[3]);
        TracedFeatures {
            s4: maps[0],
            s8: maps[1],
            s16: maps[2],
            s32,
        }
    }
}
