//! A phantom's record as the shared store keeps it: JSON, read back through the same checks
//! that built it (package names parsed, actions known). It holds no token.

use super::store::StoreError;
use crate::npm::{ActionKind, PackageName};
use crate::phantom::PhantomRecord;
use crate::policy::{Identity, Scope};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored<'a> {
    id: &'a str,
    issuer: &'a str,
    claims: std::borrow::Cow<'a, Map<String, Value>>,
    #[serde(borrow)]
    summary: &'a RawValue,
    packages: Vec<std::borrow::Cow<'a, str>>,
    actions: Vec<std::borrow::Cow<'a, str>>,
    grant: &'a str,
    issued_at: u64,
    expires_at: u64,
    max_uses: Option<u32>,
}

pub(crate) fn to_json(r: &PhantomRecord) -> String {
    let stored = Stored {
        id: &r.id,
        issuer: &r.identity.issuer,
        claims: std::borrow::Cow::Borrowed(&r.identity.claims),
        summary: &r.summary,
        packages: r.scope.packages.iter().map(|p| p.as_str().into()).collect(),
        actions: r.scope.actions.names().into_iter().map(Into::into).collect(),
        grant: &r.grant,
        issued_at: r.issued_at,
        expires_at: r.expires_at,
        max_uses: r.max_uses,
    };
    // Strings, numbers and a JSON map always serialise.
    serde_json::to_string(&stored).expect("a phantom record serialises")
}

pub(crate) fn from_json(text: &str) -> Result<PhantomRecord, StoreError> {
    let bad = |what: &str| StoreError::Unavailable(format!("a phantom record in the state store is damaged ({what})"));
    let s: Stored = serde_json::from_str(text).map_err(|_| bad("not a record"))?;
    let packages =
        s.packages.iter().map(|p| PackageName::parse(p)).collect::<Result<Vec<_>, _>>().map_err(|_| bad("package"))?;
    let actions = s
        .actions
        .iter()
        .map(|a| ActionKind::parse(a).ok_or(()))
        .collect::<Result<_, _>>()
        .map_err(|_| bad("action"))?;
    Ok(PhantomRecord {
        id: s.id.into(),
        identity: Identity { issuer: s.issuer.into(), claims: s.claims.into_owned() },
        summary: s.summary.to_owned().into(),
        scope: Scope { packages, actions },
        grant: s.grant.to_owned(),
        issued_at: s.issued_at,
        expires_at: s.expires_at,
        max_uses: s.max_uses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let mut claims = Map::new();
        claims.insert("sub".into(), "repo:acme/web:ref:refs/heads/main".into());
        claims.insert("run_attempt".into(), Value::from(2));
        let record = PhantomRecord {
            id: "abc".into(),
            summary: crate::audit::identity_summary("github", &claims),
            identity: Identity { issuer: "github".into(), claims },
            scope: Scope {
                packages: vec![PackageName::parse("@acme/web").unwrap(), PackageName::parse("web-cli").unwrap()],
                actions: [ActionKind::Publish, ActionKind::DistTag].into_iter().collect(),
            },
            grant: "release".into(),
            issued_at: 100,
            expires_at: 700,
            max_uses: Some(3),
        };
        let back = from_json(&to_json(&record)).unwrap();
        assert_eq!(back.identity, record.identity);
        assert_eq!(back.scope, record.scope);
        assert_eq!(back.summary.get(), record.summary.get());
        assert_eq!(
            (&*back.id, &*back.grant, back.issued_at, back.expires_at, back.max_uses),
            ("abc", "release", 100, 700, Some(3))
        );

        let json = to_json(&record);
        for damaged in [
            json.replace("@acme/web", "../etc"),
            json.replace("dist-tag", "approve"),
            json.replace("\"grant\"", "\"grunt\""),
            "[]".to_owned(),
        ] {
            assert!(from_json(&damaged).is_err(), "{damaged}");
        }
    }
}
