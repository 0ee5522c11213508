//! Cross-stage-partial block (the C2f form of YOLOv8): half the channels pass straight through,
//! the other half go through a chain of residual bottlenecks whose every output is kept.

use burn::prelude::*;

use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::dense::dense;
use crate::inference_graph::{GraphBuilder, Op, ValueId};

/// Configuration of a [`CspBlock`].
#[derive(Config, Debug)]
pub struct CspBlockConfig {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// Number of bottlenecks.
    pub depth: usize,
    /// Residual connections in the bottlenecks (backbone: yes; neck: no).
    #[config(default = true)]
    pub shortcut: bool,
}

/// Two 3x3 convolutions with an optional residual connection.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    conv1: ConvBlock<B>,
    conv2: ConvBlock<B>,
    shortcut: bool,
}

impl<B: Backend> Bottleneck<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.conv2.forward(self.conv1.forward(x.clone()));
        if self.shortcut {
            x + y
        } else {
            y
        }
    }
}

/// CSP block. `[batch, in, h, w]` -> `[batch, out, h, w]`.
#[derive(Module, Debug)]
pub struct CspBlock<B: Backend> {
    split: ConvBlock<B>,
    bottlenecks: Vec<Bottleneck<B>>,
    merge: ConvBlock<B>,
    hidden: usize,
}

impl CspBlockConfig {
    fn hidden(&self) -> usize {
        (self.channels[1] / 2).max(1)
    }
    fn split(&self) -> ConvBlockConfig {
        ConvBlockConfig::new([self.channels[0], 2 * self.hidden()]).with_kernel(1)
    }
    fn bottleneck_conv(&self) -> ConvBlockConfig {
        ConvBlockConfig::new([self.hidden(), self.hidden()])
    }
    fn merge(&self) -> ConvBlockConfig {
        ConvBlockConfig::new([(2 + self.depth) * self.hidden(), self.channels[1]]).with_kernel(1)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> CspBlock<B> {
        CspBlock {
            split: self.split().init(device),
            bottlenecks: (0..self.depth)
                .map(|_| Bottleneck {
                    conv1: self.bottleneck_conv().init(device),
                    conv2: self.bottleneck_conv().init(device),
                    shortcut: self.shortcut,
                })
                .collect(),
            merge: self.merge().init(device),
            hidden: self.hidden(),
        }
    }

    /// Multiply-accumulates for an input of `[height, width]`.
    pub fn macs(&self, hw: [usize; 2]) -> u64 {
        self.split().macs(hw).0
            + 2 * self.depth as u64 * self.bottleneck_conv().macs(hw).0
            + self.merge().macs(hw).0
    }
}

impl<B: Backend> CspBlock<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.split.forward(x);
        // Both halves and every part's gradient from `cat` are strided views: copied densely
        // once, they make the element-wise work on them (residual adds, gradient sums) fast
        // on the CPU backend.
        let mut parts: Vec<Tensor<B, 4>> = y.chunk(2, 1).into_iter().map(dense).collect();
        debug_assert_eq!(parts[0].dims()[1], self.hidden);
        let mut last = parts[1].clone();
        for bottleneck in &self.bottlenecks {
            last = bottleneck.forward(last);
            parts.push(last.clone());
        }
        self.merge
            .forward(Tensor::cat(parts.into_iter().map(dense).collect(), 1))
    }
}

impl<B: Backend> Bottleneck<B> {
    /// [`forward`](Self::forward) as graph nodes.
    fn trace(&self, g: &mut GraphBuilder, name: &str, x: ValueId) -> ValueId {
        let y = self.conv1.trace(g, &format!("{name}.conv1"), x);
        let y = self.conv2.trace(g, &format!("{name}.conv2"), y);
        if self.shortcut {
            g.push(&format!("{name}.add"), Op::Add, &[x, y])
        } else {
            y
        }
    }
}

impl<B: Backend> CspBlock<B> {
    /// [`forward`](Self::forward) as graph nodes.
    pub(crate) fn trace(&self, g: &mut GraphBuilder, name: &str, x: ValueId) -> ValueId {
        let y = self.split.trace(g, &format!("{name}.split"), x);
        let h = self.hidden;
        let mut parts = vec![
            g.push(
                &format!("{name}.half0"),
                Op::SliceChannels { start: 0, end: h },
                &[y],
            ),
            g.push(
                &format!("{name}.half1"),
                Op::SliceChannels {
                    start: h,
                    end: 2 * h,
                },
                &[y],
            ),
        ];
        let mut last = parts[1];
        for (i, bottleneck) in self.bottlenecks.iter().enumerate() {
            last = bottleneck.trace(g, &format!("{name}.bottlenecks.{i}"), last);
            parts.push(last);
        }
        let cat = g.push(&format!("{name}.concat"), Op::Concat { axis: 1 }, &parts);
        self.merge.trace(g, &format!("{name}.merge"), cat)
    }
}
