//! Activation ranges for INT8 quantisation, measured by running the network on calibration
//! frames: the input of every convolution, in forward order (the order of
//! [`InferenceGraph::convs`](crate::InferenceGraph::convs)).
//!
//! Each range is a histogram of `|x|` over every frame, so a range can be the maximum or a
//! percentile: a few outliers (a specular highlight, one saturated channel) would otherwise
//! stretch the scale and leave the common values a handful of the 127 levels, the usual cause
//! of INT8 accuracy lost to calibration.

use std::cell::RefCell;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{ModelError, PerceptionNet};

/// How a convolution input's histogram becomes its range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method", content = "value")]
pub enum RangeMethod {
    /// The largest `|x|` seen.
    Max,
    /// The given percentile (e.g. 99.99) of `|x|` over every value seen.
    Percentile(f64),
}

impl RangeMethod {
    /// Parses `max` or `percentile:P` with `0 < P <= 100`.
    pub fn parse(text: &str) -> Result<RangeMethod, String> {
        if text == "max" {
            return Ok(RangeMethod::Max);
        }
        let p = text
            .strip_prefix("percentile:")
            .and_then(|p| p.parse::<f64>().ok())
            .filter(|p| *p > 0.0 && *p <= 100.0);
        match p {
            Some(p) => Ok(RangeMethod::Percentile(p)),
            None => Err(format!(
                "{text:?} is not a range method: use `max` or `percentile:P` with 0 < P <= 100, \
                 e.g. percentile:99.99"
            )),
        }
    }
}

impl std::fmt::Display for RangeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RangeMethod::Max => write!(f, "max"),
            RangeMethod::Percentile(p) => write!(f, "percentile:{p}"),
        }
    }
}

/// Bins a histogram may grow to before neighbouring bins merge (halving the resolution).
const MAX_BINS: usize = 1 << 14;
/// Bins the first batch spreads its largest value over.
const FIRST_BINS: usize = 2048;

/// Histogram of `|x|` with bins of equal width from 0, grown (and coarsened) as larger values
/// arrive.
#[derive(Debug, Clone, Default)]
struct AbsHistogram {
    width: f64,
    counts: Vec<u64>,
    max: f32,
    total: u64,
}

impl AbsHistogram {
    fn add(&mut self, values: &[f32]) {
        let batch_max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        if self.width == 0.0 {
            self.width = (batch_max as f64).max(1e-12) / FIRST_BINS as f64;
        }
        self.max = self.max.max(batch_max);
        while (self.max as f64 / self.width) as usize >= MAX_BINS {
            self.counts = self.counts.chunks(2).map(|c| c.iter().sum()).collect();
            self.width *= 2.0;
        }
        let bins = (self.max as f64 / self.width) as usize + 1;
        if self.counts.len() < bins {
            self.counts.resize(bins, 0);
        }
        for v in values {
            let bin = ((v.abs() as f64 / self.width) as usize).min(self.counts.len() - 1);
            self.counts[bin] += 1;
        }
        self.total += values.len() as u64;
    }

    /// The range that `method` picks; never above the largest value seen.
    fn range(&self, method: RangeMethod) -> f32 {
        match method {
            RangeMethod::Max => self.max,
            RangeMethod::Percentile(p) => {
                let wanted = (p / 100.0 * self.total as f64).ceil() as u64;
                let mut seen = 0;
                for (i, c) in self.counts.iter().enumerate() {
                    seen += c;
                    if seen >= wanted {
                        return (((i + 1) as f64 * self.width) as f32).min(self.max);
                    }
                }
                self.max
            }
        }
    }
}

thread_local! {
    /// Convolution inputs seen on this thread since recording began, in order.
    static RECORDING: RefCell<Option<Vec<Vec<f32>>>> = const { RefCell::new(None) };
}

/// Called by [`crate::conv2d::apply`] with every convolution input: copies it to the host when
/// this thread is recording.
pub(crate) fn observe<B: Backend>(x: &Tensor<B, 4>) {
    let recording = RECORDING.with(|r| r.borrow().is_some());
    if recording {
        let values: Vec<f32> = x
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 activations");
        RECORDING.with(|r| r.borrow_mut().as_mut().expect("recording").push(values));
    }
}

/// Stops recording when dropped (also on a panic in the forward pass).
struct Recording;

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.with(|r| r.borrow_mut().take());
    }
}

/// Accumulates the convolution inputs of the forward passes it is shown.
#[derive(Debug, Clone, Default)]
pub struct Calibrator {
    histograms: Vec<AbsHistogram>,
    frames: usize,
}

/// The measured ranges: one per convolution, in forward order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationRanges {
    pub method: RangeMethod,
    /// Frames they were measured on.
    pub frames: usize,
    /// `max |x|` the range keeps, per convolution input.
    pub ranges: Vec<f32>,
}

impl Calibrator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `net` on `images` (`[batch, 3, height, width]`, normalised) and adds every
    /// convolution's input to its histogram.
    pub fn observe<B: Backend>(
        &mut self,
        net: &PerceptionNet<B>,
        images: Tensor<B, 4>,
    ) -> Result<(), ModelError> {
        let batch = images.dims()[0];
        let seen = {
            let _recording = Recording;
            RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
            let _ = net.forward(images);
            RECORDING
                .with(|r| r.borrow_mut().take())
                .unwrap_or_default()
        };
        if self.histograms.is_empty() {
            self.histograms = vec![AbsHistogram::default(); seen.len()];
        }
        if seen.len() != self.histograms.len() {
            return Err(ModelError::Config(format!(
                "calibration saw {} convolutions in this forward pass and {} before: the \
                 network changed between batches",
                seen.len(),
                self.histograms.len()
            )));
        }
        for (h, values) in self.histograms.iter_mut().zip(&seen) {
            h.add(values);
        }
        self.frames += batch;
        Ok(())
    }

    /// Frames observed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The ranges `method` picks from everything observed.
    pub fn ranges(&self, method: RangeMethod) -> ActivationRanges {
        ActivationRanges {
            method,
            frames: self.frames,
            ranges: self.histograms.iter().map(|h| h.range(method)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_ranges_by_hand() {
        let mut h = AbsHistogram::default();
        // 10,000 values 0.0001..=1.0 (negative half of them) and one outlier at 50.
        let mut values: Vec<f32> = (1..=10_000).map(|i| i as f32 / 10_000.0).collect();
        for v in values.iter_mut().step_by(2) {
            *v = -*v;
        }
        h.add(&values);
        h.add(&[50.0]);
        assert_eq!(h.range(RangeMethod::Max), 50.0);
        // 99.99 % of 10,001 values is 10,000 values: everything below the outlier, i.e. 1.0
        // to within a bin (the histogram coarsened to bins of 1/2048 * 2^k).
        let p = h.range(RangeMethod::Percentile(99.99));
        assert!((p - 1.0).abs() < 0.01, "{p}");
        // The median of |x| is 0.5.
        let m = h.range(RangeMethod::Percentile(50.0));
        assert!((m - 0.5).abs() < 0.01, "{m}");
        assert_eq!(h.total, 10_001);
    }

    #[test]
    fn range_methods_parse_and_refuse() {
        assert_eq!(RangeMethod::parse("max").unwrap(), RangeMethod::Max);
        assert_eq!(
            RangeMethod::parse("percentile:99.9").unwrap(),
            RangeMethod::Percentile(99.9)
        );
        for bad in ["percentile:0", "percentile:101", "entropy", "percentile:x"] {
            let e = RangeMethod::parse(bad).unwrap_err();
            assert!(e.contains("percentile:P"), "{e}");
        }
    }
}
