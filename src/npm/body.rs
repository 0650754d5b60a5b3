//! Checks on request bodies that decide or constrain what a write does.
//!
//! A publish body is checked before the upstream can see it: the names, the single version,
//! the attachments and the dist-tags must all agree with the URL. JSON is parsed strictly:
//! duplicate keys are refused at any depth (two parsers could otherwise read two different
//! documents), and nesting is capped by serde_json's recursion limit.

use super::name::PackageName;
use super::route::parse_tag;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid JSON (or nests too deeply, or is not UTF-8)")]
    InvalidJson,
    #[error("the body has a duplicate JSON key")]
    DuplicateKey,
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("`name` in the body does not match the package in the URL")]
    NameMismatch,
    #[error("`_id` in the body does not match the package in the URL")]
    IdMismatch,
    #[error("a publish must carry exactly one version")]
    VersionCount,
    #[error("the version is not a valid version string")]
    BadVersion,
    #[error("the version manifest's name or version does not match")]
    ManifestMismatch,
    #[error("dist-tags must name only the published version, with valid tag names")]
    BadDistTags,
    #[error("attachments must be exactly the tarball (and optional provenance) of this name and version")]
    AttachmentMismatch,
    #[error("the dist-tag body must be a JSON string holding a version")]
    BadDistTagValue,
    #[error("the body is neither an owner change nor a version removal")]
    UnrecognizedRevision,
    #[error("a deprecate may change only `deprecated` fields of existing versions")]
    DeprecateChangesMore,
    #[error("a publish body may not carry `{0}` (it may hold _id, name, description, readme, dist-tags, versions, access and _attachments)")]
    UnexpectedPublishKey(String),
    #[error("`readme` in a publish body must be a string")]
    BadReadme,
    #[error("a publish may not deprecate, star or rewrite the package (`deprecated`, `users`, `_rev`)")]
    PublishRewrites,
    #[error("a version removal may only remove versions (and the dist-tags that named them)")]
    UnpublishChangesMore,
    #[error("an access change must be {{\"access\": \"public\"}} or {{\"access\": \"restricted\"}}")]
    BadAccessBody,
    #[error("this request takes no body")]
    UnexpectedBody,
    #[error("{0} is not an action the broker forwards")]
    NotAnAction(&'static str),
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::BadDistTags
            | BodyError::DeprecateChangesMore
            | BodyError::PublishRewrites
            | BodyError::UnpublishChangesMore
            | BodyError::NotAnAction(_) => 403,
            _ => 400,
        }
    }
}

/// What a checked publish body publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishManifest {
    pub version: String,
    pub dist_tags: Vec<String>,
}

/// What a `PUT /<name>` turns out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum PutPackument {
    Publish(PublishManifest),
    /// The whole packument sent back; it must match upstream but for `deprecated` fields.
    Deprecate(Map<String, Value>),
}

/// What a `PUT /<name>/-rev/<rev>` turns out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRevision {
    Owner,
    UnpublishVersion,
}

/// Parses JSON, refusing duplicate keys at any depth.
pub fn parse_strict(body: &[u8]) -> Result<Value, BodyError> {
    crate::support::json::parse_strict(body).map_err(|e| match e {
        crate::support::json::JsonError::DuplicateKey => BodyError::DuplicateKey,
        crate::support::json::JsonError::Invalid => BodyError::InvalidJson,
    })
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    match parse_strict(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(BodyError::NotAnObject),
    }
}

/// Checks the body of `PUT /<name>`: a publish if it carries attachments, a deprecate if it is
/// the whole packument sent back, and nothing the broker forwards otherwise (`npm star` sends
/// `{_id, _rev, users}` here, which a registry reads as a change of the package).
pub fn check_put_packument(package: &PackageName, body: &[u8]) -> Result<PutPackument, BodyError> {
    let doc = parse_object(body)?;
    let has_attachments = doc.get("_attachments").and_then(Value::as_object).is_some_and(|a| !a.is_empty());
    if has_attachments {
        return check_publish_doc(package, &doc).map(PutPackument::Publish);
    }
    if !doc.contains_key("versions") {
        let stars = doc.contains_key("users") && doc.keys().all(|k| matches!(k.as_str(), "_id" | "_rev" | "users"));
        return Err(BodyError::NotAnAction(if stars {
            "a change of `users` alone (`npm star`, `npm unstar`)"
        } else {
            "a `PUT /<name>` that is neither a publish (with a tarball) nor a deprecate (the whole packument)"
        }));
    }
    check_names(package, &doc)?;
    Ok(PutPackument::Deprecate(doc))
}

/// Checks the body of a staged publish; it has the same shape as a publish.
pub fn check_stage_publish(package: &PackageName, body: &[u8]) -> Result<PublishManifest, BodyError> {
    check_publish_doc(package, &parse_object(body)?)
}

