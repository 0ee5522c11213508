//! Class maps: which percept class each source category becomes. They are data, TOML files in
//! `configs/classmaps/`, not code:
//!
//! ```toml
//! classes = ["pedestrian", "rider", "car"]   # percept's classes; a box's class id is the index
//! ignore = ["DontCare"]                      # become ignore regions
//! drop = ["Misc"]                            # known, not imported (their area is background)
//!
//! [map]
//! "Car" = "car"                              # source category = one of `classes`
//! "Van" = "car"
//! ```
//!
//! A category that is none of `[map]`, `ignore` and `drop` is unmapped: the import stops and
//! lists every unmapped category with its count, or drops them with a count, as the user
//! chooses ([`UnmappedPolicy`]). Matching is exact (case-sensitive).
//!
//! Each format has a built-in map, the file of the same name in `configs/classmaps/`
//! (compiled in, so the binary works anywhere); `--class-map FILE` replaces it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// What a source category becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A box of this class (index into [`ClassMap::classes`]).
    Class(u16),
    /// An ignore region.
    Ignore,
    /// Nothing: the object is not imported.
    Drop,
}

/// What to do with objects whose category the class map does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnmappedPolicy {
    /// Stop before writing anything, listing every unmapped category with its count.
    #[default]
    Error,
    /// Drop such objects and count them in the report.
    Drop,
}

impl std::str::FromStr for UnmappedPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(UnmappedPolicy::Error),
            "drop" => Ok(UnmappedPolicy::Drop),
            other => Err(format!(
                "`{other}` is not an unmapped policy; use error or drop"
            )),
        }
    }
}

/// A parsed, validated class map.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    classes: Vec<String>,
    targets: BTreeMap<String, Target>,
    /// Where it came from (`configs/classmaps/kitti.toml` or `built-in kitti`), for messages.
    origin: String,
    /// blake3 hex of the TOML text: identifies the map in resume checks.
    hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassMapFile {
    classes: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    map: BTreeMap<String, String>,
}

/// The built-in maps, by format name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "bdd100k",
        include_str!("../../../configs/classmaps/bdd100k.toml"),
    ),
    (
        "yolop",
        include_str!("../../../configs/classmaps/bdd100k.toml"),
    ),
    (
        "kitti",
        include_str!("../../../configs/classmaps/kitti.toml"),
    ),
];

impl ClassMap {
    /// The built-in map of a format (`bdd100k`, `yolop`, `kitti`).
    pub fn builtin(format: &str) -> Option<ClassMap> {
        let (_, text) = BUILTIN.iter().find(|(name, _)| *name == format)?;
        let map = ClassMap::parse(text, &format!("the built-in {format} class map"))
            .expect("built-in class maps are valid (tested)");
        Some(map)
    }

