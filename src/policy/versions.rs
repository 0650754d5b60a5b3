//! `versions` in a grant: an npm version range, read as npm (node-semver) reads it.
//!
//! A bare `1.2.3` is exactly 1.2.3 and `1.2` is `1.2.x`; `^`, `~`, x-ranges and hyphen ranges
//! mean what they mean to npm; a space is AND and `||` is OR; and a prerelease satisfies a range
//! only if one of its comparators names a prerelease of the same `major.minor.patch` (npm's rule:
//! `>=1.0.0 <2.0.0` does not take `1.4.0-beta.1`, `>=1.4.0-0 <1.5.0` does).
//!
//! The meaning comes from `nodejs-semver`, which implements node-semver. Two things are done
//! here, around it, because that crate reads some input more loosely than node-semver and would
//! widen a grant:
//! - The text must follow node-semver's range grammar (its README's BNF) before the crate sees
//!   it. The crate accepts a comma (`>=1.0.0, <2.0.0` parses as `<2.0.0` alone), trailing text
//!   (`1.2.3 foo` as `1.2.3`) and `&&`, where node-semver refuses them.
//! - The comparators of one `||` alternative are parsed one by one and intersected with the
//!   crate's own `intersect`. Parsed together, an alternative whose comparators have nothing in
//!   common becomes their union in that crate (`1.2.3 1.2.4` allows both, `>2.0.0 <1.0.0`
//!   allows everything but 1.x), where node-semver allows nothing.

use nodejs_semver::{Range, Version};

/// The longest range text a grant may hold.
const MAX_LEN: usize = 1024;

/// A parsed `versions` range.
#[derive(Debug, Clone)]
pub struct VersionRange {
    text: String,
    /// The alternatives (`||`) that some version satisfies; empty when none does.
    alternatives: Vec<Range>,
    /// Some comparator names a prerelease: the only way a prerelease can satisfy the range.
    names_prerelease: bool,
}

impl VersionRange {
    /// Parses `text` as node-semver would; the error says what is wrong and how npm writes it.
    pub fn parse(text: &str) -> Result<VersionRange, String> {
        if text.contains(',') {
            return Err(format!(
                "`{text}` joins comparators with a comma (Cargo's form): npm ranges join them with a space \
                 (`>=1.0.0 <2.0.0`) and alternatives with `||`"
            ));
        }
        if text.len() > MAX_LEN {
            return Err(format!("the range is longer than {MAX_LEN} characters"));
        }
        let mut alternatives = Vec::new();
        let mut names_prerelease = false;
        for alternative in text.split("||") {
            let units = comparators(alternative).map_err(|why| format!("`{text}` is not an npm range: {why}"))?;
            names_prerelease |= units.iter().flat_map(|u| u.split_whitespace()).any(has_prerelease);
            let mut range = Range::any();
            let mut empty = false;
            for unit in &units {
                let one =
                    Range::parse(unit).map_err(|_| format!("`{text}` is not an npm range: `{unit}` does not parse"))?;
                match range.intersect(&one) {
                    Some(both) => range = both,
                    None => empty = true,
                }
            }
            if !empty {
                alternatives.push(range);
            }
        }
        Ok(VersionRange { text: text.to_owned(), alternatives, names_prerelease })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether any version at all satisfies it (`>2.0.0 <1.0.0` and `1.2.3 1.2.4` do not).
    pub(crate) fn is_satisfiable(&self) -> bool {
        !self.alternatives.is_empty()
    }

    /// Whether a prerelease can satisfy it: only if a comparator names one.
    pub(crate) fn admits_prereleases(&self) -> bool {
        self.names_prerelease && self.is_satisfiable()
    }

    /// Whether `version` satisfies the range, as `semver.satisfies(version, range)` says.
    pub(crate) fn satisfies(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|r| r.satisfies(version))
    }

    /// Whether `version` would satisfy it if prereleases were judged by their place alone (npm's
    /// `includePrerelease`): for saying why a prerelease was refused.
    pub(crate) fn satisfies_ignoring_prerelease_rule(&self, version: &Version) -> bool {
        self.alternatives.iter().any(|r| r.satisfies_with_prerelease(version, true))
    }
}

