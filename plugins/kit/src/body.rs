//! The host's check of a JSON body before any plugin sees it (here so that
//! the native benchmark of the plugins does the same work): UTF-8, one
//! JSON object, nested no deeper than serde_json's limit (128), and no name
//! twice in one object.
//!
//! Duplicate names are refused because parsers disagree on them: one stage
//! would read the first value and the next the last, so a producer could
//! slip a value past validation that a later stage then acts on.

use std::fmt;

use crate::names::{Name, Names};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a body is not a JSON object the pipeline can take.
pub fn check(body: &[u8]) -> Result<(), String> {
    if std::str::from_utf8(body).is_err() {
        return Err("the body is not UTF-8 text; this pipeline takes JSON objects".into());
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("the body is not a JSON object (it does not start with `{`)".into());
    }
    serde_json::from_slice::<Unique>(body).map(|_| ()).map_err(|e| format!("the body is not valid JSON: {e}"))
}

/// Any JSON value, read without keeping it, that refuses an object naming a
/// property twice.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Unique, A::Error> {
        while items.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Unique, A::Error> {
        let mut names = Names::default();
        while let Some(Name(name)) = entries.next_key::<Name<'de>>()? {
            if !names.insert(name.clone()) {
                return Err(de::Error::custom(format_args!("the property {name:?} appears twice in one object")));
            }
            entries.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn objects_pass_and_everything_else_is_explained() {
        assert_eq!(check(br#" {"a":1,"b":[{"a":2},{"a":3}],"c":{"d":null}} "#), Ok(()));
        let wide = format!("{{{}}}", (0..100).map(|n| format!("\"k{n}\":{n}")).collect::<Vec<_>>().join(","));
        assert_eq!(check(wide.as_bytes()), Ok(()), "names past the small-object list, all different");
        for (body, says) in [
            (&b""[..], "does not start with `{`"),
            (b"   \n\t ", "does not start with `{`"),
            (b"[1]", "does not start with `{`"),
            (b"{\"a\":\xff}", "not UTF-8"),
            (br#"{"a":NaN}"#, "not valid JSON"),
            (br#"{"a":1e400}"#, "number out of range"),
            (br#"{"a":1} {"b":2}"#, "trailing characters"),
            (br#"{"a":1,"a":2}"#, r#"the property "a" appears twice"#),
            (br#"{"x":{"b":1,"b":1}}"#, r#"the property "b" appears twice"#),
            (br#"{"a":1,"\u0061":2}"#, r#"the property "a" appears twice"#),
            (br#"{"a":"\ud800"}"#, "not valid JSON"),
            (
                format!("{{{},\"k7\":0}}", (0..100).map(|n| format!("\"k{n}\":{n}")).collect::<Vec<_>>().join(",")).as_bytes(),
                r#"the property "k7" appears twice"#,
            ),
        ] {
            let error = check(body).expect_err(&String::from_utf8_lossy(body));
            assert!(error.contains(says), "{:?}: {error}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn nesting_past_serde_jsons_limit_is_refused_without_overflowing_the_stack() {
        let deep = |levels: usize, open: &str, close: &str| format!("{{\"a\":{}1{}}}", open.repeat(levels), close.repeat(levels));
        assert_eq!(check(deep(100, "[", "]").as_bytes()), Ok(()));
        for levels in [200, 10_000, 100_000] {
            assert!(check(deep(levels, "[", "]").as_bytes()).unwrap_err().contains("recursion limit exceeded"));
            assert!(check(deep(levels, "{\"a\":", "}").as_bytes()).unwrap_err().contains("recursion limit exceeded"));
        }
    }
}