    /// Reads and validates a class map file.
    pub fn load(path: &Path) -> Result<ClassMap, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read class map {}: {e}", path.display()))?;
        ClassMap::parse(&text, &path.display().to_string())
    }

    /// Parses and validates class map TOML; errors name `origin` and the key at fault.
    pub fn parse(text: &str, origin: &str) -> Result<ClassMap, String> {
        let file: ClassMapFile =
            toml::from_str(text).map_err(|e| format!("class map {origin}: {e}"))?;
        let bad = |m: String| Err(format!("class map {origin}: {m}"));
        if file.classes.is_empty() {
            return bad("`classes` is empty; list percept's classes in order".into());
        }
        if file.classes.len() > usize::from(u16::MAX) + 1 {
            return bad(format!(
                "`classes` has {} entries; at most 65536",
                file.classes.len()
            ));
        }
        for (i, c) in file.classes.iter().enumerate() {
            if c.trim().is_empty() {
                return bad(format!("`classes[{i}]` is empty"));
            }
            if file.classes[..i].contains(c) {
                return bad(format!("`classes` lists `{c}` twice"));
            }
        }
        let mut targets = BTreeMap::new();
        for (category, class) in &file.map {
            let Some(index) = file.classes.iter().position(|c| c == class) else {
                return bad(format!(
                    "`map.\"{category}\"` is `{class}`, which is not in `classes` ({})",
                    file.classes.join(", ")
                ));
            };
            targets.insert(category.clone(), Target::Class(index as u16));
        }
        for (key, list, target) in [
            ("ignore", &file.ignore, Target::Ignore),
            ("drop", &file.drop, Target::Drop),
        ] {
            for category in list {
                if let Some(previous) = targets.insert(category.clone(), target) {
                    let was = match previous {
                        Target::Class(_) => "[map]",
                        Target::Ignore => "ignore",
                        Target::Drop => "drop",
                    };
                    return bad(format!(
                        "`{category}` is in both `{was}` and `{key}`; a category has one target"
                    ));
                }
            }
        }
        Ok(ClassMap {
            classes: file.classes,
            targets,
            origin: origin.to_string(),
            hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
        })
    }

    /// percept's classes, in class-id order (the dataset manifest's `classes`).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// What `category` becomes; `None` when the map does not name it.
    pub fn resolve(&self, category: &str) -> Option<Target> {
        self.targets.get(category).copied()
    }

    /// Where the map came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// blake3 hex of the map's text.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_maps_parse_and_map_legacy_names() {
        let bdd = ClassMap::builtin("bdd100k").unwrap();
        assert_eq!(bdd.classes().len(), 10);
        let class = |m: &ClassMap, name: &str| {
            Target::Class(m.classes().iter().position(|c| c == name).unwrap() as u16)
        };
        assert_eq!(bdd.resolve("person"), Some(class(&bdd, "pedestrian")));
        assert_eq!(bdd.resolve("bike"), Some(class(&bdd, "bicycle")));
        assert_eq!(bdd.resolve("motor"), Some(class(&bdd, "motorcycle")));
        assert_eq!(bdd.resolve("traffic light"), Some(Target::Class(8)));
        assert_eq!(bdd.resolve("trailer"), Some(Target::Ignore));
        assert_eq!(bdd.resolve("Car"), None, "matching is case-sensitive");
        assert_eq!(ClassMap::builtin("yolop").unwrap().classes(), bdd.classes());

        let kitti = ClassMap::builtin("kitti").unwrap();
        assert_eq!(kitti.classes(), bdd.classes());
        assert_eq!(kitti.resolve("Van"), Some(class(&kitti, "car")));
        assert_eq!(kitti.resolve("DontCare"), Some(Target::Ignore));
        assert_eq!(kitti.resolve("Misc"), Some(Target::Ignore));
        assert!(ClassMap::builtin("coco").is_none());
    }

    #[test]
    fn parse_maps_ignores_and_drops() {
        let m = ClassMap::parse(
            "classes = [\"car\", \"person\"]\nignore = [\"crowd\"]\ndrop = [\"misc\"]\n\
             [map]\nCar = \"car\"\nVan = \"car\"\nPed = \"person\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(m.resolve("Van"), Some(Target::Class(0)));
        assert_eq!(m.resolve("Ped"), Some(Target::Class(1)));
        assert_eq!(m.resolve("crowd"), Some(Target::Ignore));
        assert_eq!(m.resolve("misc"), Some(Target::Drop));
        assert_eq!(m.resolve("Truck"), None);
        assert_eq!(m.origin(), "t.toml");
        assert_eq!(m.hash().len(), 64);
    }

    #[test]
    fn invalid_maps_name_the_key() {
        let err = |text: &str| ClassMap::parse(text, "m.toml").unwrap_err();
        let e = err("classes = [\"car\"]\n[map]\nVan = \"lorry\"\n");
        assert!(
            e.contains("m.toml") && e.contains("map.\"Van\"") && e.contains("lorry"),
            "{e}"
        );
        assert!(e.contains("(car)"), "lists the valid classes: {e}");
        let e = err("classes = [\"car\"]\nignore = [\"Van\"]\n[map]\nVan = \"car\"\n");
        assert!(e.contains("`Van` is in both `[map]` and `ignore`"), "{e}");
        let e = err("classes = []\n");
        assert!(e.contains("`classes` is empty"), "{e}");
        let e = err("classes = [\"car\", \"car\"]\n");
        assert!(e.contains("twice"), "{e}");
        let e = err("classes = [\"car\"]\nclasess = 1\n");
        assert!(e.contains("clasess"), "unknown keys are refused: {e}");
        assert!("keep"
            .parse::<UnmappedPolicy>()
            .unwrap_err()
            .contains("error or drop"));
    }
}
