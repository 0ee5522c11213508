//! Batch-norm running statistics change in the forward pass, before the update is known to be
//! finite. A skipped (non-finite) step must leave them as they were, or a NaN activation would
//! poison every later evaluation; so they are snapshot before each step and put back when the
//! step is skipped.
//!
//! burn's `RunningState` keeps the newest value pending per thread until it is synced; taking
//! `valid()` syncs it, so snapshot and restore both go through it.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use percept_model::PerceptionNet;

use crate::optim::list_params;

/// Field names of running statistics in percept's modules.
const RUNNING_FIELDS: [&str; 2] = ["running_mean", "running_var"];

/// The running statistics of a network at one moment.
pub struct RunningStats<B: AutodiffBackend> {
    values: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

struct Collect<'a, B: Backend> {
    ids: &'a [ParamId],
    values: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.ids.contains(&param.id) {
            self.values.insert(param.id, param.val().flatten(0, D - 1));
        }
    }
}

struct Restore<'a, B: AutodiffBackend> {
    values: &'a HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Restore<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.values.get(&id) {
            Some(v) => Tensor::from_inner(v.clone().reshape(tensor.shape())),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Ids of the running statistics of `net`.
pub fn running_ids<B: Backend>(net: &PerceptionNet<B>) -> Vec<ParamId> {
    list_params(net)
        .into_iter()
        .filter(|p| {
            p.path
                .rsplit('.')
                .next()
                .is_some_and(|f| RUNNING_FIELDS.contains(&f))
        })
        .map(|p| p.id)
        .collect()
}

impl<B: AutodiffBackend> RunningStats<B> {
    /// The current (synced) values.
    pub fn snapshot(net: &PerceptionNet<B>, ids: &[ParamId]) -> Self {
        let mut c = Collect {
            ids,
            values: HashMap::new(),
        };
        net.valid().visit(&mut c);
        RunningStats { values: c.values }
    }

    /// Puts the snapshot's values back, dropping any pending update.
    pub fn restore(&self, net: PerceptionNet<B>) -> PerceptionNet<B> {
        let _synced = net.valid();
        net.map(&mut Restore::<B> {
            values: &self.values,
        })
    }

    /// Values by id (tests).
    pub fn values(&self) -> &HashMap<ParamId, Tensor<B::InnerBackend, 1>> {
        &self.values
    }
}
