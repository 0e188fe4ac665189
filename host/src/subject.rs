//! NATS subjects: checking them and matching them against filters with
//! wildcards, as the server does.

/// Checks a subject; `wildcards` says whether `*` and `>` are allowed (they
/// are in a subscription filter, not in a subject one publishes to).
pub fn check(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("a subject must not be empty".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("subject {subject:?} contains white space or control characters"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("subject {subject:?} has an empty token (two dots in a row, or a dot at an end)"));
        }
        let wildcard = *token == "*" || *token == ">";
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err(format!("subject {subject:?}: `*` and `>` must stand alone as a whole token"));
        }
        if wildcard && !wildcards {
            return Err(format!("subject {subject:?} is published to, so it cannot contain the wildcard `{token}`"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!("subject {subject:?}: `>` may only be the last token"));
        }
    }
    Ok(())
}

/// Whether `subject` (no wildcards) is matched by `filter` (wildcards allowed).
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(s)) if f == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_the_server() {
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
    }

    #[test]
    fn bad_subjects_are_explained() {
        assert!(check("a..b", true).unwrap_err().contains("empty token"));
        assert!(check("a.>.b", true).unwrap_err().contains("last token"));
        assert!(check("a.b*", true).unwrap_err().contains("whole token"));
        assert!(check("a.>", false).unwrap_err().contains("wildcard"));
        assert!(check("a b", true).unwrap_err().contains("white space"));
        assert!(check("storyforge.raw.>", true).is_ok());
    }
}
