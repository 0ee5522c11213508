//! 2D convolution for the network's layers, through the path [`crate::conv_kernels`] selects:
//! burn's `conv2d`, the backend-generic im2col + matrix product ([`crate::im2col`]), or, on the
//! CPU backend, percept's own im2col + GEMM kernels (this file's `cpu` module).
//!
//! burn 0.21 computes a convolution's weight gradient on burn-flex (the CPU backend) as another
//! convolution: input and output gradient swapped to `[channels, batch, h, w]` (two strided
//! copies) and the output gradient used as an `[h_out, w_out]` kernel. Measured on 2 cores, that
//! was 30% of a nano training step; its input gradient (a transposed convolution whose col2im is
//! a scalar loop over one image at a time) another 12%. percept's CPU kernels compute every
//! direction the textbook way, per image and in parallel over images, with one column matrix
//! `columns [in * kh * kw, h_out * w_out]` (im2col of the image):
//!
//! - forward: `out_b [out, h_out * w_out] = weight [out, in * kh * kw] x columns`;
//! - weight gradient: `d_weight += d_out_b x columns^T`;
//! - input gradient: `d_x_b = col2im(weight^T x d_out_b)`.
//!
//! The GEMM is burn-flex's own (the `gemm` crate), with its AVX-512 kernels enabled (chosen at
//! run time; AVX2 machines get the AVX2 ones). `Flex` and `Autodiff<Flex>` with `f32` tensors
//! and `groups == 1` take this path, checked at run time by type so that the network stays
//! generic over burn's `Backend`.

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::module;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType};

use crate::conv_kernels::{self, ConvKernels};
use crate::im2col;
use crate::precision::{self, Precision};

/// Applies `conv` (burn's module: its parameters, stride, padding, dilation and groups) to
/// `x [batch, in, height, width]`, giving `[batch, out, height_out, width_out]` as
/// `conv.forward(x)` does: exactly in f32, or in bf16 arithmetic inside
/// [`autocast`](crate::precision::autocast)`(Precision::Bf16)` (the result is f32 either way),
/// through the kernels [`conv_kernels::current`] names.
pub fn apply<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    crate::calibration::observe(&x);
    // Symmetric padding only; `Same` and asymmetric padding take burn's path, in f32.
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return conv.forward(x),
    };
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups);
    let bias = conv.bias.as_ref().map(|b| b.val());
    if precision::current() == Precision::Bf16 && x.dtype() == DType::F32 {
        let out = convolve(
            x.cast(FloatDType::BF16),
            conv.weight.val().cast(FloatDType::BF16),
            bias.map(|b| b.cast(FloatDType::BF16)),
            options,
        );
        return out.cast(FloatDType::F32);
    }
    convolve(x, conv.weight.val(), bias, options)
}

/// The kernels [`apply`] runs on backend `B` for the setting `kernels`: `Auto` resolved
/// (see [`crate::conv_kernels`]), to itself on the CPU backend (percept's CPU kernels).
pub fn resolve<B: Backend>(kernels: ConvKernels) -> ConvKernels {
    match kernels {
        ConvKernels::Auto if uses_cpu_kernels::<B>() => ConvKernels::Auto,
        ConvKernels::Auto if is_cuda::<B>() => ConvKernels::Im2col,
        ConvKernels::Auto => ConvKernels::Burn,
        chosen => chosen,
    }
}

/// The name of what [`resolve`] picks on `B`: `cpu-gemm`, `im2col` or `burn`.
pub fn resolved_name<B: Backend>(kernels: ConvKernels) -> String {
    match resolve::<B>(kernels) {
        ConvKernels::Auto => "cpu-gemm".into(),
        chosen => chosen.to_string(),
    }
}

/// Whether `B` runs on burn-cuda (with or without fusion and autodiff). By type name: the
/// model crate is generic over backends and does not link the CUDA backend.
fn is_cuda<B: Backend>() -> bool {
    std::any::type_name::<B>().contains("CudaRuntime")
}

