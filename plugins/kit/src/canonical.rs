//! Canonical JSON: object keys sorted at every level, no insignificant white
//! space, UTF-8. Equal values always give equal bytes, which makes a hash of
//! them a stable cache key.

use serde_json::Value;

pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(key).expect("a string serialises"));
                out.push(b':');
                write(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serialises")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sorted_at_every_level() {
        let a: serde_json::Value = serde_json::from_str(r#"{ "b": 1, "a": { "d": [1, {"z": 0, "y": "é"}], "c": null } }"#).unwrap();
        assert_eq!(String::from_utf8(super::to_vec(&a)).unwrap(), r#"{"a":{"c":null,"d":[1,{"y":"é","z":0}]},"b":1}"#);
    }
}
