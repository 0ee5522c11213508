//! A 2D convolution as im2col and one batched matrix product, written in burn tensor ops so
//! that it runs on every backend and burn's autodiff derives both gradients.
//!
//! For `x [batch, in, h, w]` and `weight [out, in, kh, kw]`:
//!
//! ```text
//! columns [batch, in * kh * kw, h_out * w_out]   one strided slice of the padded input per tap
//! out     [batch, out, h_out * w_out] = weight [1, out, in * kh * kw] x columns
//! ```
//!
//! A 1x1 convolution with stride 1 and no padding is the matrix product alone. Backward, burn's
//! autodiff gives `d_weight = sum_b d_out_b x columns_b^T` (the weight gradient as one matrix
//! product per image, summed: what upstream burn 0.22 changed its cubecl weight gradient to),
//! `d_columns = weight^T x d_out`, and col2im as the slices' backward (each tap's gradient
//! added into the padded input's).
//!
//! Why it exists: on the cubecl backends (cuda, wgpu) burn 0.21 autotunes `conv2d` per shape,
//! compiling and timing 21 candidate kernels for each new convolution shape. This path uses
//! shape-generic pad, slice, stack and reshape kernels and burn's matrix product, whose tuning
//! keys are shared by convolutions of similar size (see [`crate::conv_kernels`]).

use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::Slice;