/// `burn::tensor::module::conv2d(x, weight, bias, options)` through the kernels
/// [`conv_kernels::current`] names (symmetric padding `options.padding`); what [`apply`] runs,
/// for convolutions with fixed weights.
pub fn convolve<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    match resolve::<B>(conv_kernels::current()) {
        ConvKernels::Im2col if options.groups == 1 => im2col::conv2d(x, weight, bias, &options),
        ConvKernels::Auto => {
            #[cfg(feature = "flex")]
            let (x, weight, bias, options) = match cpu::conv2d(x, weight, bias, options) {
                Ok(out) => return out,
                Err(declined) => declined,
            };
            module::conv2d(x, weight, bias, options)
        }
        _ => module::conv2d(x, weight, bias, options),
    }
}

/// Whether [`apply`] runs its own im2col + GEMM kernels on backend `B` by default.
pub fn uses_cpu_kernels<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        cpu::is_flex::<B>() || cpu::is_flex_autodiff::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

#[cfg(feature = "flex")]
mod cpu {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::prelude::*;
    use burn::tensor::ops::{ConvOptions, FloatTensor};
    use burn::tensor::{DType, TensorData, TensorMetadata};
    use rayon::prelude::*;

    use crate::flex_backend::{float, tensor, Train};
    pub use crate::flex_backend::{is_flex, is_flex_autodiff};

    type Args<B> = (
        Tensor<B, 4>,
        Tensor<B, 4>,
        Option<Tensor<B, 1>>,
        ConvOptions<2>,
    );

    /// The convolution by im2col + GEMM (through [`Conv2dGradients`] when training), or the
    /// arguments back when `B`, the dtype or the groups are not this path's.
    pub fn conv2d<B: Backend>(
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        options: ConvOptions<2>,
    ) -> Result<Tensor<B, 4>, Args<B>> {
        let eligible = options.groups == 1
            && [x.dtype(), weight.dtype()] == [DType::F32; 2]
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        if eligible && is_flex_autodiff::<B>() {
            let (x, weight) = (float::<Train, _, 4>(x), float::<Train, _, 4>(weight));
            let out = forward(x, weight, bias.map(float::<Train, _, 1>), options);
            Ok(tensor::<Train, B, 4>(out))
        } else if eligible && is_flex::<B>() {
            let (x, weight) = (float::<Flex, _, 4>(x), float::<Flex, _, 4>(weight));
            let bias = bias.map(float::<Flex, _, 1>);
            Ok(tensor::<Flex, B, 4>(convolve(
                &x,
                &weight,
                bias.as_ref(),
                &options,
            )))
        } else {
            Err((x, weight, bias, options))
        }
    }

