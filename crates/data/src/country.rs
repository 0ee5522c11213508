//! Country profiles: what differs between the roads of one country and the global model's
//! (traffic side, road markings, sign families, the class list), as data
//! (`configs/countries/*.toml`). The synthetic generator renders scenes by a profile and a
//! fine-tune maps the global model's classes to the profile's.
//!
//! A profile's class list is a mapping from the global classes: each country class names the
//! global classes it comes `from`. One source: the class is kept (under its own or a new name);
//! several: they are merged; none: the class is new to the country (and says which synthetic
//! `shape` draws it). Global classes that no country class names are dropped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::manifest::is_region_code;
use crate::sample::TrafficSide;

/// One country's roads, as a fine-tune and the synthetic generator need them. Every fact
/// carries its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountryProfile {
    /// ISO 3166-1 alpha-2 code (`JP`): the region of the country's data and its site.
    pub code: String,
    pub name: String,
    pub traffic: TrafficRule,
    pub markings: Markings,
    pub signs: Signs,
    /// Default network input of the country's fine-tune.
    pub input: ProfileInput,
    /// The country's detection classes, in the head's output order.
    pub classes: Vec<ProfileClass>,
}

/// Which side traffic drives on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficRule {
    pub side: TrafficSide,
    pub source: String,
}

/// Colour of the line between the two directions of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineColour {
    White,
    Yellow,
}

/// The edge line at the outer side of the carriageway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeLines {
    /// A continuous white edge line on most roads.
    Solid,
    /// A dashed white edge line.
    Dashed,
    /// Mostly unmarked edges.
    None,
}

/// Lane-marking conventions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Markings {
    pub centre_line: LineColour,
    pub edge_lines: EdgeLines,
    pub source: String,
}

/// Shape and colours of warning signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningSign {
    /// Vienna Convention: white (or yellow) triangle, red border, point up.
    RedTriangle,
    /// Yellow triangle, black border (China).
    YellowTriangle,
    /// Yellow diamond, black border (MUTCD, Japan).
    YellowDiamond,
}

/// Shape of the stop sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopSign {
    /// Red octagon (Vienna Convention, MUTCD, China, India).
    Octagon,
    /// Red triangle, point down (Japan).
    InvertedTriangle,
}

/// Sign families.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signs {
    pub warning: WarningSign,
    pub stop: StopSign,
    pub source: String,
}

/// Default network input, `width x height` (multiples of 32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    pub width: u32,
    pub height: u32,
    /// Why this size.
    pub why: String,
}

/// Synthetic objects a country class new to the global model is drawn as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NewObjectShape {
    /// Three-wheeled motor taxi with a canopy (India's auto-rickshaw).
    AutoRickshaw,
    /// Three-wheeled cargo or passenger tricycle with an open rear bed (China).
    Tricycle,
}

/// One class of a country's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileClass {
    pub name: String,
    /// The global classes it comes from: one (kept), several (merged) or none (new).
    #[serde(default)]
    pub from: Vec<String>,
    /// How the synthetic generator draws a new class (required for new classes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<NewObjectShape>,
    /// Why the class is there (a source, for new and merged classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Where a country class's detection outputs start from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "from")]
pub enum ClassOrigin {
    /// One global class (its index in the global list).
    Kept(usize),
    /// Several global classes.
    Merged(Vec<usize>),
    /// No global class: the outputs start fresh.
    New,
}

/// The global classes of a model mapped onto a country's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMapping {
    /// The global class list the mapping was made against.
    pub global: Vec<String>,
    /// Country classes in order, with their origin.
    pub classes: Vec<(String, ClassOrigin)>,
    /// Global classes no country class comes from.
    pub dropped: Vec<String>,
}