/// A version as a publish names it: `major.minor.patch`, optionally `-prerelease` and `+build`,
/// each as node-semver's strict grammar has it (no `v`, no leading zeros).
pub(super) fn parse_version(text: &str) -> Option<Version> {
    if !is_partial(text, true) {
        return None;
    }
    Version::parse(text).ok()
}

/// The comparators of one alternative, each a string the crate parses alone (a hyphen range is
/// one). An empty alternative is `*`.
fn comparators(alternative: &str) -> Result<Vec<String>, String> {
    let words: Vec<&str> = alternative.split_whitespace().collect();
    if words.is_empty() {
        return Ok(vec!["*".to_owned()]);
    }
    // A hyphen range is a whole alternative: `partial - partial`, which node-semver reads as
    // `>=from <=to`, an end whose major is `x` dropping out (`1.x - x` is `>=1.0.0`).
    if let [from, "-", to] = words[..] {
        let (from, to) = (from.strip_prefix('v').unwrap_or(from), to.strip_prefix('v').unwrap_or(to));
        if !is_partial(from, false) || !is_partial(to, false) {
            return Err(format!("`{from} - {to}` is not a hyphen range of two versions"));
        }
        let x_major = |v: &str| v.split('.').next().is_some_and(|m| matches!(m, "x" | "X" | "*"));
        let mut ends: Vec<String> = Vec::new();
        if !x_major(from) {
            ends.push(format!(">={from}"));
        }
        if !x_major(to) {
            ends.push(format!("<={to}"));
        }
        if ends.is_empty() {
            ends.push("*".to_owned());
        }
        return Ok(ends);
    }
    let mut out = Vec::new();
    let mut pending: Option<&str> = None;
    for word in words {
        // An operator may stand apart from its version (`>= 1.0.0`, `~ 1.0`).
        let (op, rest) = split_operator(word);
        let (op, rest) = match pending.take() {
            Some(_) if !op.is_empty() => return Err(format!("`{word}` follows an operator")),
            Some(p) => (p, rest),
            None if rest.is_empty() && !op.is_empty() => {
                pending = Some(op);
                continue;
            }
            None => (op, rest),
        };
        let version = rest.strip_prefix('v').unwrap_or(rest);
        if !is_partial(version, false) {
            return Err(format!("`{word}` is not a comparator (an operator and a version like 1.2.3, 1.2 or 1.x)"));
        }
        // `^x`, `~x.y` are any version to node-semver (a caret or tilde over an x-range of the
        // major); the crate does not parse them.
        let x_major = version.split('.').next().is_some_and(|m| matches!(m, "x" | "X" | "*"));
        if matches!(op, "^" | "~" | "~>") && x_major {
            out.push("*".to_owned());
        } else {
            out.push(format!("{op}{version}"));
        }
    }
    if let Some(op) = pending {
        return Err(format!("`{op}` names no version"));
    }
    Ok(out)
}

/// `word`'s leading operator, if any, and the rest.
fn split_operator(word: &str) -> (&str, &str) {
    for op in ["<=", ">=", "~>", "<", ">", "=", "~", "^"] {
        if let Some(rest) = word.strip_prefix(op) {
            return (op, rest);
        }
    }
    ("", word)
}

