//! The country profiles built into the binary (`configs/countries/*.toml`, compiled in), and
//! [`resolve_profile`], which turns a `--country` value or a config's `finetune.profile` into
//! a profile: a built-in's two-letter code, or the path of a profile file.

use std::path::Path;

use percept_data::{CountryProfile, DataError};

/// The built-in profiles' codes and texts, in code order.
const BUILTIN: [(&str, &str); 6] = [
    ("CN", include_str!("../configs/countries/cn.toml")),
    ("DE", include_str!("../configs/countries/de.toml")),
    ("GB", include_str!("../configs/countries/gb.toml")),
    ("IN", include_str!("../configs/countries/in.toml")),
    ("JP", include_str!("../configs/countries/jp.toml")),
    ("US", include_str!("../configs/countries/us.toml")),
];

/// The codes of the built-in profiles, in order: `CN`, `DE`, `GB`, `IN`, `JP`, `US`.
pub fn builtin_codes() -> Vec<&'static str> {
    BUILTIN.iter().map(|(code, _)| *code).collect()
}

/// The built-in profiles, parsed, in code order. They are tested to parse; a failure here is
/// a build with a broken profile file, reported with the file's name.
pub fn builtin_profiles() -> Result<Vec<CountryProfile>, DataError> {
    BUILTIN
        .iter()
        .map(|(code, text)| CountryProfile::parse(text, &builtin_origin(code)))
        .collect()
}

/// The built-in profile of `code` (case-insensitive), if there is one.
pub fn builtin_profile(code: &str) -> Option<Result<CountryProfile, DataError>> {
    BUILTIN
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map(|(c, text)| CountryProfile::parse(text, &builtin_origin(c)))
}

fn builtin_origin(code: &str) -> String {
    format!(
        "built-in {code} (configs/countries/{}.toml)",
        code.to_lowercase()
    )
}

/// The profile `arg` names: two ASCII letters are a built-in's code (case-insensitive: `jp`,
/// `JP`); anything else is the path of a profile file (`.toml`), relative to `base_dir` when
/// one is given (a config's directory) and to the working directory otherwise. An unknown
/// code is an error that lists the built-in codes and says a path works too.
pub fn resolve_profile(arg: &str, base_dir: Option<&Path>) -> Result<CountryProfile, DataError> {
    let arg = arg.trim();
    if arg.len() == 2 && arg.chars().all(|c| c.is_ascii_alphabetic()) {
        return builtin_profile(arg).unwrap_or_else(|| {
            Err(DataError::BadProfile {
                origin: arg.to_string(),
                message: format!(
                    "no built-in country profile `{}`; the built-in ones are {}, or give the \
                     path of a profile file (.toml, like configs/countries/jp.toml)",
                    arg.to_uppercase(),
                    builtin_codes().join(", ")
                ),
            })
        });
    }
    let path = Path::new(arg);
    let path = match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    if !path.exists() {
        return Err(DataError::BadProfile {
            origin: path.display().to_string(),
            message: format!(
                "no such profile file; give a built-in country code ({}) or the path of a \
                 profile file (.toml)",
                builtin_codes().join(", ")
            ),
        });
    }
    CountryProfile::load(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use percept_data::{StopSign, TrafficSide};
    use percept_synth::SYNTH_CLASSES;

    #[test]
    fn builtins_parse_and_match_their_files() {
        let all = builtin_profiles().unwrap();
        let codes: Vec<&str> = all.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["CN", "DE", "GB", "IN", "JP", "US"]);
        assert_eq!(builtin_codes(), codes);
        let global: Vec<String> = SYNTH_CLASSES.iter().map(|c| c.to_string()).collect();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/countries");
        for p in &all {
            p.mapping(&global).unwrap();
            let file = dir.join(format!("{}.toml", p.code.to_lowercase()));
            assert_eq!(&CountryProfile::load(&file).unwrap(), p);
        }
    }

    #[test]
    fn codes_are_case_insensitive_and_anything_else_is_a_path() {
        let jp = resolve_profile("jp", None).unwrap();
        assert_eq!(jp.code, "JP");
        assert_eq!(jp.traffic.side, TrafficSide::Left);
        assert_eq!(jp.signs.stop, StopSign::InvertedTriangle);
        assert_eq!(resolve_profile("JP", None).unwrap(), jp);
        assert_eq!(resolve_profile(" In ", None).unwrap().code, "IN");

        // A path, relative to the base directory when one is given.
        let dir = tempfile::tempdir().unwrap();
        let mut custom = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/countries/de.toml"),
        )
        .unwrap();
        custom = custom.replace("code = \"DE\"", "code = \"AT\"");
        std::fs::write(dir.path().join("at.toml"), &custom).unwrap();
        let at = resolve_profile("at.toml", Some(dir.path())).unwrap();
        assert_eq!(at.code, "AT");
        let abs = dir.path().join("at.toml");
        assert_eq!(
            resolve_profile(abs.to_str().unwrap(), Some(Path::new("/nowhere")))
                .unwrap()
                .code,
            "AT"
        );
    }

    #[test]
    fn a_bad_value_lists_the_builtins() {
        let err = resolve_profile("XX", None).unwrap_err().to_string();
        assert!(err.contains("`XX`"), "{err}");
        assert!(err.contains("CN, DE, GB, IN, JP, US"), "{err}");
        assert!(err.contains("path"), "{err}");
        let err = resolve_profile("nowhere/fr.toml", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere/fr.toml") && err.contains("no such profile file"));
        assert!(err.contains("CN, DE, GB, IN, JP, US"), "{err}");
        // A file that is not a profile names its key.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "code = \"FR\"\n").unwrap();
        let err = resolve_profile("bad.toml", Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }
}
