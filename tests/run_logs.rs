//! What a real training run writes about itself, read back: `metrics.jsonl` through the one
//! set of line types, the charts `percept plot` draws from it, and the TensorBoard event file.

use std::collections::BTreeMap;
use std::path::Path;

use percept::commands;
use percept::eval::metrics_log::{MetricsLine, METRICS_FILE};
use percept::eval::plot::{plot_run, PlotOptions};
use percept::train::tensorboard::TENSORBOARD_DIR;
use percept::train::DeviceSpec;
use tfrecord::protobuf::event::What;
use tfrecord::protobuf::summary::value::Value;
use tfrecord::{Event, EventIter, RecordReaderConfig};

mod common;
use common::{run_config, synth, H, W};

/// Every event of the run's event files.
fn events(run_dir: &Path) -> Vec<Event> {
    let dir = run_dir.join(TENSORBOARD_DIR);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    // TensorBoard only reads files with "tfevents" in the name.
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    EventIter::open(&files[0], RecordReaderConfig::default())
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
}

#[test]
fn a_short_run_is_read_back_from_its_metrics_charts_and_tensorboard_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), "DE", 8, 3);
    let mut config = run_config(dir.path(), &[&data], "DE", 4, "");
    config.checkpoint.every = 0;
    config.validation.every = 2;
    let summary = commands::train(&config, DeviceSpec::Cpu).unwrap();
    let run = summary.run_dir;

    // metrics.jsonl, through the types the trainer wrote it with.
    let text = std::fs::read_to_string(run.join(METRICS_FILE)).unwrap();
    let lines: Vec<MetricsLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Step(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let validations: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Validation(v) => Some(v.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        validations.iter().map(|v| v.step).collect::<Vec<_>>(),
        [2, 4]
    );
    assert!(steps
        .iter()
        .all(|s| s.loss.total.is_finite() && s.lr.is_some()));
    assert_eq!(steps[3].loss, summary.final_losses);
    assert_eq!(validations[0].weights, "raw");
    assert_eq!(validations[0].datasets[0].images, 4);
    // Every line reads back to the same bytes.
    for (line, text) in lines.iter().zip(text.lines()) {
        assert_eq!(line.to_json(), text);
    }

    // The charts percept plot draws from it: one loss point per step and term present.
    let plotted = plot_run(&run, None, &PlotOptions::default()).unwrap();
    assert_eq!(plotted.step_lines, 4);
    assert_eq!(plotted.validation_lines, 2);
    let loss = &plotted.charts[0];
    assert!(loss.path.ends_with("loss.png"), "{}", loss.path.display());
    let epochs = lines
        .iter()
        .filter(|l| matches!(l, MetricsLine::Epoch(_)))
        .count();
    // 8 frames, 2 per step: the 4th step ends the first epoch.
    assert_eq!(epochs, 1);
    assert_eq!(plotted.epoch_lines, 1);
    assert_eq!(
        loss.points(),
        (4 + 1) * 6,
        "(4 steps + 1 epoch) x (total + 5 terms)"
    );
    for chart in &plotted.charts {
        assert!(chart.path.exists(), "{}", chart.path.display());
    }

    // The TensorBoard events: a file version, then the same scalars at the same steps.
    let events = events(&run);
    assert!(matches!(&events[0].what, Some(What::FileVersion(v)) if v == "brain.Event:2"));
    let mut scalars: BTreeMap<(String, i64), f32> = BTreeMap::new();
    let mut images = Vec::new();
    for e in &events {
        let Some(What::Summary(summary)) = &e.what else {
            continue;
        };
        for v in &summary.value {
            match &v.value {
                Some(Value::SimpleValue(x)) => {
                    scalars.insert((v.tag.clone(), e.step), *x);
                }
                Some(Value::Image(img)) => images.push((v.tag.clone(), e.step, img.clone())),
                _ => {}
            }
        }
    }
    for s in &steps {
        let at = |tag: &str| scalars.get(&(tag.to_string(), s.step as i64)).copied();
        assert_eq!(at("loss/total"), Some(s.loss.total), "step {}", s.step);
        assert_eq!(at("loss/lanes"), s.loss.lanes);
        assert_eq!(at("train/lr"), s.lr.map(|v| v as f32));
    }
    for v in &validations {
        let at = |tag: &str| scalars.get(&(tag.to_string(), v.step as i64)).copied();
        assert_eq!(
            at("val/raw/drivable_miou"),
            v.mean.drivable_miou.map(|x| x as f32)
        );
    }
    // Two example overlays per validation, PNGs of the frame's size.
    assert_eq!(images.len(), 2 * validations.len());
    for (tag, step, img) in &images {
        assert!(tag.starts_with("val/raw/example-"), "{tag}");
        assert!(*step == 2 || *step == 4);
        let decoded = image::load_from_memory(&img.encoded_image_string).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (W, H));
        assert_eq!((img.width as u32, img.height as u32), (W, H));
    }
}
