//! Segmentation head shared by the drivable-area and lane-line tasks: it up-samples the
//! stride-8 neck output to input resolution, taking in the stride-4 backbone map on the way
//! because lane lines are a few pixels wide.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::conv2d;
use crate::conv_block::{ConvBlock, ConvBlockConfig};
use crate::inference_graph::{plain_conv, GraphBuilder, Op, ValueId};
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
        upsample2_bilinear(conv2d::apply(&self.out, self.refine.forward(x)))
    }
}

impl<B: Backend> SegmentationHead<B> {
    /// [`forward`](Self::forward) as graph nodes.
    pub(crate) fn trace(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        p3: ValueId,
        s4: ValueId,
    ) -> ValueId {
        let x = self.reduce.trace(g, &format!("{name}.reduce"), p3);
        let x = g.push(&format!("{name}.upsample1"), Op::UpsampleNearest2, &[x]);
        let x = g.push(&format!("{name}.concat"), Op::Concat { axis: 1 }, &[x, s4]);
        let x = self.fuse.trace(g, &format!("{name}.fuse"), x);
        let x = g.push(&format!("{name}.upsample2"), Op::UpsampleNearest2, &[x]);
        let x = self.refine.trace(g, &format!("{name}.refine"), x);
        let x = plain_conv(g, &format!("{name}.out"), &self.out, x);
        g.push(
            &format!("{name}.upsample_logits"),
            Op::UpsampleBilinear2,
            &[x],
        )
    }
}

/// Bilinear 2x up-sampling with half-pixel centres and clamped edges (PyTorch's
/// `align_corners=False`): `[b, c, h, w]` -> `[b, c, 2h, 2w]`.
///
/// Built as nearest 2x up-sampling, edge pixels repeated once, then a fixed `[1, 2, 1] / 4`
/// filter on each axis: output `2i` is `x[i-1] / 4 + 3 x[i] / 4`, output `2i + 1` is
/// `3 x[i] / 4 + x[i+1] / 4`, as bilinear has it. Same values as burn's `interpolate(..,
/// Bilinear)`, but made of ops every backend can differentiate: burn-cubecl (wgpu, CUDA) has no
/// bilinear backward.
pub fn upsample2_bilinear<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, c, h, w] = x.dims();
    let device = x.device();
    let u = upsample2(x);
    let (h2, w2) = (2 * h, 2 * w);
    let u = Tensor::cat(
        vec![
            u.clone().narrow(3, 0, 1),
            u.clone(),
            u.clone().narrow(3, w2 - 1, 1),
        ],
        3,
    );
    let u = Tensor::cat(
        vec![u.clone().narrow(2, 0, 1), u.clone(), u.narrow(2, h2 - 1, 1)],
        2,
    );
    let kernel = [1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0].map(|v: f32| v / 16.0);
    let weight = Tensor::<B, 1>::from_floats(kernel, &device)
        .reshape([1, 1, 3, 3])
        .repeat_dim(0, c);
    conv2d::convolve(u, weight, None, ConvOptions::new([1, 1], [0, 0], [1, 1], c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn bilinear_upsampling_matches_interpolate_values_and_gradients() {
        type A = Autodiff<Flex>;
        let d = Default::default();
        let x = Tensor::<A, 4>::random([2, 3, 5, 7], Distribution::Default, &d).require_grad();
        let weights = Tensor::<A, 4>::random([2, 3, 10, 14], Distribution::Default, &d);
        let ours = upsample2_bilinear(x.clone());
        let theirs = interpolate(
            x.clone(),
            [10, 14],
            InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false),
        );
        ours.to_data()
            .assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-6));
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_ours = x.grad(&g_ours).unwrap();
        let g_theirs = (theirs * weights).sum().backward();
        let g_theirs = x.grad(&g_theirs).unwrap();
        g_ours
            .to_data()
            .assert_approx_eq::<f32>(&g_theirs.to_data(), Tolerance::absolute(1e-5));
    }
}
