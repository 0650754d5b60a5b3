//! Strict JSON: duplicate keys are refused at any depth, because two parsers could otherwise
//! read two different documents from the same bytes; nesting is capped by serde_json's
//! recursion limit (128).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON")]
    Invalid,
    #[error("duplicate JSON key")]
    DuplicateKey,
}

pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut de).map_err(|e| {
        if e.to_string().starts_with(DUPLICATE_KEY) {
            JsonError::DuplicateKey
        } else {
            JsonError::Invalid
        }
    })?;
    de.end().map_err(|_| JsonError::Invalid)?;
    Ok(value.0)
}

/// Parses a JSON object strictly.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match parse_strict(bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err(JsonError::Invalid),
    }
}

const DUPLICATE_KEY: &str = "duplicate key";

/// Memory a parsed value takes beside its text, per value, key or element: a `Value`, and its
/// share of the map node or vector that holds it. Generous on purpose (a map entry counts as a
/// key and a value).
const PER_VALUE: usize = 96;

/// About how much memory `parse_strict(bytes)` takes at most: the text, plus `PER_VALUE` for each
/// value, key and element, counted in one pass that skips strings. A memory budget is charged
/// this before the parse: a document of small values (`[0,0,0,...]`) takes many times its size.
pub(crate) fn parsed_size(bytes: &[u8]) -> usize {
    let (mut values, mut in_string, mut escaped) = (1usize, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => values += 1,
                _ => {}
            }
        }
    }
    bytes.len().saturating_add(values.saturating_mul(PER_VALUE))
}

/// A JSON value whose objects have unique keys.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if obj.insert(key, v).is_some() {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
        }
        Ok(Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_sizes_count_values_not_string_contents() {
        assert_eq!(parsed_size(b"1"), 1 + PER_VALUE);
        assert_eq!(parsed_size(b"[0,0,0]"), 7 + 4 * PER_VALUE);
        assert_eq!(parsed_size(br#"{"a":1}"#), 7 + 3 * PER_VALUE);
        // Brackets, commas and colons inside strings (escaped quotes included) are text.
        assert_eq!(parsed_size(br#"["a,b:[{\"c,"]"#), 14 + 2 * PER_VALUE);
    }
}
