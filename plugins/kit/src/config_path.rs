//! A path into a stage's config as messages write it, `rules[0].window`,
//! and as the contract carries it, a list of keys (an array element by its
//! index in decimal): `["rules", "0", "window"]`.

/// The path as messages write it: keys joined by `.`, indexes as `[n]`, a
/// key with other characters than letters, digits, `_` and `-` as `["k"]`.
pub fn write(path: &[String]) -> String {
    let mut text = String::new();
    for key in path {
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            text.push_str(&format!("[{key}]"));
        } else if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            if !text.is_empty() {
                text.push('.');
            }
            text.push_str(key);
        } else {
            text.push_str(&format!("[{key:?}]"));
        }
    }
    text
}

/// Reads a path written as [`write`] writes it.
pub fn parse(text: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let (key, after) = match inner.strip_prefix('"') {
                Some(quoted) => quoted.find("\"]").map_or((quoted, ""), |end| (&quoted[..end], &quoted[end + 2..])),
                None => inner.find(']').map_or((inner, ""), |end| (&inner[..end], &inner[end + 1..])),
            };
            path.push(key.to_string());
            rest = after;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end > 0 {
                path.push(rest[..end].to_string());
            }
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_written_as_in_messages_and_read_back() {
        for written in ["rules[0].window", "labels[\"a.b\"]", "a.b.c", "list[12]", "x_y-z"] {
            assert_eq!(write(&parse(written)), written);
        }
        assert_eq!(parse("labels[\"a.b\"].x"), ["labels", "a.b", "x"]);
        assert_eq!(parse("rules[0].window"), ["rules", "0", "window"]);
        assert_eq!(write(&[]), "");
    }
}