    fn forward(
        x: FloatTensor<Train>,
        weight: FloatTensor<Train>,
        bias: Option<FloatTensor<Train>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Train> {
        let bias_values = bias.as_ref().map(|b| &b.primitive);
        let out = convolve(&x.primitive, &weight.primitive, bias_values, &options);
        let (x_node, weight_node) = (x.node.clone(), weight.node.clone());
        match bias {
            Some(bias) => record(
                Conv2dGradients
                    .prepare::<NoCheckpointing>([x_node, weight_node, bias.node.clone()])
                    .compute_bound()
                    .stateful(),
                &x,
                &weight,
                out,
                options,
            ),
            None => record(
                Conv2dGradients
                    .prepare::<NoCheckpointing>([x_node, weight_node])
                    .compute_bound()
                    .stateful(),
                &x,
                &weight,
                out,
                options,
            ),
        }
    }

    type State = (NodeId, NodeId, ConvOptions<2>);

    /// Puts the convolution's output in the graph, keeping `x` and the weight for the backward
    /// step when a gradient is wanted.
    fn record<const N: usize>(
        kind: OpsKind<Conv2dGradients, Flex, State, NoCheckpointing, N>,
        x: &FloatTensor<Train>,
        weight: &FloatTensor<Train>,
        out: FlexTensor,
        options: ConvOptions<2>,
    ) -> FloatTensor<Train> {
        match kind {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(x), prep.checkpoint(weight), options);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    /// The backward step of a convolution: parents `[x, weight]` or `[x, weight, bias]`.
    #[derive(Debug)]
    struct Conv2dGradients;

    impl<const N: usize> Backward<Flex, N> for Conv2dGradients {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, N>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let d_out = grads.consume::<Flex>(&ops.node);
            let (x_id, weight_id, options) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_id);
            let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_id);
            let mut parents = ops.parents.into_iter();
            let (x_node, weight_node) = (parents.next().flatten(), parents.next().flatten());
            if let Some(node) = parents.next().flatten() {
                grads.register::<Flex>(node.id, bias_gradient(&d_out));
            }
            let problem = Problem::new(&x, &weight, &d_out, &options);
            if let Some(node) = weight_node {
                grads.register::<Flex>(node.id, problem.weight_gradient());
            }
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, problem.input_gradient());
            }
        }
    }

    fn values(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>().expect("contiguous f32 tensor")
    }

    /// `d_bias [out]`: the output gradient summed over batch and pixels.
    fn bias_gradient(d_out: &FlexTensor) -> FlexTensor {
        let d_out = d_out.to_contiguous();
        let [batch, channels, h, w] = d_out.shape().dims();
        let d = values(&d_out);
        let sums = (0..channels)
            .map(|c| {
                (0..batch)
                    .map(|b| {
                        let start = (b * channels + c) * h * w;
                        d[start..start + h * w].iter().sum::<f32>()
                    })
                    .sum::<f32>()
            })
            .collect();
        FlexTensor::from_data(TensorData::new(sums, [channels]))
    }

    /// The tensors of one convolution's backward step, contiguous, and its geometry.
    struct Problem {
        x: FlexTensor,
        d_out: FlexTensor,
        weight: FlexTensor,
        geometry: Geometry,
        batch: usize,
        out_channels: usize,
    }

    impl Problem {
        fn new(
            x: &FlexTensor,
            weight: &FlexTensor,
            d_out: &FlexTensor,
            options: &ConvOptions<2>,
        ) -> Self {
            let (x, d_out, weight) = (
                x.to_contiguous(),
                d_out.to_contiguous(),
                weight.to_contiguous(),
            );
            let geometry = Geometry::new(x.shape().dims(), weight.shape().dims(), options);
            let [batch, out_channels] = [x.shape()[0], weight.shape()[0]];
            Problem {
                x,
                d_out,
                weight,
                geometry,
                batch,
                out_channels,
            }
        }

        /// `x_b [in, h, w]`.
        fn image(&self, b: usize) -> &[f32] {
            self.geometry.image(values(&self.x), b)
        }

        /// `d_out_b [out, h_out * w_out]` as a matrix.
        fn d_out(&self, b: usize) -> View<'_> {
            let len = self.out_channels * self.geometry.pixels();
            View {
                data: &values(&self.d_out)[b * len..(b + 1) * len],
                row: self.geometry.pixels(),
                col: 1,
            }
        }

        fn gemm_threads(&self) -> gemm::Parallelism {
            gemm_threads(self.batch)
        }

        /// `d_weight [out, in, kh, kw]` = sum over images of `d_out_b x im2col(x_b)^T`.
        fn weight_gradient(&self) -> FlexTensor {
            // Summed column-major ([rows, out]), transposed once at the end.
            let sum = self.weight_gradient_sum(0..self.batch);
            let (rows, out) = (self.geometry.rows(), self.out_channels);
            let d_weight = (0..out * rows)
                .map(|i| sum[(i % rows) * out + i / rows])
                .collect();
            FlexTensor::from_data(TensorData::new(d_weight, self.weight.shape()))
        }

        /// The sum over `images`, added up along a binary tree that depends only on the
        /// batch size: the same rounding whatever the thread count or scheduling, so runs
        /// stay bit-reproducible (rayon's `fold` would group by work stealing).
        fn weight_gradient_sum(&self, images: std::ops::Range<usize>) -> Vec<f32> {
            const IMAGES_PER_LEAF: usize = 2;
            if images.len() > IMAGES_PER_LEAF {
                let mid = images.start + images.len() / 2;
                let (mut a, b) = rayon::join(
                    || self.weight_gradient_sum(images.start..mid),
                    || self.weight_gradient_sum(mid..images.end),
                );
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                return a;
            }
            let (rows, pixels) = (self.geometry.rows(), self.geometry.pixels());
            let mut sum = vec![0.0f32; self.out_channels * rows];
            let mut buffer = Vec::new();
            for b in images {
                let columns = self.geometry.columns(self.image(b), &mut buffer);
                let columns_t = View {
                    data: columns,
                    row: 1,
                    col: pixels,
                };
                let shape = [self.out_channels, pixels, rows];
                // A column-major result lets gemm read the large column matrix in place:
                // row-major, it would copy it transposed into its panels first (measured: that
                // copy took longer than the multiply-adds).
                let sum_view = ViewMut {
                    data: &mut sum,
                    row: 1,
                    col: self.out_channels,
                };
                matmul(
                    sum_view,
                    true,
                    self.d_out(b),
                    columns_t,
                    shape,
                    self.gemm_threads(),
                );
            }
            sum
        }

        /// `d_x [batch, in, h, w]`: per image `columns = weight^T x d_out_b`, then col2im.
        fn input_gradient(&self) -> FlexTensor {
            let (rows, pixels) = (self.geometry.rows(), self.geometry.pixels());
            let shape = [rows, self.out_channels, pixels];
            // weight [out, rows] read transposed.
            let weight_t = View {
                data: values(&self.weight),
                row: 1,
                col: rows,
            };
            let mut d_x = vec![0.0f32; self.batch * self.geometry.image_len()];
            d_x.par_chunks_mut(self.geometry.image_len())
                .enumerate()
                .for_each_init(Vec::new, |buffer, (b, d_image)| {
                    if self.geometry.is_identity() {
                        matmul(
                            ViewMut::rows(d_image, pixels),
                            false,
                            weight_t,
                            self.d_out(b),
                            shape,
                            self.gemm_threads(),
                        );
                    } else {
                        buffer.resize(rows * pixels, 0.0);
                        matmul(
                            ViewMut::rows(buffer, pixels),
                            false,
                            weight_t,
                            self.d_out(b),
                            shape,
                            self.gemm_threads(),
                        );
                        self.geometry.col2im(buffer, d_image);
                    }
                });
            FlexTensor::from_data(TensorData::new(d_x, self.x.shape()))
        }
    }

    /// Images run in parallel when there are at least as many as threads; else each GEMM runs
    /// on every thread.
    fn gemm_threads(batch: usize) -> gemm::Parallelism {
        if batch >= rayon::current_num_threads() {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(0)
        }
    }

    /// The convolution itself, `[batch, in, h, w]` -> `[batch, out, h_out, w_out]`: per image
    /// `out_b [out, h_out * w_out] = weight [out, rows] x im2col(x_b)`, plus the bias. The same
    /// column matrix as the weight gradient's, so both sides of the step share one layout
    /// (burn-flex's own kernel converts to NHWC and back for every call).
    fn convolve(
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: Option<&FlexTensor>,
        options: &ConvOptions<2>,
    ) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let bias = bias.map(|b| b.to_contiguous());
        let geometry = Geometry::new(x.shape().dims(), weight.shape().dims(), options);
        let [batch, out_channels] = [x.shape()[0], weight.shape()[0]];
        let rows = geometry.rows();
        let pixels = geometry.pixels();
        let w = View {
            data: values(&weight),
            row: rows,
            col: 1,
        };
        let mut out = vec![0.0f32; batch * out_channels * pixels];
        if out.is_empty() {
            let shape = [batch, out_channels, geometry.out_hw[0], geometry.out_hw[1]];
            return FlexTensor::from_data(TensorData::new(out, shape));
        }
        out.par_chunks_mut(out_channels * pixels)
            .enumerate()
            .for_each_init(Vec::new, |buffer, (b, out_b)| {
                let columns = geometry.columns(geometry.image(values(&x), b), buffer);
                if let Some(bias) = &bias {
                    for (row, &b) in out_b.chunks_mut(pixels).zip(values(bias)) {
                        row.fill(b);
                    }
                }
                let columns = View {
                    data: columns,
                    row: pixels,
                    col: 1,
                };
                let shape = [out_channels, rows, pixels];
                matmul(
                    ViewMut::rows(out_b, pixels),
                    bias.is_some(),
                    w,
                    columns,
                    shape,
                    gemm_threads(batch),
                );
            });
        let shape = [batch, out_channels, geometry.out_hw[0], geometry.out_hw[1]];
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    /// A matrix over a slice: element `(r, c)` is `data[r * row + c * col]`.
    #[derive(Clone, Copy)]
    struct View<'a> {
        data: &'a [f32],
        row: usize,
        col: usize,
    }

    /// A writable matrix over a slice, laid out like [`View`].
    struct ViewMut<'a> {
        data: &'a mut [f32],
        row: usize,
        col: usize,
    }

    impl<'a> ViewMut<'a> {
        /// Row-major `[rows, cols]` over `data`.
        fn rows(data: &'a mut [f32], cols: usize) -> Self {
            ViewMut {
                data,
                row: cols,
                col: 1,
            }
        }
    }

    /// `dst [m, n] = (dst if accumulate) + lhs [m, k] x rhs [k, n]`.
    fn matmul(
        dst: ViewMut,
        accumulate: bool,
        lhs: View,
        rhs: View,
        [m, k, n]: [usize; 3],
        parallelism: gemm::Parallelism,
    ) {
        let last =
            |[row, col]: [usize; 2], rows: usize, cols: usize| (rows - 1) * row + (cols - 1) * col;
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                for r in 0..m {
                    for c in 0..n {
                        dst.data[r * dst.row + c * dst.col] = 0.0;
                    }
                }
            }
            return;
        }
        assert!(last([dst.row, dst.col], m, n) < dst.data.len());
        assert!(last([lhs.row, lhs.col], m, k) < lhs.data.len());
        assert!(last([rhs.row, rhs.col], k, n) < rhs.data.len());
        // SAFETY: the asserts above keep every element gemm reads or writes inside the
        // slices; `dst` is borrowed mutably, so it aliases neither input.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.data.as_mut_ptr(),
                dst.col as isize,
                dst.row as isize,
                accumulate,
                lhs.data.as_ptr(),
                lhs.col as isize,
                lhs.row as isize,
                rhs.data.as_ptr(),
                rhs.col as isize,
                rhs.row as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }

    /// Where each kernel tap of a convolution reads its input.
    struct Geometry {
        in_channels: usize,
        in_hw: [usize; 2],
        out_hw: [usize; 2],
        kernel: [usize; 2],
        options: ConvOptions<2>,
    }

    impl Geometry {
        fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Self {
            let [_, in_channels, height, width] = x;
            let [_, _, kh, kw] = weight;
            let out = |axis: usize, size: usize, k: usize| {
                let span = options.dilation[axis] * (k - 1) + 1;
                (size + 2 * options.padding[axis]).saturating_sub(span) / options.stride[axis] + 1
            };
            Geometry {
                in_channels,
                in_hw: [height, width],
                out_hw: [out(0, height, kh), out(1, width, kw)],
                kernel: [kh, kw],
                options: options.clone(),
            }
        }

        /// Rows of the column matrix: `in * kh * kw`.
        fn rows(&self) -> usize {
            self.in_channels * self.kernel[0] * self.kernel[1]
        }

        /// Columns of the column matrix: output pixels.
        fn pixels(&self) -> usize {
            self.out_hw[0] * self.out_hw[1]
        }

        fn image_len(&self) -> usize {
            self.in_channels * self.in_hw[0] * self.in_hw[1]
        }

        /// Image `b [in, h, w]` of a contiguous `[batch, in, h, w]` tensor.
        fn image<'a>(&self, x: &'a [f32], b: usize) -> &'a [f32] {
            &x[b * self.image_len()..(b + 1) * self.image_len()]
        }

        /// A 1x1, stride-1, unpadded convolution: the image is its own column matrix.
        fn is_identity(&self) -> bool {
            self.kernel == [1, 1]
                && self.options.stride == [1, 1]
                && self.options.padding == [0, 0]
                && self.in_hw == self.out_hw
        }

        /// The output positions along `axis` whose tap `tap` reads inside the image, and the
        /// input position of the first: output `o` reads `o * stride - pad + tap * dilation`.
        fn inside(&self, axis: usize, tap: usize) -> (std::ops::Range<usize>, usize) {
            let (stride, pad) = (self.options.stride[axis], self.options.padding[axis]);
            let offset = tap * self.options.dilation[axis];
            let (size, outs) = (self.in_hw[axis], self.out_hw[axis]);
            let first = pad.saturating_sub(offset).div_ceil(stride);
            // o * stride + offset - pad < size  <=>  o * stride < size + pad - offset
            let end = (size + pad)
                .checked_sub(offset)
                .map_or(0, |limit| limit.div_ceil(stride))
                .min(outs);
            let first = first.min(end);
            (first..end, (first * stride + offset).saturating_sub(pad))
        }

        /// Calls `run(column, input, len)` for every stretch of one output row whose taps fall
        /// inside the image: column entries `column..column + len` of the `[in * kh * kw,
        /// h_out * w_out]` column matrix read input elements `input, input + stride_x, ...`
        /// of `[in, h, w]`. Entries never visited are taps in the padding.
        fn for_each_run(&self, mut run: impl FnMut(usize, usize, usize)) {
            let [h, w] = self.in_hw;
            let [out_h, out_w] = self.out_hw;
            let [kh, kw] = self.kernel;
            for c in 0..self.in_channels {
                for i in 0..kh {
                    let (ys, y0) = self.inside(0, i);
                    for j in 0..kw {
                        let (xs, x0) = self.inside(1, j);
                        let row = (c * kh + i) * kw + j;
                        for (k, oy) in ys.clone().enumerate() {
                            let y = y0 + k * self.options.stride[0];
                            run(
                                (row * out_h + oy) * out_w + xs.start,
                                (c * h + y) * w + x0,
                                xs.len(),
                            );
                        }
                    }
                }
            }
        }

        /// The column matrix of `image`: the image itself for a 1x1 convolution, else its
        /// im2col in `buffer`.
        fn columns<'a>(&self, image: &'a [f32], buffer: &'a mut Vec<f32>) -> &'a [f32] {
            if self.is_identity() {
                return image;
            }
            let len = self.rows() * self.pixels();
            if buffer.len() != len {
                // Padding taps are never written by `im2col`: zero them once per buffer.
                buffer.clear();
                buffer.resize(len, 0.0);
            }
            self.im2col(image, buffer);
            buffer
        }

        /// `image [in, h, w]` -> `columns [in * kh * kw, h_out * w_out]`. Padding taps are left
        /// as they are (zero in a buffer from [`Geometry::columns`]).
        fn im2col(&self, image: &[f32], columns: &mut [f32]) {
            let step = self.options.stride[1];
            self.for_each_run(|column, input, len| {
                let dst = &mut columns[column..column + len];
                if step == 1 {
                    dst.copy_from_slice(&image[input..input + len]);
                } else {
                    for (k, v) in dst.iter_mut().enumerate() {
                        *v = image[input + k * step];
                    }
                }
            });
        }

        /// The adjoint of [`Geometry::im2col`]: `image [in, h, w] += ` every column entry
        /// added back onto the input element it was read from.
        fn col2im(&self, columns: &[f32], image: &mut [f32]) {
            let step = self.options.stride[1];
            self.for_each_run(|column, input, len| {
                let src = &columns[column..column + len];
                if step == 1 {
                    let dst = &mut image[input..input + len];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    for (k, s) in src.iter().enumerate() {
                        image[input + k * step] += s;
                    }
                }
            });
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    use super::*;

    type B = Autodiff<Flex>;

    /// Largest `|a - b| / (1 + |b|)`.
    fn max_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        let scale = b.clone().abs().add_scalar(1.0);
        (a - b).abs().div(scale).max().into_scalar()
    }

    /// Output and gradients of `x`, weight and bias through `apply` and through burn's own
    /// `Conv2d::forward`, for a loss `sum(out * r)` with random `r`.
    fn compare(config: Conv2dConfig, input: [usize; 4]) {
        let device = Default::default();
        let conv = config.init::<B>(&device);
        let x =
            Tensor::<B, 4>::random(input, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let ours = apply(&conv, x.clone());
        let reference = conv.forward(x.clone());
        assert_eq!(ours.dims(), reference.dims());
        let r = Tensor::<B, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads_ours = (ours.clone() * r.clone()).sum().backward();
        let grads_ref = (reference.clone() * r).sum().backward();
        assert!(max_diff(ours.inner(), reference.inner()) < 1e-6);
        let dx = max_diff(x.grad(&grads_ours).unwrap(), x.grad(&grads_ref).unwrap());
        let dw = max_diff(
            conv.weight.grad(&grads_ours).unwrap(),
            conv.weight.grad(&grads_ref).unwrap(),
        );
        assert!(dx < 1e-5, "{config:?}: x gradient differs by {dx}");
        assert!(dw < 1e-4, "{config:?}: weight gradient differs by {dw}");
        if let Some(bias) = &conv.bias {
            let db = max_diff(
                bias.grad(&grads_ours).unwrap(),
                bias.grad(&grads_ref).unwrap(),
            );
            assert!(db < 1e-4, "{config:?}: bias gradient differs by {db}");
        }
    }

    #[test]
    fn gradients_match_burns_convolution() {
        let pad = |p| PaddingConfig2d::Explicit(p, p, p, p);
        // The network's shapes: 3x3 stride 1 and 2 without bias, 1x1 with bias.
        compare(
            Conv2dConfig::new([5, 7], [3, 3])
                .with_padding(pad(1))
                .with_bias(false),
            [3, 5, 11, 9],
        );
        compare(
            Conv2dConfig::new([4, 6], [3, 3])
                .with_stride([2, 2])
                .with_padding(pad(1))
                .with_bias(false),
            [2, 4, 13, 10],
        );
        compare(Conv2dConfig::new([6, 3], [1, 1]), [2, 6, 5, 7]);
        // Beyond them: rectangular kernel, uneven stride, dilation, no padding, bias.
        compare(
            Conv2dConfig::new([3, 4], [3, 5])
                .with_stride([1, 2])
                .with_dilation([2, 1])
                .with_padding(PaddingConfig2d::Explicit(2, 1, 2, 1)),
            [2, 3, 9, 12],
        );
        compare(
            Conv2dConfig::new([2, 3], [3, 3]).with_padding(PaddingConfig2d::Valid),
            [1, 2, 6, 5],
        );
        // More images than threads (parallel over images) and fewer (parallel GEMM).
        compare(
            Conv2dConfig::new([3, 5], [3, 3])
                .with_padding(pad(1))
                .with_bias(false),
            [rayon::current_num_threads() * 2 + 1, 3, 6, 6],
        );
    }

    #[test]
    fn gradients_do_not_depend_on_the_thread_count() {
        let gradients = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let device = Default::default();
                // Fixed values (not the shared RNG, which tests running in parallel also draw).
                let values = |n: usize, shape: [usize; 4]| {
                    let v = (0..n)
                        .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 37.0)
                        .collect();
                    Tensor::<B, 4>::from_data(TensorData::new(v, shape), &device)
                };
                let mut conv = Conv2dConfig::new([3, 4], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init::<B>(&device);
                conv.weight = burn::module::Param::from_tensor(values(108, [4, 3, 3, 3]));
                let x = values(7 * 3 * 9 * 8, [7, 3, 9, 8]).require_grad();
                let grads = apply(&conv, x.clone()).powi_scalar(2).sum().backward();
                let dw = conv.weight.grad(&grads).unwrap().into_data();
                (dw, x.grad(&grads).unwrap().into_data())
            })
        };
        let one = gradients(1);
        assert_eq!(one, gradients(3));
        assert_eq!(one, gradients(2));
    }

    #[test]
    fn the_cpu_backend_takes_the_gemm_path() {
        assert!(uses_cpu_kernels::<Autodiff<Flex>>());
        assert!(uses_cpu_kernels::<Flex>());
        assert_eq!(resolve::<Flex>(ConvKernels::Auto), ConvKernels::Auto);
        assert_eq!(resolve::<B>(ConvKernels::Im2col), ConvKernels::Im2col);
        assert_eq!(resolve::<B>(ConvKernels::Burn), ConvKernels::Burn);
    }

    #[test]
    fn every_kernel_choice_matches_burns_convolution() {
        let pad = |p| PaddingConfig2d::Explicit(p, p, p, p);
        for kernels in ConvKernels::ALL {
            let _kernels = crate::use_conv_kernels(kernels);
            compare(
                Conv2dConfig::new([4, 6], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(pad(1)),
                [2, 4, 13, 10],
            );
            compare(Conv2dConfig::new([6, 3], [1, 1]), [2, 6, 5, 7]);
        }
    }

    #[test]
    fn inference_matches_burns_convolution() {
        let device = Default::default();
        let configs = [
            (
                Conv2dConfig::new([5, 7], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
                [3, 5, 11, 9],
            ),
            (Conv2dConfig::new([6, 3], [1, 1]), [2, 6, 5, 7]),
            (
                Conv2dConfig::new([4, 6], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
                [2, 4, 13, 10],
            ),
        ];
        for (config, input) in configs {
            let conv = config.init::<Flex>(&device);
            let x = Tensor::<Flex, 4>::random(input, Distribution::Normal(0.0, 1.0), &device);
            let diff = max_diff(apply(&conv, x.clone()), conv.forward(x));
            assert!(diff < 1e-6, "{config:?}: output differs by {diff}");
        }
    }

    #[test]
    fn grouped_and_asymmetric_convolutions_use_burns_path_unchanged() {
        let device = Default::default();
        let grouped = Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(2)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&device);
        let asymmetric = Conv2dConfig::new([2, 3], [2, 2])
            .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
            .init::<B>(&device);
        for (conv, input) in [(grouped, [2, 4, 5, 5]), (asymmetric, [2, 2, 5, 5])] {
            let x = Tensor::<B, 4>::random(input, Distribution::Default, &device);
            let diff = max_diff(apply(&conv, x.clone()).inner(), conv.forward(x).inner());
            assert_eq!(diff, 0.0);
        }
    }

    /// `t` rounded to bfloat16 (to nearest) and back to f32.
    fn bf16_rounded<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Tensor<Bk, D> {
        t.cast(FloatDType::BF16).cast(FloatDType::F32)
    }

    /// `|a - b| / |b|` over all elements (relative L2 distance).
    fn relative_l2<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        let norm = |t: Tensor<Flex, D>| t.powi_scalar(2).sum().sqrt().into_scalar();
        norm(a - b.clone()) / norm(b)
    }

    #[test]
    fn bf16_autocast_convolves_rounded_operands_and_keeps_f32_gradients() {
        let device = Default::default();
        let conv = Conv2dConfig::new([6, 8], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&device);
        let x = Tensor::<B, 4>::random([2, 6, 10, 12], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let half = {
            let _bf16 = precision::autocast(Precision::Bf16);
            apply(&conv, x.clone())
        };
        let full = apply(&conv, x.clone());
        assert_eq!(half.dtype(), DType::F32);

        // What bf16 arithmetic gives: operands rounded to bf16, products summed, the sum
        // rounded to bf16. The summation order may differ, which can move a result by one bf16
        // unit in the last place when it lies near a rounding boundary.
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let expected = bf16_rounded(module::conv2d(
            bf16_rounded(x.clone().inner()),
            bf16_rounded(conv.weight.val().inner()),
            conv.bias.as_ref().map(|b| bf16_rounded(b.val().inner())),
            options,
        ));
        let got = half.clone().inner().into_data().to_vec::<f32>().unwrap();
        let expected = expected.into_data().to_vec::<f32>().unwrap();
        // One bf16 ulp of a bf16 value: 2^(exponent - 7), from the f32 bit pattern.
        let ulp = |v: f32| f32::from_bits((((v.to_bits() >> 23) & 0xff).max(8) - 7) << 23);
        let off_by: Vec<f32> = got
            .iter()
            .zip(&expected)
            .map(|(g, e)| (g - e).abs() / ulp(*e))
            .collect();
        let worst = off_by.iter().cloned().fold(0.0, f32::max);
        assert!(
            worst <= 1.0,
            "bf16 output is {worst} ulp from the reference"
        );
        let exact = off_by.iter().filter(|d| **d == 0.0).count() as f32;
        assert!(exact / expected.len() as f32 > 0.95, "only {exact} exact");
        // ...and not the f32 result.
        let rel = relative_l2(half.clone().inner(), full.clone().inner());
        assert!(rel > 1e-4 && rel < 1e-2, "bf16 vs f32 output: {rel}");

        // Gradients come back in f32 to f32 weights, close to the f32 convolution's.
        let r = Tensor::<B, 4>::random(full.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads_half = (half * r.clone()).sum().backward();
        let grads_full = (full * r).sum().backward();
        let dw = conv.weight.grad(&grads_half).unwrap();
        assert_eq!(dw.dtype(), DType::F32);
        let dw_rel = relative_l2(dw, conv.weight.grad(&grads_full).unwrap());
        let dx_rel = relative_l2(x.grad(&grads_half).unwrap(), x.grad(&grads_full).unwrap());
        let db_rel = relative_l2(
            conv.bias.as_ref().unwrap().grad(&grads_half).unwrap(),
            conv.bias.as_ref().unwrap().grad(&grads_full).unwrap(),
        );
        for (name, rel) in [("weight", dw_rel), ("x", dx_rel), ("bias", db_rel)] {
            assert!(rel < 1e-2, "{name} gradient, bf16 vs f32: {rel}");
        }
        assert!(
            dw_rel > 1e-5,
            "the weight gradient saw no bf16 rounding: {dw_rel}"
        );
    }
}