impl ClassMapping {
    /// The identity mapping of `classes` (a fine-tune that keeps the global class list).
    pub fn identity(classes: &[String]) -> Self {
        ClassMapping {
            global: classes.to_vec(),
            classes: classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), ClassOrigin::Kept(i)))
                .collect(),
            dropped: Vec::new(),
        }
    }

    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// For each global class, the country class its labels become (`None`: dropped).
    pub fn relabel(&self) -> Vec<Option<u16>> {
        let mut out = vec![None; self.global.len()];
        for (i, (_, origin)) in self.classes.iter().enumerate() {
            let sources: &[usize] = match origin {
                ClassOrigin::Kept(g) => std::slice::from_ref(g),
                ClassOrigin::Merged(g) => g,
                ClassOrigin::New => &[],
            };
            for &g in sources {
                out[g] = Some(i as u16);
            }
        }
        out
    }

    /// One line per class: `car <- car (kept)`, `heavy vehicle <- truck + bus (merged)`,
    /// `auto-rickshaw (new)`, then `dropped: ...`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .classes
            .iter()
            .map(|(name, origin)| match origin {
                ClassOrigin::Kept(g) if &self.global[*g] == name => format!("{name} (kept)"),
                ClassOrigin::Kept(g) => format!("{name} <- {} (kept, renamed)", self.global[*g]),
                ClassOrigin::Merged(g) => {
                    let names: Vec<&str> = g.iter().map(|&i| self.global[i].as_str()).collect();
                    format!("{name} <- {} (merged)", names.join(" + "))
                }
                ClassOrigin::New => format!("{name} (new: starts fresh)"),
            })
            .collect();
        if !self.dropped.is_empty() {
            lines.push(format!("dropped: {}", self.dropped.join(", ")));
        }
        lines
    }
}

impl CountryProfile {
    /// Parses and validates a profile; `origin` (a path or a built-in's name) is named in
    /// every error.
    pub fn parse(text: &str, origin: &str) -> Result<Self, DataError> {
        let bad = |message: String| DataError::BadProfile {
            origin: origin.to_string(),
            message,
        };
        let de = toml::Deserializer::new(text);
        let profile: CountryProfile = serde_path_to_error::deserialize(de)
            .map_err(|e| bad(format!("{}: {}", e.path(), e)))?;
        profile.validate().map_err(bad)?;
        Ok(profile)
    }

