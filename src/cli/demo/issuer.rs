//! The demo's identity provider: a loopback OIDC issuer shaped like GitHub Actions' own, and the
//! runner's ID-token endpoint that npm asks for a token (`ACTIONS_ID_TOKEN_REQUEST_URL`).
//!
//! Only `phantom demo` starts it: `serve` has no path to this module. Its signing key is made at
//! start, lives in memory only and dies with the process, so a token it mints is worthless once
//! the demo stops; it listens on 127.0.0.1 only.
//!
//!   GET /.well-known/openid-configuration   discovery (`issuer`, `jwks_uri`)
//!   GET /.well-known/jwks                   the public key (P-256, ES256)
//!   GET /token?audience=AUD                 `Authorization: Bearer <request token>` ->
//!                                           `{"count":1,"value":"<ID token>"}`, as the runner answers

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use phantom_broker::support::clock::unix_now;
use phantom_broker::support::net::{self, Body};
use phantom_broker::support::secret::Secret;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const KID: &str = "demo-1";

/// Who the demo's CI job is: a GitHub Actions release job of `acme/hello` on `main`. The ids
/// are what a grant pins (names can be recycled, ids cannot).
pub(crate) struct Job {
    pub(crate) repository: &'static str,
    pub(crate) repository_id: &'static str,
    pub(crate) repository_owner_id: &'static str,
    pub(crate) workflow_ref: &'static str,
}

pub(crate) const JOB: Job = Job {
    repository: "acme/hello",
    repository_id: "700000001",
    repository_owner_id: "700000000",
    workflow_ref: "acme/hello/.github/workflows/release.yml@refs/heads/main",
};

pub(crate) struct Issuer {
    /// `https://127.0.0.1:PORT`: the `iss` of its tokens, without a trailing `/` (as GitHub's).
    pub(crate) url: String,
    /// What a job presents to the token endpoint (the runner's `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
    pub(crate) request_token: Secret,
    serving: JoinHandle<()>,
}

struct Signer {
    url: String,
    request_token: Secret,
    encoding: jsonwebtoken::EncodingKey,
    jwks: Value,
    rng: SystemRandom,
    run_id: String,
}

impl Issuer {
    /// Listens on 127.0.0.1 (a free port) over TLS with the given certificate.
    pub(crate) async fn start(cert: &Path, key: &Path) -> Result<Issuer, String> {
        let mut tls = (*net::server_config(cert, key)?).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| format!("identity provider: {e}"))?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr().map_err(|e| e.to_string())?.port());

        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "identity provider: cannot make a signing key".to_owned())?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "identity provider: cannot read its signing key".to_owned())?;
        // An uncompressed point: 0x04, then x and y (32 bytes each).
        let point = pair.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": KID, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        let signer = Arc::new(Signer {
            url: url.clone(),
            request_token: Secret::new(random_hex(&rng, 24)?),
            encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwks,
            run_id: (u64::from_str_radix(&random_hex(&rng, 4)?, 16).unwrap_or(1) % 9_000_000_000 + 1_000_000_000)
                .to_string(),
            rng,
        });
        let request_token = Secret::new(signer.request_token.expose().to_owned());
        let serving = tokio::spawn(accept_loop(listener, acceptor, signer));
        Ok(Issuer { url, request_token, serving })
    }

    /// Stops listening and ends every open connection.
    pub(crate) fn stop(&self) {
        self.serving.abort();
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Connections live in a `JoinSet` owned by the loop: aborting the loop drops them all.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, signer: Arc<Signer>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        while connections.try_join_next().is_some() {}
        let (acceptor, signer) = (acceptor.clone(), signer.clone());
        connections.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let signer = signer.clone();
                async move { Ok::<_, std::convert::Infallible>(signer.answer(&req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

impl Signer {
    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != http::Method::GET {
            return reply(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "only GET"}));
        }
        match req.uri().path() {
            "/.well-known/openid-configuration" => reply(
                StatusCode::OK,
                json!({
                    "issuer": self.url, "jwks_uri": format!("{}/.well-known/jwks", self.url),
                    "subject_types_supported": ["public"], "response_types_supported": ["id_token"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                }),
            ),
            "/.well-known/jwks" => reply(StatusCode::OK, self.jwks.clone()),
            "/token" => self.token(req),
            _ => reply(StatusCode::NOT_FOUND, json!({"message": "not found"})),
        }
    }

    /// The runner's token endpoint: the request token in, an ID token for `audience` out.
    fn token(&self, req: &Request<Incoming>) -> Response<Body> {
        let presented = match net::bearer(req.headers()) {
            net::Bearer::Token(t) => t,
            _ => "",
        };
        if !bool::from(presented.as_bytes().ct_eq(self.request_token.expose().as_bytes())) {
            return reply(StatusCode::UNAUTHORIZED, json!({"message": "bad or missing request token"}));
        }
        let audience = req.uri().query().unwrap_or_default().split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "audience").then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
        });
        let Some(audience) = audience.filter(|a| !a.is_empty()) else {
            return reply(StatusCode::BAD_REQUEST, json!({"message": "audience is required"}));
        };
        match self.mint(&audience) {
            Ok(token) => reply(StatusCode::OK, json!({"count": 1, "value": token.expose()})),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"message": e})),
        }
    }

    /// An ID token with the claims GitHub Actions puts in a release job's token, and its timing
    /// (`nbf` ten minutes back, five minutes to live).
    fn mint(&self, audience: &str) -> Result<Secret, String> {
        let iat = unix_now();
        let claims = json!({
            "iss": self.url, "aud": audience, "sub": format!("repo:{}:ref:refs/heads/main", JOB.repository),
            "jti": random_hex(&self.rng, 16)?, "iat": iat, "nbf": iat - 600, "exp": iat + 300,
            "repository": JOB.repository, "repository_id": JOB.repository_id,
            "repository_owner": JOB.repository.split('/').next(), "repository_owner_id": JOB.repository_owner_id,
            "repository_visibility": "public", "ref": "refs/heads/main", "ref_type": "branch",
            "event_name": "push", "workflow": "release", "workflow_ref": JOB.workflow_ref,
            "job_workflow_ref": JOB.workflow_ref, "sha": random_hex(&self.rng, 20)?, "actor": "octocat",
            "actor_id": "1", "run_id": self.run_id, "run_number": "1", "run_attempt": "1",
            "runner_environment": "github-hosted",
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map(Secret::new).map_err(|e| format!("signing: {e}"))
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(net::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn random_hex(rng: &SystemRandom, bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf).map_err(|_| "the system's random source failed".to_owned())?;
    Ok(phantom_broker::support::hex(&buf))
}
