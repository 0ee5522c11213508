//! The learning-rate schedule: burn's linear scheduler as a warm-up factor, times burn's cosine
//! or step scheduler (or a constant). burn's `ComposedLrScheduler` has no step member, so the
//! product is taken here; each member's state is its burn record, saved with checkpoints.

use burn::lr_scheduler::cosine::{CosineAnnealingLrScheduler, CosineAnnealingLrSchedulerConfig};
use burn::lr_scheduler::linear::{LinearLrScheduler, LinearLrSchedulerConfig};
use burn::lr_scheduler::step::{StepLrScheduler, StepLrSchedulerConfig};
use burn::lr_scheduler::LrScheduler;
use burn::prelude::Backend;
use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, ScheduleKind};
use crate::TrainError;

enum Decay {
    Cosine(CosineAnnealingLrScheduler),
    Step(StepLrScheduler),
    Constant(f64),
}

/// Learning rate per step.
pub struct LearningRateSchedule {
    warmup: Option<LinearLrScheduler>,
    decay: Decay,
}

/// The schedule's position: its members' burn records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleState {
    pub warmup: Option<usize>,
    pub cosine: Option<usize>,
    pub step: Option<i32>,
}

impl LearningRateSchedule {
    pub fn new(config: &RunConfig) -> Result<Self, TrainError> {
        let s = &config.schedule;
        let lr = config.train.lr;
        let invalid = |e: String| TrainError::Invalid(format!("schedule: {e}"));
        let warmup = (s.warmup_steps > 0)
            .then(|| LinearLrSchedulerConfig::new(s.warmup_start, 1.0, s.warmup_steps).init())
            .transpose()
            .map_err(invalid)?;
        let decay = match s.kind {
            ScheduleKind::Cosine => Decay::Cosine(
                CosineAnnealingLrSchedulerConfig::new(lr, config.train.steps)
                    .with_min_lr(lr * s.min_lr_ratio)
                    .init()
                    .map_err(invalid)?,
            ),
            ScheduleKind::Step => Decay::Step(
                StepLrSchedulerConfig::new(lr, s.step_every)
                    .with_gamma(s.gamma)
                    .init()
                    .map_err(invalid)?,
            ),
            ScheduleKind::Constant => Decay::Constant(lr),
        };
        Ok(LearningRateSchedule { warmup, decay })
    }

    /// The learning rate of the next step.
    pub fn step(&mut self) -> f64 {
        let factor = self.warmup.as_mut().map_or(1.0, |w| w.step());
        let lr = match &mut self.decay {
            Decay::Cosine(c) => c.step(),
            Decay::Step(s) => s.step(),
            Decay::Constant(lr) => *lr,
        };
        lr * factor
    }

    pub fn state<B: Backend>(&self) -> ScheduleState {
        ScheduleState {
            warmup: self.warmup.as_ref().map(|w| w.to_record::<B>()),
            cosine: match &self.decay {
                Decay::Cosine(c) => Some(c.to_record::<B>()),
                _ => None,
            },
            step: match &self.decay {
                Decay::Step(s) => Some(s.to_record::<B>()),
                _ => None,
            },
        }
    }

    /// Continues from `state`, which must come from a schedule of the same kind.
    pub fn restore<B: Backend>(self, state: &ScheduleState) -> Result<Self, String> {
        let mismatch = || "the saved schedule state is of another schedule kind".to_string();
        let warmup = match (self.warmup, state.warmup) {
            (Some(w), Some(r)) => Some(w.load_record::<B>(r)),
            (None, None) => None,
            _ => return Err(mismatch()),
        };
        let decay = match (self.decay, state.cosine, state.step) {
            (Decay::Cosine(c), Some(r), None) => Decay::Cosine(c.load_record::<B>(r)),
            (Decay::Step(s), None, Some(r)) => Decay::Step(s.load_record::<B>(r)),
            (Decay::Constant(lr), None, None) => Decay::Constant(lr),
            _ => return Err(mismatch()),
        };
        Ok(LearningRateSchedule { warmup, decay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use std::path::Path;

    /// The config tests' minimal config with 10 steps at lr 0.1 and this `[schedule]`.
    fn config(schedule: &str) -> RunConfig {
        let good = crate::config::tests::GOOD;
        let head = &good[..good.find("[schedule]").expect("GOOD has a [schedule]")];
        let text = format!(
            "{}[schedule]\n{schedule}\n",
            head.replace("steps = 3", "steps = 10")
                .replace("lr = 0.01", "lr = 0.1")
        );
        RunConfig::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn lrs(s: &mut LearningRateSchedule, n: usize) -> Vec<f64> {
        (0..n).map(|_| s.step()).collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn cosine_with_warmup_matches_hand_computation() {
        let c =
            config("kind = \"cosine\"\nwarmup_steps = 2\nwarmup_start = 0.5\nmin_lr_ratio = 0.0");
        let mut s = LearningRateSchedule::new(&c).unwrap();
        let cos = |i: usize| 0.05 * (1.0 + (i as f64 / 10.0 * std::f64::consts::PI).cos());
        // Warm-up factor 0.5, 0.75, then 1.0: it starts at warmup_start and reaches 1 after
        // warmup_steps steps.
        let factor = [0.5, 0.75];
        let want: Vec<f64> = (0..10)
            .map(|i| cos(i) * factor.get(i).copied().unwrap_or(1.0))
            .collect();
        close(&lrs(&mut s, 10), &want);
    }

    #[test]
    fn step_and_constant_schedules() {
        let c = config("kind = \"step\"\nstep_every = 3\ngamma = 0.5");
        let mut s = LearningRateSchedule::new(&c).unwrap();
        let want = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025];
        close(&lrs(&mut s, 7), &want);
        let c = config("kind = \"constant\"");
        let mut s = LearningRateSchedule::new(&c).unwrap();
        close(&lrs(&mut s, 3), &[0.1; 3]);
    }

    #[test]
    fn restored_schedule_continues_exactly() {
        for kind in [
            "kind = \"cosine\"\nwarmup_steps = 4",
            "kind = \"step\"\nstep_every = 2\nwarmup_steps = 3",
        ] {
            let c = config(kind);
            let mut straight = LearningRateSchedule::new(&c).unwrap();
            let all = lrs(&mut straight, 9);
            let mut first = LearningRateSchedule::new(&c).unwrap();
            let head = lrs(&mut first, 5);
            let state = first.state::<Flex>();
            let json = serde_json::to_string(&state).unwrap();
            let state: ScheduleState = serde_json::from_str(&json).unwrap();
            let mut resumed = LearningRateSchedule::new(&c)
                .unwrap()
                .restore::<Flex>(&state)
                .unwrap();
            let tail = lrs(&mut resumed, 4);
            let joined: Vec<f64> = head.into_iter().chain(tail).collect();
            assert_eq!(joined, all, "{kind}");
        }
        let cosine = LearningRateSchedule::new(&config("kind = \"cosine\"")).unwrap();
        let step = LearningRateSchedule::new(&config("kind = \"step\"")).unwrap();
        assert!(step.restore::<Flex>(&cosine.state::<Flex>()).is_err());
    }
}