    /// Reads and parses a profile file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), String> {
        if !is_region_code(&self.code) {
            return Err(format!(
                "code = {:?}: expected an ISO 3166-1 alpha-2 code in capitals, like \"JP\"",
                self.code
            ));
        }
        for (key, source) in [
            ("traffic.source", &self.traffic.source),
            ("markings.source", &self.markings.source),
            ("signs.source", &self.signs.source),
            ("input.why", &self.input.why),
        ] {
            if source.trim().is_empty() {
                return Err(format!("{key} is empty: every fact names its source"));
            }
        }
        for (key, v) in [
            ("input.width", self.input.width),
            ("input.height", self.input.height),
        ] {
            if v == 0 || v % 32 != 0 || v > 4096 {
                return Err(format!(
                    "{key} = {v}: expected a multiple of 32 from 32 to 4096"
                ));
            }
        }
        if self.classes.is_empty() {
            return Err("classes is empty: a country needs at least one detection class".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.classes.iter().enumerate() {
            if c.name.trim().is_empty() {
                return Err(format!("classes[{i}].name is empty"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("classes[{i}].name = {:?} appears twice", c.name));
            }
            match (c.from.is_empty(), c.shape) {
                (true, None) => {
                    return Err(format!(
                        "classes[{i}] ({:?}) is new (empty `from`) but has no `shape`: say how \
                         synthetic scenes draw it (\"auto-rickshaw\" or \"tricycle\")",
                        c.name
                    ))
                }
                (false, Some(_)) => {
                    return Err(format!(
                        "classes[{i}] ({:?}) comes from global classes, so it has no `shape` of \
                         its own; remove the key",
                        c.name
                    ))
                }
                _ => {}
            }
            if (c.from.is_empty() || c.from.len() > 1)
                && c.source.as_deref().is_none_or(|s| s.trim().is_empty())
            {
                return Err(format!(
                    "classes[{i}] ({:?}) is new or merged: give the `source` that motivates it",
                    c.name
                ));
            }
        }
        Ok(())
    }

    /// The country's class names, in the head's order.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    /// Maps the `global` classes (a base model's, or the synthetic set) onto this profile's.
    /// A `from` name that `global` lacks, or a global class named by two country classes, is
    /// an error that lists what would be valid.
    pub fn mapping(&self, global: &[String]) -> Result<ClassMapping, DataError> {
        let bad = |message: String| DataError::BadProfile {
            origin: format!("profile {}", self.code),
            message,
        };
        let mut used: Vec<Option<&str>> = vec![None; global.len()];
        let mut classes = Vec::with_capacity(self.classes.len());
        for (i, c) in self.classes.iter().enumerate() {
            let mut sources = Vec::with_capacity(c.from.len());
            for f in &c.from {
                let g = global.iter().position(|x| x == f).ok_or_else(|| {
                    bad(format!(
                        "classes[{i}] ({:?}) comes from {f:?}, which the global model does not \
                         have; its classes are: {}",
                        c.name,
                        global.join(", ")
                    ))
                })?;
                if let Some(other) = used[g] {
                    return Err(bad(format!(
                        "global class {f:?} is claimed by both {other:?} and {:?}; a global \
                         class goes to one country class",
                        c.name
                    )));
                }
                used[g] = Some(&c.name);
                sources.push(g);
            }
            let origin = match sources.len() {
                0 => ClassOrigin::New,
                1 => ClassOrigin::Kept(sources[0]),
                _ => ClassOrigin::Merged(sources),
            };
            classes.push((c.name.clone(), origin));
        }
        let dropped = global
            .iter()
            .zip(&used)
            .filter(|(_, u)| u.is_none())
            .map(|(g, _)| g.clone())
            .collect();
        Ok(ClassMapping {
            global: global.to_vec(),
            classes,
            dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOBAL: [&str; 4] = ["car", "truck", "bus", "cyclist"];

    fn global() -> Vec<String> {
        GLOBAL.iter().map(|s| s.to_string()).collect()
    }

    fn profile(classes: &str) -> String {
        format!(
            r#"
code = "IN"
name = "India"
[traffic]
side = "left"
source = "a"
[markings]
centre_line = "white"
edge_lines = "none"
source = "b"
[signs]
warning = "red-triangle"
stop = "octagon"
source = "c"
[input]
width = 256
height = 160
why = "d"
{classes}
"#
        )
    }

    const IN_CLASSES: &str = r#"
[[classes]]
name = "car"
from = ["car"]
[[classes]]
name = "heavy vehicle"
from = ["truck", "bus"]
source = "merged"
[[classes]]
name = "auto-rickshaw"
shape = "auto-rickshaw"
source = "UVH-26"
"#;

    #[test]
    fn mapping_keeps_merges_adds_and_drops() {
        let p = CountryProfile::parse(&profile(IN_CLASSES), "in.toml").unwrap();
        assert_eq!(p.traffic.side, TrafficSide::Left);
        let m = p.mapping(&global()).unwrap();
        assert_eq!(
            m.classes,
            vec![
                ("car".to_string(), ClassOrigin::Kept(0)),
                ("heavy vehicle".to_string(), ClassOrigin::Merged(vec![1, 2])),
                ("auto-rickshaw".to_string(), ClassOrigin::New),
            ]
        );
        assert_eq!(m.dropped, vec!["cyclist".to_string()]);
        assert_eq!(m.relabel(), vec![Some(0), Some(1), Some(1), None]);
        assert_eq!(
            m.describe(),
            vec![
                "car (kept)",
                "heavy vehicle <- truck + bus (merged)",
                "auto-rickshaw (new: starts fresh)",
                "dropped: cyclist"
            ]
        );
        let id = ClassMapping::identity(&global());
        assert_eq!(id.relabel(), vec![Some(0), Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn bad_profiles_name_the_key_and_what_is_valid() {
        let err = |classes: &str| {
            CountryProfile::parse(&profile(classes), "x.toml")
                .and_then(|p| p.mapping(&global()))
                .unwrap_err()
                .to_string()
        };
        let e = err("[[classes]]\nname = \"tuk\"\nsource = \"s\"\n");
        assert!(e.contains("x.toml") && e.contains("no `shape`"), "{e}");
        let e = err("[[classes]]\nname = \"van\"\nfrom = [\"van\"]\n");
        assert!(
            e.contains("\"van\"") && e.contains("car, truck, bus, cyclist"),
            "{e}"
        );
        let e = err(
            "[[classes]]\nname = \"a\"\nfrom = [\"car\"]\n[[classes]]\nname = \"b\"\nfrom = [\"car\"]\n",
        );
        assert!(e.contains("claimed by both"), "{e}");
        let e = err("[[classes]]\nname = \"a\"\nfrom = [\"car\", \"bus\"]\n");
        assert!(e.contains("`source`"), "{e}");
        let e = CountryProfile::parse(&profile(IN_CLASSES).replace("\"left\"", "\"middle\""), "y")
            .unwrap_err()
            .to_string();
        assert!(e.contains("traffic.side") && e.contains("left"), "{e}");
        let e = CountryProfile::parse(
            &profile(IN_CLASSES).replace("width = 256", "width = 250"),
            "y",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("input.width = 250"), "{e}");
    }
}
