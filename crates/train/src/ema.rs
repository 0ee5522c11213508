//! An exponential moving average of the weights, for validation and for the model files of
//! checkpoints: `ema = d * ema + (1 - d) * weights` after every applied update, with
//! `d = decay * (1 - exp(-updates / warmup_steps))` so that the random initial weights are
//! forgotten quickly (YOLOv5's ramp).
//!
//! Batch-norm running statistics are averaged too, as every float tensor of the model is
//! (YOLOv5's ModelEMA does the same).

use std::collections::HashMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use percept_model::PerceptionNet;

use crate::config::EmaConfig;

/// The averaged weights and how many updates they have seen.
pub struct WeightEma<B: Backend> {
    config: EmaConfig,
    weights: PerceptionNet<B>,
    updates: usize,
}

impl<B: Backend> WeightEma<B> {
    /// Starts the average at `weights` (the initial weights), `updates` updates in.
    pub fn new(config: EmaConfig, weights: PerceptionNet<B>, updates: usize) -> Self {
        WeightEma {
            config,
            weights,
            updates,
        }
    }

    /// The weight of the old average at update number `updates` (1-based).
    pub fn decay_at(config: &EmaConfig, updates: usize) -> f64 {
        config.decay * (1.0 - (-(updates as f64) / config.warmup_steps as f64).exp())
    }

    /// Folds in `current` (the weights after an update).
    pub fn update(&mut self, current: PerceptionNet<B>) {
        self.updates += 1;
        let d = Self::decay_at(&self.config, self.updates);
        let mut previous = Flatten {
            tensors: HashMap::new(),
        };
        self.weights.visit(&mut previous);
        self.weights = current.map(&mut Blend {
            previous: previous.tensors,
            decay: d,
        });
    }

    pub fn weights(&self) -> &PerceptionNet<B> {
        &self.weights
    }

    pub fn updates(&self) -> usize {
        self.updates
    }
}

struct Flatten<B: Backend> {
    tensors: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.tensors.insert(param.id, param.val().flatten(0, D - 1));
    }
}

struct Blend<B: Backend> {
    previous: HashMap<ParamId, Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let blended = match self.previous.remove(&id) {
            Some(old) => {
                let shape = tensor.shape();
                (old.mul_scalar(self.decay)
                    + tensor.flatten::<1>(0, D - 1).mul_scalar(1.0 - self.decay))
                .reshape(shape)
            }
            // A parameter the average has not seen (cannot happen for one architecture).
            None => tensor,
        };
        Param::from_mapped_value(id, blended, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use percept_model::{ModelSize, PerceptionNetConfig, Tasks};

    type B = Flex;

    fn first_weight(net: &PerceptionNet<B>) -> Vec<f32> {
        let mut f = Flatten {
            tensors: HashMap::new(),
        };
        net.visit(&mut f);
        let params = crate::optim::list_params::<B, _>(net);
        f.tensors[&params[0].id]
            .clone()
            .into_data()
            .to_vec()
            .unwrap()
    }

    #[test]
    fn ramp_and_average_match_hand_computation() {
        let config = EmaConfig {
            decay: 0.9,
            warmup_steps: 2,
        };
        let d1 = WeightEma::<B>::decay_at(&config, 1);
        assert!((d1 - 0.9 * (1.0 - (-0.5f64).exp())).abs() < 1e-12);
        assert!((WeightEma::<B>::decay_at(&config, 1_000_000) - 0.9).abs() < 1e-12);

        let device = Default::default();
        let arch = PerceptionNetConfig {
            size: ModelSize::Nano,
            num_classes: 2,
            tasks: Tasks::default(),
        };
        let net: PerceptionNet<B> = arch.init(&device);
        let w0 = first_weight(&net);
        let mut ema = WeightEma::new(config, net.clone(), 0);
        // "Train": add 1 to every parameter, keeping ids.
        let plus_one = net.map(&mut AddOne);
        ema.update(plus_one.clone());
        let w = first_weight(ema.weights());
        for (a, b) in w.iter().zip(&w0) {
            let want = d1 as f32 * b + (1.0 - d1 as f32) * (b + 1.0);
            assert!((a - want).abs() < 1e-5, "{a} vs {want}");
        }
        assert_eq!(ema.updates(), 1);
    }

    struct AddOne;
    impl ModuleMapper<B> for AddOne {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = param.consume();
            Param::from_mapped_value(id, t.add_scalar(1.0), mapper)
        }
    }
}
