//! The basic unit of the network: convolution, batch norm, ReLU.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::batch_norm::{BatchNorm2d, BatchNorm2dConfig};
use crate::conv2d;
use crate::inference_graph::{folded_conv, GraphBuilder, ValueId};

/// Configuration of a [`ConvBlock`].
#[derive(Config, Debug)]
pub struct ConvBlockConfig {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// Square kernel size (odd); padding keeps `height/stride, width/stride`.
    #[config(default = 3)]
    pub kernel: usize,
    #[config(default = 1)]
    pub stride: usize,
}

/// Conv2d (no bias) -> BatchNorm -> ReLU.
///
/// ReLU rather than YOLOv8's SiLU: on burn-flex, SiLU forward + backward costs ten times ReLU
/// (49 ms vs 5 ms for `[8, 16, 96, 160]` on 2 cores), and every block of the network pays it.
///
/// Input `[batch, in, height, width]`, output `[batch, out, height / stride, width / stride]`.
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    pub(crate) conv: Conv2d<B>,
    pub(crate) norm: BatchNorm2d<B>,
}

impl ConvBlockConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvBlock<B> {
        let pad = self.kernel / 2;
        ConvBlock {
            conv: Conv2dConfig::new(self.channels, [self.kernel, self.kernel])
                .with_stride([self.stride, self.stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(device),
            norm: BatchNorm2dConfig::new(self.channels[1]).init(device),
        }
    }

    /// Multiply-accumulates for an input of `[height, width]`; returns them and the output size.
    pub fn macs(&self, hw: [usize; 2]) -> (u64, [usize; 2]) {
        let out = [hw[0].div_ceil(self.stride), hw[1].div_ceil(self.stride)];
        let per_pixel = self.channels[0] * self.channels[1] * self.kernel * self.kernel;
        ((out[0] * out[1] * per_pixel) as u64, out)
    }
}

impl<B: Backend> ConvBlock<B> {
    /// `[batch, in, h, w]` -> `[batch, out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(self.norm.forward(conv2d::apply(&self.conv, x)))
    }
}

impl<B: Backend> ConvBlock<B> {
    /// [`forward`](Self::forward) as one graph node, batch norm folded into the convolution.
    pub(crate) fn trace(&self, g: &mut GraphBuilder, name: &str, x: ValueId) -> ValueId {
        folded_conv(g, name, &self.conv, &self.norm, x)
    }
}
