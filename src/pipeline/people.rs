//! What a person's CLI asks the broker, besides an exchange: the issuers people may sign in
//! with (`GET /-/phantom/v1/issuers`: public, and nothing in it is a secret).

use crate::app::App;
use crate::audit::Record;
use crate::support::net::{self, Body};
use http::{Response, StatusCode};
use serde::Serialize;

/// `{"issuers": [{"name", "issuer", "client_id", "scopes"}]}`: every issuer with a `device`
/// client, for `phantom login --device`.
pub(super) fn issuers(app: &App, rec: &mut Record) -> Response<Body> {
    rec.path = Some("/-/phantom/v1/issuers".into());
    #[derive(Serialize)]
    struct Listed<'a> {
        name: &'a str,
        issuer: &'a str,
        client_id: &'a str,
        scopes: &'a [String],
    }
    let issuers: Vec<Listed<'_>> = app
        .config
        .issuers
        .iter()
        .filter_map(|i| {
            let d = i.device.as_ref()?;
            Some(Listed { name: &i.name, issuer: &i.issuer, client_id: &d.client_id, scopes: &d.scopes })
        })
        .collect();
    let body = serde_json::json!({ "issuers": issuers });
    rec.decision = crate::audit::Decision::Allow;
    net::json_reply(StatusCode::OK, body.to_string())
}
