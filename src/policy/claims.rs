//! How a grant's (or approvers') claims match a verified token's: exactly, any of a list, or an
//! explicit glob; no regular expressions. Every key must match (AND), and a list-valued claim
//! (a person's `groups`) matches when one of its strings does.

use super::glob::Glob;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// How a claim value matches: exactly, any of a list, or an explicit glob. No regex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimMatcher {
    Exact(String),
    AnyOf(Vec<String>),
    Glob(Glob),
}

impl ClaimMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ClaimMatcher::Exact(s) => s == value,
            ClaimMatcher::AnyOf(list) => list.iter().any(|s| s == value),
            ClaimMatcher::Glob(g) => g.matches(value),
        }
    }
}

/// As a reader writes it: `= "value"`, `in ["a", "b"]`, `glob "pattern"`.
impl fmt::Display for ClaimMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimMatcher::Exact(s) => write!(f, "= {s:?}"),
            ClaimMatcher::AnyOf(list) => write!(f, "in {list:?}"),
            ClaimMatcher::Glob(g) => write!(f, "glob {:?}", g.as_str()),
        }
    }
}

/// Whether every rule matches `claims`; the first key that does not, if one does not.
pub(crate) fn claims_match<'r>(
    rules: &'r [(String, ClaimMatcher)],
    claims: &Map<String, Value>,
) -> Result<(), &'r str> {
    for (key, matcher) in rules {
        let ok = match claims.get(key) {
            Some(Value::String(v)) => matcher.matches(v),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|v| matcher.matches(v)),
            _ => false,
        };
        if !ok {
            return Err(key);
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for ClaimMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ClaimVisitor)
    }
}

struct ClaimVisitor;

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = ClaimMatcher;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a list of strings, or { glob = \"...\" }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimMatcher, E> {
        Ok(ClaimMatcher::Exact(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ClaimMatcher, A::Error> {
        let mut list = Vec::new();
        while let Some(s) = seq.next_element::<String>()? {
            list.push(s);
        }
        if list.is_empty() {
            return Err(de::Error::custom("a claim list may not be empty"));
        }
        Ok(ClaimMatcher::AnyOf(list))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClaimMatcher, A::Error> {
        let key: String = map.next_key()?.ok_or_else(|| de::Error::custom("expected { glob = \"...\" }"))?;
        if key != "glob" {
            return Err(de::Error::custom(format!(
                "unknown key `{key}` in a claim table: expected `glob` (regular expressions are not supported)"
            )));
        }
        let pattern: String = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom("a claim table takes only `glob`"));
        }
        Glob::new(&pattern).map(ClaimMatcher::Glob).map_err(de::Error::custom)
    }
}