fn check_names(package: &PackageName, doc: &Map<String, Value>) -> Result<(), BodyError> {
    if doc.get("name").and_then(Value::as_str) != Some(package.as_str()) {
        return Err(BodyError::NameMismatch);
    }
    if doc.get("_id").and_then(Value::as_str) != Some(package.as_str()) {
        return Err(BodyError::IdMismatch);
    }
    Ok(())
}

/// What clients send at the top level of a publish: libnpmpublish's keys (npm, pnpm), and the
/// `readme` that yarn 1 and yarn 4 add (a registry shows it as the package's readme, as it
/// would the new version's own). Anything else could make a registry treat the PUT as something
/// other than a publish (Verdaccio, for one, routes a body with `_rev`, `users` or a
/// `deprecated` version to its change-package path, which replaces versions).
const PUBLISH_KEYS: &[&str] =
    &["_id", "name", "description", "readme", "dist-tags", "versions", "access", "_attachments"];

/// A caller's key, fit to quote in an error: at most 64 characters, no control characters.
fn quoted_key(key: &str) -> String {
    key.chars().take(64).map(|c| if c.is_control() || c == '`' { '?' } else { c }).collect()
}

fn check_publish_doc(package: &PackageName, doc: &Map<String, Value>) -> Result<PublishManifest, BodyError> {
    check_names(package, doc)?;
    if doc.keys().any(|k| matches!(k.as_str(), "_rev" | "users" | "time" | "maintainers")) {
        return Err(BodyError::PublishRewrites);
    }
    if let Some(k) = doc.keys().find(|k| !PUBLISH_KEYS.contains(&k.as_str())) {
        return Err(BodyError::UnexpectedPublishKey(quoted_key(k)));
    }
    if doc.get("readme").is_some_and(|r| !r.is_string()) {
        return Err(BodyError::BadReadme);
    }
    let versions = doc.get("versions").and_then(Value::as_object).ok_or(BodyError::VersionCount)?;
    let mut it = versions.iter();
    let (version, manifest) = match (it.next(), it.next()) {
        (Some(one), None) => one,
        _ => return Err(BodyError::VersionCount),
    };
    if !is_version(version) {
        return Err(BodyError::BadVersion);
    }
    let manifest = manifest.as_object().ok_or(BodyError::ManifestMismatch)?;
    let id = format!("{package}@{version}");
    let manifest_ok = manifest.get("name").and_then(Value::as_str) == Some(package.as_str())
        && manifest.get("version").and_then(Value::as_str) == Some(version.as_str())
        && manifest.get("_id").is_none_or(|v| v.as_str() == Some(id.as_str()));
    if !manifest_ok {
        return Err(BodyError::ManifestMismatch);
    }
    if manifest.contains_key("deprecated") {
        return Err(BodyError::PublishRewrites);
    }

    let tags =
        doc.get("dist-tags").and_then(Value::as_object).filter(|t| !t.is_empty()).ok_or(BodyError::BadDistTags)?;
    let mut dist_tags = Vec::with_capacity(tags.len());
    for (tag, target) in tags {
        if parse_tag(tag).is_err() || target.as_str() != Some(version.as_str()) {
            return Err(BodyError::BadDistTags);
        }
        dist_tags.push(tag.clone());
    }

    let attachments = doc.get("_attachments").and_then(Value::as_object).ok_or(BodyError::AttachmentMismatch)?;
    let tarball = format!("{package}-{version}.tgz");
    let provenance = format!("{package}-{version}.sigstore");
    let tarball_ok =
        attachments.get(&tarball).and_then(|a| a.get("data")).and_then(Value::as_str).is_some_and(|d| !d.is_empty());
    let others_ok = attachments.keys().all(|k| *k == tarball || *k == provenance);
    if !tarball_ok || !others_ok {
        return Err(BodyError::AttachmentMismatch);
    }
    Ok(PublishManifest { version: version.clone(), dist_tags })
}

/// A version string as registries accept it: semver characters, starting with a digit.
fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

/// The body of `PUT /-/package/<name>/dist-tags/<tag>`: a JSON string holding a version.
pub fn check_dist_tag_value(body: &[u8]) -> Result<String, BodyError> {
    match parse_strict(body) {
        Ok(Value::String(v)) if is_version(&v) => Ok(v),
        _ => Err(BodyError::BadDistTagValue),
    }
}

/// Tells an owner change (`{_id, _rev, maintainers}`) from a version removal (a packument).
pub fn check_put_revision(package: &PackageName, body: &[u8]) -> Result<PutRevision, BodyError> {
    let doc = parse_object(body)?;
    if doc.get("_id").and_then(Value::as_str) != Some(package.as_str()) {
        return Err(BodyError::IdMismatch);
    }
    if doc.contains_key("versions") {
        check_names(package, &doc)?;
        return Ok(PutRevision::UnpublishVersion);
    }
    let owner_only =
        doc.contains_key("maintainers") && doc.keys().all(|k| matches!(k.as_str(), "_id" | "_rev" | "maintainers"));
    if owner_only {
        Ok(PutRevision::Owner)
    } else {
        Err(BodyError::UnrecognizedRevision)
    }
}

