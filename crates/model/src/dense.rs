//! Dense copies of strided views, in the forward and in the backward pass.
//!
//! Splitting a map along its channels (`chunk`) gives views whose images are strided (each
//! `[batch, c / 2, h, w]` part of a `[batch, c, h, w]` map skips the other half of every
//! image), and `cat`'s backward hands each part the same kind of view of the gradient. burn-flex
//! (the CPU backend) runs element-wise operations with a strided operand through a generic index
//! iterator, several times slower than on dense memory, and a CSP block sums the gradient of
//! each part from such views. [`dense`] makes one copy instead, where the view is made.

use burn::prelude::*;

/// `x` itself, laid out densely on the CPU backend, whose gradient is laid out densely too.
/// On other backends (and for tensors already dense) it is `x`, unchanged.
pub fn dense<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    return cpu::dense(x);
    #[cfg(not(feature = "flex"))]
    x
}

#[cfg(feature = "flex")]
mod cpu {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::prelude::*;

    use crate::flex_backend::{float, is_flex, is_flex_autodiff, tensor, Train};

    pub fn dense<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        if is_flex_autodiff::<B>() {
            let x = float::<Train, B, D>(x);
            let out = x.primitive.to_contiguous();
            let out = DenseGradient
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateless(out);
            tensor::<Train, B, D>(out)
        } else if is_flex::<B>() {
            tensor::<Flex, B, D>(float::<Flex, B, D>(x).to_contiguous())
        } else {
            x
        }
    }

    /// The backward step of [`dense`]: the gradient, laid out densely.
    #[derive(Debug)]
    struct DenseGradient;

    impl Backward<Flex, 1> for DenseGradient {
        type State = ();

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad: FlexTensor = grads.consume::<Flex>(&ops.node);
            if let [Some(parent)] = ops.parents {
                grads.register::<Flex>(parent.id, grad.to_contiguous());
            }
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::flex::Flex;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    use super::dense;
    use crate::flex_backend::{float, Train};

    fn is_dense(t: Tensor<Train, 4>) -> bool {
        float::<Train, Train, 4>(t).primitive.is_contiguous()
    }

    /// `x`'s gradient through a CSP-like split and merge, with or without [`dense`].
    fn split_merge_gradient(x: Tensor<Train, 4>, r: Tensor<Train, 4>, with: bool) -> Vec<f32> {
        let x = x.require_grad();
        let id = |t: Tensor<Train, 4>| if with { dense(t) } else { t };
        let parts: Vec<_> = x.clone().chunk(2, 1).into_iter().map(id).collect();
        let second = parts[1].clone() * 2.0 + parts[1].clone();
        let merged = Tensor::cat(
            vec![id(parts[0].clone()), id(parts[1].clone()), id(second)],
            1,
        );
        let grads = (merged * r).sum().backward();
        x.grad(&grads).unwrap().into_data().to_vec().unwrap()
    }

    #[test]
    fn dense_copies_views_and_keeps_values_and_gradients() {
        let device = Default::default();
        let x = Tensor::<Train, 4>::random([2, 6, 3, 5], Distribution::Default, &device);
        let half = x.clone().chunk(2, 1).remove(1);
        assert!(!is_dense(half.clone()), "a channel half is a strided view");
        let copy = dense(half.clone());
        assert!(is_dense(copy.clone()));
        assert_eq!(copy.into_data(), half.into_data());

        let r = Tensor::<Train, 4>::random([2, 9, 3, 5], Distribution::Default, &device);
        let with = split_merge_gradient(x.clone(), r.clone(), true);
        let without = split_merge_gradient(x, r, false);
        // Equal up to the order in which the three contributions to the second half are added.
        for (a, b) in with.iter().zip(&without) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }

        // Inference (no autodiff) too.
        let y = Tensor::<Flex, 4>::random([2, 4, 3, 3], Distribution::Default, &device);
        let half = y.clone().chunk(2, 1).remove(0);
        assert_eq!(dense(half.clone()).into_data(), half.into_data());
    }
}
