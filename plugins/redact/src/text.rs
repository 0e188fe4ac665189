//! Masking personal data inside free text: e-mail addresses become `[email]`,
//! phone numbers `[phone]`, IP addresses `[ip]`. Written as small scanners
//! rather than regular expressions to keep the plugin small and fast.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `text` with every e-mail address, IP address and phone number masked.
pub fn mask(text: &str) -> String {
    // Words are runs of characters that can belong to an address; the rest
    // (spaces, commas, brackets...) is copied as is.
    let mut out = String::with_capacity(text.len());
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if !is_word_char(c) {
            i += 1;
            out.push(c);
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_word_char(chars[j].1) {
            j += 1;
        }
        let end = chars.get(j).map_or(text.len(), |(at, _)| *at);
        let word = &text[start..end];
        // Trailing punctuation (an address at the end of a sentence) is not part of it.
        let trimmed = word.trim_end_matches(['.', ':', '-']);
        let tail = &word[trimmed.len()..];
        if is_email(trimmed) {
            out.push_str("[email]");
            out.push_str(tail);
        } else if is_ip(trimmed) {
            out.push_str("[ip]");
            out.push_str(tail);
        } else {
            out.push_str(word);
        }
        i = j;
    }
    mask_phones(&out)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '@' | '.' | '_' | '%' | '+' | '-' | ':' | '\'')
}

fn is_email(word: &str) -> bool {
    let Some((local, domain)) = word.split_once('@') else { return false };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-'))
        && domain.rsplit('.').next().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic))
}

fn is_ip(word: &str) -> bool {
    word.parse::<Ipv4Addr>().is_ok() || (word.contains(':') && word.parse::<Ipv6Addr>().is_ok())
}

/// Phone numbers: runs of digits with spaces, dashes, dots, parentheses and a
/// leading `+`, holding 7 to 15 digits (E.164's maximum). Any such run is
/// masked, order numbers included: a false positive costs less than a leak.
fn mask_phones(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit() || ((chars[i] == '+' || chars[i] == '(') && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        let after_word = i > 0 && chars[i - 1].is_alphanumeric();
        if starts && !after_word {
            let mut j = i;
            let mut digits = 0;
            let mut last_digit = i;
            let mut gap = 0;
            while j < chars.len() && (chars[j].is_ascii_digit() || matches!(chars[j], ' ' | '-' | '.' | '(' | ')' | '+')) {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                    last_digit = j;
                    gap = 0;
                } else {
                    // More than two separators in a row (`) (`, `, `) end the number.
                    gap += 1;
                    if gap > 2 {
                        break;
                    }
                }
                j += 1;
            }
            let glued = chars.get(last_digit + 1).is_some_and(|c| c.is_alphanumeric());
            if (7..=15).contains(&digits) && !glued {
                out.push_str("[phone]");
                i = last_digit + 1;
                continue;
            }
            out.extend(&chars[i..=last_digit.max(i)]);
            i = last_digit.max(i) + 1;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_emails_phones_and_ips() {
        assert_eq!(mask("write to jane.doe+sf@example.co.uk."), "write to [email].");
        assert_eq!(mask("call +1 (415) 555-0134 or 020 7946 0958!"), "call [phone] or [phone]!");
        assert_eq!(mask("from 203.0.113.42 and 2001:db8::1, thanks"), "from [ip] and [ip], thanks");
        assert_eq!(mask("5 stars, scene 12 took 3.5 s in 2026"), "5 stars, scene 12 took 3.5 s in 2026");
        assert_eq!(mask("me@localhost is fine"), "me@localhost is fine");
        assert_eq!(mask("order 12345678 shipped"), "order [phone] shipped");
        assert_eq!(mask("v2.0.1 is out"), "v2.0.1 is out");
        assert_eq!(mask("émilie@exemple.fr écrit"), "[email] écrit");
    }
}