/// `[batch, out, h_out, w_out]`: `x [batch, in, h, w]` convolved with `weight [out, in, kh,
/// kw]` plus `bias [out]`, with symmetric padding `options.padding` (`[rows, columns]`) and
/// `options.groups == 1`.
///
/// # Panics
/// On grouped convolutions and on an input smaller than the dilated kernel, as burn's `conv2d`
/// does; the caller sends grouped ones to burn.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: &ConvOptions<2>,
) -> Tensor<B, 4> {
    assert_eq!(options.groups, 1, "im2col convolves ungrouped convolutions");
    let [batch, channels, height, width] = x.dims();
    let [out_channels, in_channels, kh, kw] = weight.dims();
    assert_eq!(
        channels, in_channels,
        "input has {channels} channels, the weight expects {in_channels}"
    );
    let [sh, sw] = options.stride;
    let [ph, pw] = options.padding;
    let [dh, dw] = options.dilation;
    let span = |size: usize, pad: usize, dilation: usize, k: usize| {
        let reach = dilation * (k - 1) + 1;
        assert!(
            size + 2 * pad >= reach,
            "input side {size} (+2x{pad} padding) is smaller than the kernel's reach {reach}"
        );
        size + 2 * pad - reach
    };
    let h_out = span(height, ph, dh, kh) / sh + 1;
    let w_out = span(width, pw, dw, kw) / sw + 1;
    let taps = in_channels * kh * kw;

    let columns: Tensor<B, 3> = if [kh, kw, sh, sw, ph, pw] == [1, 1, 1, 1, 0, 0] {
        x.reshape([batch, channels, height * width])
    } else {
        let padded = if ph > 0 || pw > 0 {
            x.pad((pw, pw, ph, ph), PadMode::Constant(0.0))
        } else {
            x
        };
        let tap = |start: usize, step: usize, count: usize| {
            let end = start + step * (count - 1) + 1;
            Slice::new(start as isize, Some(end as isize), step as isize)
        };
        let slices = (0..kh)
            .flat_map(|i| (0..kw).map(move |j| (i, j)))
            .map(|(i, j)| {
                padded.clone().slice([
                    Slice::from(0..batch),
                    Slice::from(0..channels),
                    tap(i * dh, sh, h_out),
                    tap(j * dw, sw, w_out),
                ])
            })
            .collect();
        // [batch, in, kh * kw, h_out, w_out]: rows in the weight's (in, kh, kw) order.
        Tensor::stack::<5>(slices, 2).reshape([batch, taps, h_out * w_out])
    };
    let out = weight
        .reshape([1, out_channels, taps])
        .matmul(columns)
        .reshape([batch, out_channels, h_out, w_out]);
    match bias {
        Some(bias) => out + bias.reshape([1, out_channels, 1, 1]),
        None => out,
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tolerance;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    type B = Autodiff<Flex>;

    /// Values uniform in [-1, 1) drawn from the test's own RNG.
    fn random<const D: usize>(shape: [usize; D], rng: &mut ChaCha8Rng) -> Tensor<B, D> {
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    /// Output and the gradients of `x`, weight and bias, through [`conv2d`] and burn's
    /// `conv2d`, for the loss `sum(out * r)`.
    fn compare(x: [usize; 4], w: [usize; 4], bias: bool, options: ConvOptions<2>) {
        let rng = &mut ChaCha8Rng::seed_from_u64(7);
        let x = random(x, rng).require_grad();
        let weight = random(w, rng).require_grad();
        let bias = bias.then(|| random([w[0]], rng).require_grad());
        let ours = conv2d(x.clone(), weight.clone(), bias.clone(), &options);
        let reference =
            burn::tensor::module::conv2d(x.clone(), weight.clone(), bias.clone(), options.clone());
        assert_eq!(ours.dims(), reference.dims(), "{options:?}");
        let r = random(ours.dims(), rng);
        let g_ours = (ours.clone() * r.clone()).sum().backward();
        let g_ref = (reference.clone() * r).sum().backward();
        let tolerance = Tolerance::<f32>::relative(1e-4).set_absolute(1e-4);
        ours.into_data()
            .assert_approx_eq(&reference.into_data(), tolerance);
        for (name, a, b) in [
            ("x", x.grad(&g_ours), x.grad(&g_ref)),
            ("weight", weight.grad(&g_ours), weight.grad(&g_ref)),
        ] {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.dims(), b.dims(), "{name} gradient shape, {options:?}");
            a.into_data().assert_approx_eq(&b.into_data(), tolerance);
        }
        if let Some(bias) = bias {
            let (a, b) = (bias.grad(&g_ours).unwrap(), bias.grad(&g_ref).unwrap());
            a.into_data().assert_approx_eq(&b.into_data(), tolerance);
        }
    }

    #[test]
    fn matches_burns_convolution_and_its_gradients() {
        // The network's shapes: 3x3 stride 1 and 2 padded by 1, 1x1 with bias.
        compare(
            [2, 5, 11, 9],
            [7, 5, 3, 3],
            false,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        compare(
            [2, 4, 13, 10],
            [6, 4, 3, 3],
            false,
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        );
        compare(
            [3, 6, 5, 7],
            [4, 6, 1, 1],
            true,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        // Beyond them: rectangular kernel, uneven stride and dilation, a strided 1x1, no
        // padding, an output of one pixel.
        compare(
            [2, 3, 9, 12],
            [4, 3, 3, 5],
            true,
            ConvOptions::new([1, 2], [2, 1], [2, 1], 1),
        );
        compare(
            [1, 3, 8, 8],
            [2, 3, 1, 1],
            false,
            ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
        );
        compare(
            [1, 2, 6, 5],
            [3, 2, 3, 3],
            true,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        compare(
            [2, 2, 3, 3],
            [2, 2, 3, 3],
            false,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
    }

    #[test]
    fn a_hand_computed_convolution() {
        // One 3x3 image of 1..9, a 2x2 kernel of ones, stride 1, no padding: each output is
        // the sum of a 2x2 window; a bias of 0.5 adds to each.
        let device = Default::default();
        let x = Tensor::<Flex, 4>::from_floats(
            [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]],
            &device,
        );
        let weight = Tensor::<Flex, 4>::ones([1, 1, 2, 2], &device);
        let bias = Tensor::<Flex, 1>::from_floats([0.5], &device);
        let out = conv2d(
            x,
            weight,
            Some(bias),
            &ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        out.into_data().assert_eq(
            &TensorData::from([[[[12.5f32, 16.5], [24.5, 28.5]]]]),
            false,
        );
    }
}
