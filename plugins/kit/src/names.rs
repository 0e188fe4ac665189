//! The names of one JSON object as it is read, to refuse one given twice
//! (parsers disagree on which of the two counts). Used by the host's
//! admission check and by the plugins that read events.

use std::borrow::Cow;
use std::collections::HashSet;

/// The names of one object as it is read, to refuse one given twice: a list
/// searched in order while the object is small (most are: no hashing), a
/// set past 32 names (a megabyte of short names costs no search per name).
#[derive(Default)]
pub struct Names<'a> {
    list: Vec<Cow<'a, str>>,
    set: HashSet<Cow<'a, str>>,
}

impl<'a> Names<'a> {
    const SMALL: usize = 32;

    /// Adds a name; false if the object had it already.
    pub fn insert(&mut self, name: Cow<'a, str>) -> bool {
        if !self.set.is_empty() {
            return self.set.insert(name);
        }
        if self.list.contains(&name) {
            return false;
        }
        self.list.push(name);
        if self.list.len() > Self::SMALL {
            self.set.extend(self.list.drain(..));
        }
        true
    }
}
/// A property name, borrowed from the body unless it has escapes.
pub struct Name<'a>(pub Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> serde::de::Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a property name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_string())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::Names;

    #[test]
    fn a_name_given_twice_is_seen_in_a_small_object_and_a_wide_one() {
        let mut names = Names::default();
        assert!(names.insert(Cow::Borrowed("a")) && !names.insert(Cow::Owned("a".into())));
        for n in 0..100 {
            assert!(names.insert(Cow::Owned(format!("k{n}"))), "k{n} is new");
        }
        assert!(!names.insert(Cow::Borrowed("k7")) && !names.insert(Cow::Borrowed("a")), "past the list, the set knows them all");
    }
}
