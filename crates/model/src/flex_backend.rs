//! Recognising the CPU backend (burn-flex, with or without autodiff) inside code generic over
//! `B: Backend`, and moving tensor primitives in and out of it, so that percept's own CPU
//! kernels ([`crate::conv2d`], [`crate::dense`]) can run there while every other backend takes
//! burn's path unchanged.

use std::any::{Any, TypeId};

use burn::backend::flex::Flex;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

/// The CPU training backend.
pub type Train = Autodiff<Flex>;

pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

pub fn is_flex_autodiff<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Train>()
}

/// Moves `value` into type `U` when `T` is `U`.
fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
}

/// `t`'s primitive as backend `P`'s; the caller has checked that `B` is `P` and that `t` is
/// not quantized.
pub fn float<P: Backend, B: Backend, const D: usize>(t: Tensor<B, D>) -> P::FloatTensorPrimitive {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => cast(p).expect("checked: B is P"),
        TensorPrimitive::QFloat(_) => unreachable!("checked: float tensors"),
    }
}

/// The tensor of backend `B` holding `p`; the caller has checked that `B` is `P`.
pub fn tensor<P: Backend, B: Backend, const D: usize>(p: P::FloatTensorPrimitive) -> Tensor<B, D> {
    let p: B::FloatTensorPrimitive = cast(p).expect("checked: B is P");
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
