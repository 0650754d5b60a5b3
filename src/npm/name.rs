//! Validated npm package names.
//!
//! The rules follow validate-npm-package-name for new packages: at most 214 characters,
//! lower case, URL-safe, no leading `.` or `_`. Old packages on the public npm registry may
//! have upper-case letters or `~'!()*`; such "legacy" names are accepted for reads only.

use std::fmt;

/// The longest package name the public npm registry accepts.
pub(super) const MAX_NAME_LEN: usize = 214;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageName {
    full: Box<str>,
    /// Byte index of the `/` in a scoped name.
    slash: Option<usize>,
    legacy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("package name is empty")]
    Empty,
    #[error("package name is longer than 214 characters")]
    TooLong,
    #[error("package name has a character npm does not allow")]
    BadCharacter,
    #[error("package name may not start with '.' or '_'")]
    BadStart,
    #[error("scoped package name must look like @scope/name")]
    BadScope,
    #[error("package name is reserved")]
    Reserved,
}

impl PackageName {
    /// Parses `name` or `@scope/name` (already unescaped).
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let (slash, legacy) = PackageName::check(input)?;
        Ok(PackageName { full: input.into(), slash, legacy })
    }

    /// `parse`, keeping the string it is given.
    pub(crate) fn parse_owned(input: String) -> Result<Self, NameError> {
        let (slash, legacy) = PackageName::check(&input)?;
        Ok(PackageName { full: input.into_boxed_str(), slash, legacy })
    }

    /// Where the scope's `/` is, and whether the name is one npm only allows as a legacy name.
    fn check(input: &str) -> Result<(Option<usize>, bool), NameError> {
        if input.is_empty() {
            return Err(NameError::Empty);
        }
        if input.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let (slash, bare, scope_legacy) = match input.strip_prefix('@') {
            Some(rest) => {
                let slash = rest.find('/').ok_or(NameError::BadScope)?;
                let (scope, bare) = (&rest[..slash], &rest[slash + 1..]);
                if scope.is_empty() || bare.is_empty() || bare.contains('/') {
                    return Err(NameError::BadScope);
                }
                (Some(slash + 1), bare, check_part(scope)?)
            }
            None => (None, input, false),
        };
        let legacy = check_part(bare)? || scope_legacy;
        if slash.is_none() && matches!(bare, "node_modules" | "favicon.ico") {
            return Err(NameError::Reserved);
        }
        Ok((slash, legacy))
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The scope without its `@`, for scoped names.
    pub fn scope(&self) -> Option<&str> {
        self.slash.map(|i| &self.full[1..i])
    }

    /// The name without its scope.
    pub fn bare(&self) -> &str {
        match self.slash {
            Some(i) => &self.full[i + 1..],
            None => &self.full,
        }
    }

    /// True for names only old packages may have (upper case, `~'!()*`): readable, never written.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The form npm puts in a URL path: `@scope%2fname` for scoped names.
    pub fn escaped(&self) -> String {
        match self.slash {
            Some(i) => format!("{}%2f{}", &self.full[..i], &self.full[i + 1..]),
            None => self.full.to_string(),
        }
    }
}

/// Checks one part (scope or bare name); returns whether it is a legacy-only name.
fn check_part(part: &str) -> Result<bool, NameError> {
    if part.starts_with('.') || part.starts_with('_') {
        return Err(NameError::BadStart);
    }
    let mut legacy = false;
    for b in part.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'A'..=b'Z' | b'~' | b'\'' | b'!' | b'(' | b')' | b'*' => legacy = true,
            _ => return Err(NameError::BadCharacter),
        }
    }
    Ok(legacy)
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageName({})", self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        type Parsed<'a> = Result<(Option<&'a str>, &'a str, bool), NameError>;
        let table: &[(&str, Parsed<'_>)] = &[
            ("left-pad", Ok((None, "left-pad", false))),
            ("@acme/web", Ok((Some("acme"), "web", false))),
            ("@acme/web.js_x-1", Ok((Some("acme"), "web.js_x-1", false))),
            ("a", Ok((None, "a", false))),
            ("JSONStream", Ok((None, "JSONStream", true))),
            ("@Acme/web", Ok((Some("Acme"), "web", true))),
            ("", Err(NameError::Empty)),
            ("@acme", Err(NameError::BadScope)),
            ("@acme/", Err(NameError::BadScope)),
            ("@/web", Err(NameError::BadScope)),
            ("@acme/web/x", Err(NameError::BadScope)),
            ("acme/web", Err(NameError::BadCharacter)),
            (".hidden", Err(NameError::BadStart)),
            ("_under", Err(NameError::BadStart)),
            ("@acme/.x", Err(NameError::BadStart)),
            ("has space", Err(NameError::BadCharacter)),
            ("tab\tname", Err(NameError::BadCharacter)),
            ("nul\0", Err(NameError::BadCharacter)),
            ("pct%2f", Err(NameError::BadCharacter)),
            ("caf\u{e9}", Err(NameError::BadCharacter)),
            // Cyrillic 'а' looks like Latin 'a'.
            ("@\u{430}cme/web", Err(NameError::BadCharacter)),
            ("node_modules", Err(NameError::Reserved)),
            ("favicon.ico", Err(NameError::Reserved)),
            ("..", Err(NameError::BadStart)),
        ];
        for (input, want) in table {
            let got =
                PackageName::parse(input).map(|n| (n.scope().map(str::to_owned), n.bare().to_owned(), n.is_legacy()));
            let want = want.clone().map(|(s, b, l)| (s.map(str::to_owned), b.to_owned(), l));
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn length_limit() {
        assert!(PackageName::parse(&"a".repeat(214)).is_ok());
        assert_eq!(PackageName::parse(&"a".repeat(215)), Err(NameError::TooLong));
    }

    #[test]
    fn escaped_form() {
        assert_eq!(PackageName::parse("@acme/web").unwrap().escaped(), "@acme%2fweb");
        assert_eq!(PackageName::parse("web").unwrap().escaped(), "web");
    }
}
