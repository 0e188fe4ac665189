//! `validate` against the official JSON Schema Test Suite (draft 2020-12,
//! the files in `tests/suite`). Each test's schema is the schema of the
//! property `value` of an event, and its data that property's value, the
//! way an event's schema holds a property's.
//!
//! A group whose schema uses what `validate` does not implement must be
//! refused when the schemas are compiled (as `init` does), saying what; every
//! other group must pass every one of its tests.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use validate::{Json, SchemaSet};

struct Tally {
    groups_run: usize,
    groups_refused: Vec<String>,
    tests_run: usize,
    failures: Vec<String>,
}

fn run(file: &str, tally: &mut Tally) {
    let path = format!("{}/tests/suite/{file}", env!("CARGO_MANIFEST_DIR"));
    let groups: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for group in groups {
        let description = group["description"].as_str().unwrap();
        let event = json!({ "properties": { "event": { "const": "suite" }, "value": group["schema"] } });
        let set = match SchemaSet::compile(&BTreeMap::from([("suite.json".to_string(), event)])) {
            Ok(set) => set,
            Err(refused) => {
                let says = ["is not supported", "unsupported format", "no such file in the schema folder", "prefixItems"].iter().any(|s| refused.contains(s));
                assert!(says, "{file}: {description}: refused without naming what is unsupported: {refused}");
                tally.groups_refused.push(format!("{file}: {description}: {refused}"));
                continue;
            }
        };
        tally.groups_run += 1;
        for test in group["tests"].as_array().unwrap() {
            tally.tests_run += 1;
            let body = serde_json::to_vec(&json!({ "event": "suite", "value": test["data"] })).unwrap();
            let outcome = set.validate(&Json::parse(&body).unwrap());
            if outcome.is_ok() != test["valid"].as_bool().unwrap() {
                tally.failures.push(format!("{file}: {description}: {}: expected valid = {}, got {outcome:?}", test["description"], test["valid"]));
            }
        }
    }
}

#[test]
fn every_keyword_validate_implements_passes_its_part_of_the_suite() {
    let mut tally = Tally { groups_run: 0, groups_refused: Vec::new(), tests_run: 0, failures: Vec::new() };
    for file in [
        "type.json",
        "enum.json",
        "const.json",
        "required.json",
        "properties.json",
        "additionalProperties.json",
        "items.json",
        "allOf.json",
        "minimum.json",
        "maximum.json",
        "minLength.json",
        "maxLength.json",
        "boolean_schema.json",
        "format-date-time.json",
        "format-uuid.json",
    ] {
        run(file, &mut tally);
    }
    assert!(tally.failures.is_empty(), "{} of {} tests failed:\n{}", tally.failures.len(), tally.tests_run, tally.failures.join("\n"));
    println!(
        "{} tests in {} groups passed; {} groups refused:\n{}",
        tally.tests_run,
        tally.groups_run,
        tally.groups_refused.len(),
        tally.groups_refused.join("\n")
    );
    // What the files hold: a change that refuses more of them shows here.
    assert_eq!((tally.tests_run, tally.groups_run), (377, 86), "tests and groups run");
}

#[test]
fn a_schema_using_a_keyword_validate_does_not_implement_is_refused() {
    let mut tally = Tally { groups_run: 0, groups_refused: Vec::new(), tests_run: 0, failures: Vec::new() };
    for file in ["anyOf.json", "pattern.json"] {
        run(file, &mut tally);
    }
    assert_eq!(tally.groups_run, 0, "refused: {:?}", tally.groups_refused);
    assert!(
        tally.groups_refused.iter().all(|r| r.contains("\"anyOf\" is not supported") || r.contains("\"pattern\" is not supported")),
        "{:?}",
        tally.groups_refused
    );
}