/// node-semver's `partial`: `xr ( '.' xr ( '.' xr qualifier? )? )?`, each `xr` a number without
/// leading zeros or `x`, `X`, `*`. With `full`, three numbers are required.
fn is_partial(text: &str, full: bool) -> bool {
    let (main, qualifier) = match text.find(['-', '+']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let parts: Vec<&str> = main.split('.').collect();
    let xr = |p: &&str| !full && matches!(*p, "x" | "X" | "*") || is_number(p);
    if parts.is_empty() || parts.len() > 3 || !parts.iter().all(xr) || (full && parts.len() != 3) {
        return false;
    }
    match qualifier {
        None => true,
        // A qualifier only follows three parts.
        Some(_) if parts.len() != 3 => false,
        Some(q) => is_qualifier(q),
    }
}

/// `( '-' pre )? ( '+' build )?`: dot-separated identifiers; a numeric prerelease identifier has
/// no leading zero.
fn is_qualifier(q: &str) -> bool {
    let (pre, build) = match q.find('+') {
        Some(i) => (&q[..i], Some(&q[i + 1..])),
        None => (q, None),
    };
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let pre_ok = match pre.strip_prefix('-') {
        None => pre.is_empty(),
        Some(p) => p.split('.').all(|s| ident(s) && (!s.bytes().all(|b| b.is_ascii_digit()) || is_number(s))),
    };
    pre_ok && build.is_none_or(|b| b.split('.').all(ident))
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Whether a comparator (operator and version, or one end of a hyphen range) names a prerelease.
fn has_prerelease(word: &str) -> bool {
    let (_, version) = split_operator(word);
    version != "-" && version.split('+').next().is_some_and(|v| v.contains('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sat(range: &str, version: &str) -> bool {
        let r = VersionRange::parse(range).unwrap_or_else(|e| panic!("{range}: {e}"));
        r.satisfies(&Version::parse(version).unwrap())
    }

    /// Ranges and versions from node-semver's own tests (npm/node-semver, test/fixtures/
    /// range-include.js and range-exclude.js, the cases without options), each decided as
    /// `semver.satisfies(version, range)` decides it there.
    #[test]
    fn decides_as_node_semver_does() {
        let include = [
            ("1.0.0 - 2.0.0", "1.2.3"),
            ("^1.2.3+build", "1.2.3"),
            ("^1.2.3+build", "1.3.0"),
            ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3"),
            ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3-pre.2"),
            ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "2.4.3-alpha"),
            ("1.0.0", "1.0.0"),
            ("", "1.0.0"),
            (">1.0.0", "1.1.0"),
            ("<=2.0.0", "1.9999.9999"),
            (">= 1.0.0", "1.0.0"),
            ("<    2.0.0", "1.9999.9999"),
            ("<\t2.0.0", "0.2.9"),
            ("0.1.20 || 1.2.4", "1.2.4"),
            (">=0.2.3 || <0.0.1", "0.0.0"),
            ("||", "1.3.4"),
            ("1.2.x || 2.x", "2.1.3"),
            ("2.*.*", "2.1.3"),
            ("2", "2.1.2"),
            ("2.3", "2.3.1"),
            ("~0.0.1", "0.0.2"),
            ("~2.4", "2.4.5"),
            ("~>3.2.1", "3.2.2"),
            ("~> 1", "1.2.3"),
            ("~ 1.0.3", "1.0.12"),
            ("~v0.5.4-pre", "0.5.4"),
            ("=0.7.x", "0.7.2"),
            ("~1.2.1 >=1.2.3", "1.2.3"),
            ("~1.2.1 1.2.3 >=1.2.3", "1.2.3"),
            ("^1.2 ^1", "1.4.2"),
            ("^1.2.3-alpha", "1.2.3-pre"),
            ("^0.0.1-alpha", "0.0.1"),
            ("^x", "1.2.3"),
            ("x - 1.0.0", "0.9.7"),
            ("1.x - x", "1.9.7"),
        ];
        let exclude = [
            ("1.0.0 - 2.0.0", "2.2.3"),
            ("1.2.3+asdf - 2.4.3+asdf", "1.2.3-pre.2"),
            ("1.2.3+asdf - 2.4.3+asdf", "2.4.3-alpha"),
            ("^1.2.3+build", "2.0.0"),
            ("^1.2.3", "1.2.3-pre"),
            ("^1.2", "1.2.0-pre"),
            (">1.2", "1.3.0-beta"),
            ("<=1.2.3", "1.2.3-beta"),
            ("=0.7.x", "0.7.0-asdf"),
            (">=0.7.x", "0.7.0-asdf"),
            ("1.0.0", "1.0.1"),
            ("<=2.0.0", "2.9999.9999"),
            ("0.1.20 || 1.2.4", "1.2.3"),
            (">=0.2.3 || <0.0.1", "0.2.2"),
            ("1.2.x || 2.x", "1.1.3"),
            ("2.3", "2.4.1"),
            ("~0.0.1", "0.1.0-alpha"),
            ("~>3.2.1", "3.3.2"),
            ("~1.0", "1.1.0"),
            ("<1", "1.0.0"),
            ("~v0.5.4-beta", "0.5.4-alpha"),
            ("<0.7.x", "0.7.2"),
            ("<1.2.3", "1.2.3-beta"),
            ("=1.2.3", "1.2.3-beta"),
            (">1.2", "1.2.8"),
            ("^0.0.1", "0.0.2"),
            ("^1.2.3", "2.0.0-alpha"),
            ("^1.2", "1.1.9"),
            ("^1.0.0", "2.0.0-rc1"),
        ];
        for (range, version) in include {
            assert!(sat(range, version), "{version} should satisfy `{range}`");
        }
        for (range, version) in exclude {
            assert!(!sat(range, version), "{version} should not satisfy `{range}`");
        }
    }

    /// What an admin means by a pinned version, and the cases where the crate alone would widen
    /// the range (node-semver allows nothing there).
    #[test]
    fn a_bare_version_is_exact_and_empty_intersections_allow_nothing() {
        assert!(sat("1.2.3", "1.2.3") && !sat("1.2.3", "1.2.4") && !sat("1.2.3", "1.9.0"));
        assert!(sat("1.2", "1.2.9") && !sat("1.2", "1.9.0"));
        assert!(sat(">=1.0.0 <2.0.0", "1.9.9") && !sat(">=1.0.0 <2.0.0", "2.0.0"));
        assert!(!sat(">=1.0.0 <2.0.0", "1.4.0-beta.1"), "npm does not take a prerelease here");
        assert!(sat(">=1.4.0-0 <1.5.0", "1.4.0-beta.1") && !sat(">=1.4.0-0 <1.5.0", "1.4.1-beta.1"));
        for empty in [">2.0.0 <1.0.0", "1.2.3 1.2.4", "^1 ^2", ">=1.0.0 <2.0.0 >=3.0.0"] {
            let r = VersionRange::parse(empty).unwrap();
            assert!(!r.is_satisfiable(), "{empty}");
            for v in ["0.5.0", "1.2.3", "1.2.4", "1.5.0", "2.5.0", "3.5.0"] {
                assert!(!r.satisfies(&Version::parse(v).unwrap()), "{v} satisfies `{empty}`");
            }
        }
        let half = VersionRange::parse(">2.0.0 <1.0.0 || 3.x").unwrap();
        assert!(half.is_satisfiable() && sat(">2.0.0 <1.0.0 || 3.x", "3.1.0") && !sat(">2.0.0 <1.0.0 || 3.x", "2.5.0"));
        assert!(!VersionRange::parse("^1.2.3").unwrap().admits_prereleases());
        assert!(VersionRange::parse(">=1.2.0-0 <1.3.0").unwrap().admits_prereleases());
    }

    #[test]
    fn what_node_semver_refuses_is_refused() {
        let comma = VersionRange::parse(">=1.0.0, <2.0.0").unwrap_err();
        assert!(comma.contains("comma") && comma.contains("`>=1.0.0 <2.0.0`"), "{comma}");
        for bad in
            ["latest", "1.2.3 foo", "1.2.3 && 2", "> =1.2.3", "01.2.3", "1.2.3-01", "1.2-beta", ">=", "1.2.3.4", "1 -"]
        {
            assert!(VersionRange::parse(bad).is_err(), "`{bad}` was accepted");
        }
        assert!(parse_version("1.2.3-beta.1+b").is_some());
        for bad in ["v1.2.3", "1.2", "1.2.x", "01.2.3", "1.2.3-", "one"] {
            assert!(parse_version(bad).is_none(), "{bad}");
        }
    }
}
