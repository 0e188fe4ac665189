//! Reading a stage's config, and refusing it so that `sluice validate`
//! points at the line of the pipeline file that holds the key at fault.

use std::fmt;

use sluice_kit::config_path;

use crate::bindings::sluice::plugin::types::ConfigProblem;

/// Why a config was refused: one or more problems, each at a place in the
/// config (`rules[0].window`) or about the config as a whole.
///
/// A plain message converts into one (`Err(format!(...))?` and
/// `Err("...".into())` work); [`ConfigError::at`] names the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// A problem with the config as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self { problems: vec![ConfigProblem { path: Vec::new(), message: message.into() }] }
    }

    /// A problem at `path`: keys joined by `.`, array elements by `[index]`
    /// (`rules[0].window`); a key with other characters in brackets and
    /// quotes (`labels["a.b"]`).
    pub fn at(path: &str, message: impl Into<String>) -> Self {
        Self { problems: vec![ConfigProblem { path: config_path::parse(path), message: message.into() }] }
    }

    /// The same problems, found in the part of a larger config at `path`:
    /// a rule's check that names `window` becomes `rules[3].window`.
    pub fn within(mut self, path: &str) -> Self {
        let prefix = config_path::parse(path);
        for problem in &mut self.problems {
            problem.path.splice(0..0, prefix.iter().cloned());
        }
        self
    }

    /// These problems and `other`'s, to refuse a config for all at once.
    pub fn and(mut self, other: ConfigError) -> Self {
        self.problems.extend(other.problems);
        self
    }

    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

/// What `init` hands the host; not for plugins.
#[doc(hidden)]
pub fn problems(error: ConfigError) -> Vec<ConfigProblem> {
    error.problems
}

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// `rules[0].window: must be ...`, problems separated by `; `, as the host
/// writes a refusal in its log.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, problem) in self.problems.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            match problem.path.is_empty() {
                true => f.write_str(&problem.message)?,
                false => write!(f, "`{}`: {}", config_path::write(&problem.path), problem.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads a config of type `C` from the JSON the host hands `init`; a value
/// of the wrong shape is refused at the key it is under.
pub fn read<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().iter().filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
            serde_path_to_error::Segment::Unknown => None,
        });
        let path = path.collect();
        let inner = error.into_inner();
        // serde_json places the error in the JSON the host generated; the
        // path says where it is in the pipeline file instead.
        let mut message = inner.to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        ConfigError { problems: vec![ConfigProblem { path, message }] }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rules {
        rules: Vec<Rule>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        id: String,
        window: Option<u32>,
    }

    fn paths(error: &ConfigError) -> Vec<Vec<&str>> {
        error.problems().iter().map(|p| p.path.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_refused_at_its_key_without_a_place_in_generated_json() {
        let error = read::<Rules>(r#"{"rules":[{"id":"a"},{"id":"b","window":"5m"}]}"#).unwrap_err();
        assert_eq!(paths(&error), [["rules", "1", "window"]]);
        assert_eq!(error.problems()[0].message, r#"invalid type: string "5m", expected u32"#);
        assert_eq!(error.to_string(), r#"`rules[1].window`: invalid type: string "5m", expected u32"#);
        let unknown = read::<Rules>(r#"{"rules":[{"id":"a","widow":1}]}"#).unwrap_err();
        assert_eq!(paths(&unknown), [["rules", "0", "widow"]]);
        assert!(unknown.problems()[0].message.starts_with("unknown field `widow`"), "{unknown}");
        let missing = read::<Rules>(r#"{}"#).unwrap_err();
        assert_eq!((paths(&missing), missing.problems()[0].message.as_str()), (vec![vec![]], "missing field `rules`"));
    }

    #[test]
    fn problems_are_placed_within_a_larger_config_and_joined() {
        let error = ConfigError::at("window", "must be whole minutes").within("rules[3]").and("and one more".into());
        assert_eq!(paths(&error), [vec!["rules", "3", "window"], vec![]]);
        assert_eq!(error.to_string(), "`rules[3].window`: must be whole minutes; and one more");
    }
}