/// Checks a version removal (`npm unpublish pkg@1.2.3`) against the upstream packument: it may
/// drop versions, drop the dist-tags that named them, and point `latest` at a remaining version
/// if `latest` named a removed one. Nothing else may change.
pub fn check_unpublish_version(body: &[u8], upstream: &Map<String, Value>) -> Result<(), BodyError> {
    let doc = parse_object(body)?;
    let versions = |d: &Map<String, Value>| d.get("versions").and_then(Value::as_object).cloned().unwrap_or_default();
    let (kept, current) = (versions(&doc), versions(upstream));
    let removed: Vec<&String> = current.keys().filter(|v| !kept.contains_key(*v)).collect();
    let same_kept = kept.iter().all(|(v, m)| current.get(v) == Some(m));
    if removed.is_empty() || !same_kept {
        return Err(BodyError::UnpublishChangesMore);
    }
    let tags = |d: &Map<String, Value>| d.get("dist-tags").and_then(Value::as_object).cloned().unwrap_or_default();
    let (new_tags, old_tags) = (tags(&doc), tags(upstream));
    let names_removed = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|v| removed.iter().any(|r| *r == v));
    for (tag, old) in &old_tags {
        let ok = match new_tags.get(tag) {
            None => names_removed(Some(old)),
            Some(new) if new == old => !names_removed(Some(old)),
            // npm points `latest` at the highest remaining version.
            Some(new) => tag == "latest" && names_removed(Some(old)) && new.as_str() == highest(&kept),
        };
        if !ok {
            return Err(BodyError::UnpublishChangesMore);
        }
    }
    if new_tags.keys().any(|t| !old_tags.contains_key(t)) {
        return Err(BodyError::UnpublishChangesMore);
    }
    // Everything else must be as upstream has it, `_attachments` included: a removal that
    // carried attachments would have the registry store them. npm leaves out `_attachments`
    // and `_revisions` (and the registry may omit `time` from what it sends back); a key left
    // out changes nothing, but one that is sent must be the upstream's.
    const MAY_BE_LEFT_OUT: [&str; 3] = ["_attachments", "_revisions", "time"];
    let keys = doc.keys().chain(upstream.keys()).filter(|k| !matches!(k.as_str(), "versions" | "dist-tags"));
    for k in keys {
        let same = match doc.get(k) {
            Some(v) => upstream.get(k) == Some(v),
            None => MAY_BE_LEFT_OUT.contains(&k.as_str()),
        };
        if !same {
            return Err(BodyError::UnpublishChangesMore);
        }
    }
    Ok(())
}

/// The highest version by semver precedence.
fn highest(versions: &Map<String, Value>) -> Option<&str> {
    versions
        .keys()
        .filter_map(|v| nodejs_semver::Version::parse(v).ok().map(|parsed| (parsed, v.as_str())))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v)
}

/// The body of `POST /-/package/<name>/access`: only the visibility. 2FA settings
/// (`publish_requires_tfa`, `automation_token_overrides_tfa`) are never changed through the broker.
pub fn check_access(body: &[u8]) -> Result<(), BodyError> {
    let doc = parse_object(body).map_err(|_| BodyError::BadAccessBody)?;
    let ok = doc.len() == 1 && matches!(doc.get("access").and_then(Value::as_str), Some("public" | "restricted"));
    if ok {
        Ok(())
    } else {
        Err(BodyError::BadAccessBody)
    }
}

/// Checks that a deprecate body equals the upstream packument except for the `deprecated`
/// field of existing versions. (Compared in place: neither document is copied.)
pub fn check_deprecate(body: &Map<String, Value>, upstream: &Map<String, Value>) -> Result<(), BodyError> {
    let same_manifest = |a: &Value, b: &Value| match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.keys().chain(b.keys()).filter(|k| *k != "deprecated").all(|k| a.get(k) == b.get(k))
        }
        _ => a == b,
    };
    let same_versions = |a: Option<&Value>, b: Option<&Value>| match (a, b) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            a.len() == b.len() && a.iter().all(|(v, m)| b.get(v).is_some_and(|n| same_manifest(m, n)))
        }
        _ => a == b,
    };
    let same = body.len() == upstream.len()
        && body.iter().all(|(k, v)| match upstream.get(k) {
            Some(u) if k == "versions" => same_versions(Some(v), Some(u)),
            Some(u) => v == u,
            None => false,
        });
    if same {
        Ok(())
    } else {
        Err(BodyError::DeprecateChangesMore)
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
