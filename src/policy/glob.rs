//! Globs for package names, claim values and dist-tags: `*` matches any run of characters
//! except `/`. Nothing else is special, and a match always covers the whole string, so
//! there is no anchoring to get wrong (compare octo-sts#1643).

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("a pattern may not be empty".into());
        }
        if pattern.len() > 1024 {
            return Err("a pattern may not be longer than 1024 characters".into());
        }
        if pattern.chars().any(char::is_control) {
            return Err("a pattern may not contain control characters".into());
        }
        if pattern.contains("**") {
            return Err(format!("`{pattern}`: `**` is not supported; `*` never crosses `/`"));
        }
        Ok(Glob { pattern: pattern.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub(crate) fn is_literal(&self) -> bool {
        !self.pattern.contains('*')
    }

    /// Whether every string `other` matches, this one matches too. (Sound because no pattern
    /// holds a literal `*`: a `*` of `other`'s can be consumed only by one of this pattern's,
    /// which matches whatever that `*` stands for, `/` excepted.)
    pub fn covers(&self, other: &Glob) -> bool {
        self.matches(other.as_str())
    }

    pub fn matches(&self, input: &str) -> bool {
        if self.is_literal() {
            return *self.pattern == *input;
        }
        let mut pats = self.pattern.split('/');
        let mut ins = input.split('/');
        loop {
            match (pats.next(), ins.next()) {
                (Some(p), Some(i)) if segment_matches(p.as_bytes(), i.as_bytes()) => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// Wildcard match of one `/`-free segment, with backtracking to the last `*` only.
fn segment_matches(pat: &[u8], input: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < input.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == input[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({})", self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let table = [
            ("@acme/*", "@acme/web", true),
            ("@acme/*", "@acme/", true),
            ("@acme/*", "@acme/web/x", false),
            ("@acme/*", "@acmex/web", false),
            ("@acme/web-*", "@acme/web-ui", true),
            ("@acme/web-*", "@acme/web", false),
            ("*", "left-pad", true),
            ("*", "@acme/web", false),
            ("refs/tags/v*", "refs/tags/v1.2.3", true),
            ("refs/tags/v*", "refs/tags/v1/evil", false),
            ("refs/tags/v*", "x/refs/tags/v1", false),
            ("refs/heads/main", "refs/heads/main", true),
            ("refs/heads/main", "refs/heads/main-attacker", false),
            ("main", "main\n", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*a", "aaa", true),
            ("a*", "b", false),
            ("*-*", "web-ui", true),
            ("x*", "", false),
        ];
        for (pat, input, want) in table {
            assert_eq!(Glob::new(pat).unwrap().matches(input), want, "{pat} vs {input}");
        }
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "a**", "a\nb"] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
        }
    }
}
