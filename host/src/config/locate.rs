//! Finds where in a pipeline file a key of a stage's `config` is written,
//! so that a plugin's refusal of its config points at that line.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The span of `path` in the `config` of stage `stage` of pipeline
/// `pipeline`: the key of the deepest part of the path the file holds (a
/// key the plugin wants and the file lacks is pointed at by its table), or
/// the stage itself when it has no `config`. `None` when the file does not
/// hold that stage.
pub fn stage_config(source: &str, pipeline: &str, stage: &str, path: &[String]) -> Option<Range<usize>> {
    let root = DeTable::parse(source).ok()?;
    let stage = named(root.get_ref().get("pipeline")?, pipeline).and_then(|p| named(table(p)?.get("stage")?, stage))?;
    let Some((key, config)) = table(stage)?.get_key_value("config") else {
        return Some(stage.span());
    };
    let (mut at, mut value) = (key.span(), config);
    for segment in path {
        match value.get_ref() {
            DeValue::Table(table) => match table.get_key_value(segment.as_str()) {
                Some((key, inner)) => (at, value) = (key.span(), inner),
                None => break,
            },
            DeValue::Array(array) => match segment.parse::<usize>().ok().and_then(|n| array.get(n)) {
                Some(inner) => (at, value) = (inner.span(), inner),
                None => break,
            },
            _ => break,
        }
    }
    Some(at)
}

/// The element of an array of tables whose `name` is `name`.
fn named<'a, 'i>(array: &'a Spanned<DeValue<'i>>, name: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    let DeValue::Array(array) = array.get_ref() else { return None };
    array.iter().find(|element| table(element).and_then(|t| t.get("name")).is_some_and(|n| matches!(n.get_ref(), DeValue::String(s) if s == name)))
}

fn table<'a, 'i>(value: &'a Spanned<DeValue<'i>>) -> Option<&'a DeTable<'i>> {
    match value.get_ref() {
        DeValue::Table(table) => Some(table),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"[[pipeline]]
name = "ingest"

  [[pipeline.stage]]
  name = "check"
  plugin = "validate"

  [[pipeline.stage]]
  name = "alert"
  plugin = "alert"
  config = { rules = [{ id = "p95", window = "90s" }, { id = "p99" }] }

[[pipeline]]
name = "other"
stage = [{ name = "alert", plugin = "alert", config.rules = [] }]
"#;

    fn at(pipeline: &str, stage: &str, path: &[&str]) -> Option<&'static str> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        stage_config(FILE, pipeline, stage, &path).map(|span| &FILE[span])
    }

    #[test]
    fn a_config_path_leads_to_the_key_that_holds_it() {
        assert_eq!(at("ingest", "alert", &["rules", "0", "window"]), Some("window"));
        assert_eq!(at("ingest", "alert", &["rules", "1"]), Some(r#"{ id = "p99" }"#));
        assert_eq!(at("ingest", "alert", &[]), Some("config"));
        assert_eq!(at("other", "alert", &["rules"]), Some("rules"));
    }

    #[test]
    fn a_key_the_file_lacks_points_at_its_table_and_a_stage_without_config_at_the_stage() {
        assert_eq!(at("ingest", "alert", &["rules", "1", "window"]), Some(r#"{ id = "p99" }"#));
        assert_eq!(at("ingest", "alert", &["rules", "7"]), Some("rules"));
        assert_eq!(at("ingest", "check", &["required"]), Some("[[pipeline.stage]]"));
        assert_eq!(at("ingest", "missing", &[]), None);
        assert_eq!(at("nowhere", "alert", &[]), None);
    }
}
