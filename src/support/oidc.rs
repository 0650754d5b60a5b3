//! The `openidconnect` crate's HTTP calls, made through the broker's own HTTPS client (hyper and
//! rustls, redirects never followed), and its errors on one line.

use super::net::{self, HttpsClient};
use http::Request;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ANSWER: usize = 256 * 1024;

/// One request of a flow, through `client`.
pub async fn call(
    client: &HttpsClient,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, net::full(body));
    let (parts, bytes) = net::fetch(client, req, TIMEOUT, MAX_ANSWER).await.map_err(|e| HttpError(e.to_string()))?;
    Ok(http::Response::from_parts(parts, bytes.to_vec()))
}

/// The broker's HTTPS client as the crate's asynchronous client, with futures that may move
/// between threads (a closure's would not be `Send` for every lifetime).
pub struct Http(pub HttpsClient);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(call(&self.0, request))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// An error and its causes, on one line (the provider's `error_description` included).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
