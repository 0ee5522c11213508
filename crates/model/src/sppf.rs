//! Spatial pyramid pooling, fast form: three chained 5x5 max-pools widen the receptive field of
//! the deepest feature map at little cost.

use burn::prelude::*;
use burn::tensor::module::max_pool2d;

use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::inference_graph::{GraphBuilder, Op, ValueId};

/// Configuration of [`Sppf`].
#[derive(Config, Debug)]
pub struct SppfConfig {
    /// Channels in and out.
    pub channels: usize,
}

/// `[batch, c, h, w]` -> `[batch, c, h, w]`.
#[derive(Module, Debug)]
pub struct Sppf<B: Backend> {
    reduce: ConvBlock<B>,
    expand: ConvBlock<B>,
}

impl SppfConfig {
    fn reduce(&self) -> ConvBlockConfig {
        ConvBlockConfig::new([self.channels, self.channels / 2]).with_kernel(1)
    }
    fn expand(&self) -> ConvBlockConfig {
        ConvBlockConfig::new([2 * self.channels, self.channels]).with_kernel(1)
    }
    pub fn init<B: Backend>(&self, device: &B::Device) -> Sppf<B> {
        Sppf {
            reduce: self.reduce().init(device),
            expand: self.expand().init(device),
        }
    }
    pub fn macs(&self, hw: [usize; 2]) -> u64 {
        self.reduce().macs(hw).0 + self.expand().macs(hw).0
    }
}

impl<B: Backend> Sppf<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pool = |t: Tensor<B, 4>| max_pool2d(t, [5, 5], [1, 1], [2, 2], [1, 1], false);
        let x = self.reduce.forward(x);
        let p1 = pool(x.clone());
        let p2 = pool(p1.clone());
        let p3 = pool(p2.clone());
        self.expand.forward(Tensor::cat(vec![x, p1, p2, p3], 1))
    }
}

impl<B: Backend> Sppf<B> {
    /// [`forward`](Self::forward) as graph nodes.
    pub(crate) fn trace(&self, g: &mut GraphBuilder, name: &str, x: ValueId) -> ValueId {
        let pool = Op::MaxPool {
            kernel: 5,
            padding: 2,
        };
        let x = self.reduce.trace(g, &format!("{name}.reduce"), x);
        let p1 = g.push(&format!("{name}.pool1"), pool.clone(), &[x]);
        let p2 = g.push(&format!("{name}.pool2"), pool.clone(), &[p1]);
        let p3 = g.push(&format!("{name}.pool3"), pool, &[p2]);
        let cat = g.push(
            &format!("{name}.concat"),
            Op::Concat { axis: 1 },
            &[x, p1, p2, p3],
        );
        self.expand.trace(g, &format!("{name}.expand"), cat)
    }
}
