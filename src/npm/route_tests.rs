use super::*;
use crate::npm::{ActionKind, ActionSet};

/// What a request line should become: the op's debug text, the package and the upstream path.
enum Want {
    Reg(&'static str, Option<&'static str>, &'static str),
    Npm(&'static str),
    Phantom,
    PhantomIssuers,
    Forbidden,
    Err(RouteError),
}

fn check(method: &str, path: &str, want: Want) {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let got = classify(&m, path, query);
    let ctx = format!("{method} {path} {query:?} -> {got:?}");
    match (want, got) {
        (Want::Reg(op, pkg, up), Ok(Route::Registry(r))) => {
            let op_text = format!("{:?}", r.op);
            assert!(op_text.starts_with(op), "{ctx}: op");
            assert_eq!(r.package.as_ref().map(|p| p.as_str()), pkg, "{ctx}: package");
            assert_eq!(r.upstream_path(), up, "{ctx}: upstream path");
        }
        (Want::Npm(pkg), Ok(Route::NpmOidcExchange { package })) => {
            assert_eq!(package.as_str(), pkg, "{ctx}")
        }
        (Want::Phantom, Ok(Route::PhantomExchange)) => {}
        (Want::PhantomIssuers, Ok(Route::PhantomIssuers)) => {}
        (Want::Forbidden, Ok(Route::Forbidden { .. })) => {}
        (Want::Err(e), Err(got)) => assert_eq!(got, e, "{ctx}"),
        (_, _) => panic!("unexpected classification: {ctx}"),
    }
}

#[test]
fn reads() {
    use Want::Reg;
    check("GET", "/left-pad", Reg("Packument", Some("left-pad"), "/left-pad"));
    check("HEAD", "/left-pad", Reg("Packument", Some("left-pad"), "/left-pad"));
    check("GET", "/@acme%2fweb", Reg("Packument", Some("@acme/web"), "/@acme%2fweb"));
    check("GET", "/@acme%2Fweb", Reg("Packument", Some("@acme/web"), "/@acme%2fweb"));
    check("GET", "/@acme/web", Reg("Packument", Some("@acme/web"), "/@acme/web"));
    check("GET", "/@acme%2fweb?write=true", Reg("Packument", Some("@acme/web"), "/@acme%2fweb?write=true"));
    check("GET", "/left-pad/1.3.0", Reg("VersionManifest", Some("left-pad"), "/left-pad/1.3.0"));
    check("GET", "/left-pad/latest", Reg("VersionManifest", Some("left-pad"), "/left-pad/latest"));
    check("GET", "/left-pad/-/left-pad-1.3.0.tgz", Reg("Tarball", Some("left-pad"), "/left-pad/-/left-pad-1.3.0.tgz"));
    check(
        "GET",
        "/@acme/web/-/web-1.0.0-beta.1.tgz",
        Reg("Tarball", Some("@acme/web"), "/@acme/web/-/web-1.0.0-beta.1.tgz"),
    );
    check("GET", "/@acme%2fweb/-/web-1.0.0.tgz", Reg("Tarball", Some("@acme/web"), "/@acme%2fweb/-/web-1.0.0.tgz"));
    check("GET", "/JSONStream", Reg("Packument", Some("JSONStream"), "/JSONStream"));
    check(
        "GET",
        "/-/package/@acme%2fweb/dist-tags",
        Reg("DistTagsList", Some("@acme/web"), "/-/package/@acme%2fweb/dist-tags"),
    );
    check(
        "GET",
        "//-/package/@acme%2fweb/visibility",
        Reg("Visibility", Some("@acme/web"), "/-/package/@acme%2fweb/visibility"),
    );
    check("GET", "/-/package/web/collaborators", Reg("Collaborators", Some("web"), "/-/package/web/collaborators"));
    check("GET", "/-/ping", Reg("Ping", None, "/-/ping"));
    check("GET", "/-/ping?write=true", Reg("Ping", None, "/-/ping?write=true"));
    check("GET", "/-/v1/search?text=acme&size=20", Reg("Search", None, "/-/v1/search?text=acme&size=20"));
    check("GET", "/-/whoami", Reg("Whoami", None, "/-/whoami"));
    check("GET", "/-/user/org.couchdb.user:bob", Reg("UserLookup", None, "/-/user/org.couchdb.user:bob"));
    check(
        "POST",
        "/-/npm/v1/security/advisories/bulk",
        Reg("SecurityAudit", None, "/-/npm/v1/security/advisories/bulk"),
    );
    check("POST", "/-/npm/v1/security/audits/quick", Reg("SecurityAudit", None, "/-/npm/v1/security/audits/quick"));
}

#[test]
fn writes() {
    use Want::Reg;
    check("PUT", "/left-pad", Reg("PutPackument", Some("left-pad"), "/left-pad"));
    check("PUT", "/@acme%2fweb", Reg("PutPackument", Some("@acme/web"), "/@acme%2fweb"));
    check("PUT", "/@acme%2Fweb", Reg("PutPackument", Some("@acme/web"), "/@acme%2fweb"));
    check("PUT", "/@acme/web", Reg("PutPackument", Some("@acme/web"), "/@acme/web"));
    check(
        "POST",
        "/-/stage/package/@acme%2fweb",
        Reg("StagePublish", Some("@acme/web"), "/-/stage/package/@acme%2fweb"),
    );
    check(
        "PUT",
        "/-/package/@acme%2fweb/dist-tags/next",
        Reg("DistTagSet { tag: \"next\" }", Some("@acme/web"), "/-/package/@acme%2fweb/dist-tags/next"),
    );
    check("POST", "/-/package/web/dist-tags/beta", Reg("DistTagSet", Some("web"), "/-/package/web/dist-tags/beta"));
    check(
        "DELETE",
        "/-/package/web/dist-tags/beta",
        Reg("DistTagRemove", Some("web"), "/-/package/web/dist-tags/beta"),
    );
    check("PUT", "/web/-rev/3-abc123", Reg("PutRevision", Some("web"), "/web/-rev/3-abc123"));
    check("DELETE", "/web/-rev/3-abc123", Reg("UnpublishPackage", Some("web"), "/web/-rev/3-abc123"));
    check(
        "DELETE",
        "/@acme/web/-/web-1.0.0.tgz/-rev/4-ff",
        Reg("UnpublishTarball", Some("@acme/web"), "/@acme/web/-/web-1.0.0.tgz/-rev/4-ff"),
    );
    check(
        "POST",
        "/-/package/@acme%2fweb/access",
        Reg("AccessSet", Some("@acme/web"), "/-/package/@acme%2fweb/access"),
    );
}

#[test]
fn broker_endpoints() {
    check("POST", "/-/npm/v1/oidc/token/exchange/package/@acme%2fweb", Want::Npm("@acme/web"));
    check("POST", "/-/npm/v1/oidc/token/exchange/package/@acme%2Fweb", Want::Npm("@acme/web"));
    check("POST", "/-/npm/v1/oidc/token/exchange/package/left-pad", Want::Npm("left-pad"));
    check("GET", "/-/npm/v1/oidc/token/exchange/package/left-pad", Want::Err(RouteError::MethodNotAllowed));
    check("POST", "/-/phantom/v1/exchange", Want::Phantom);
    check("GET", "/-/phantom/v1/issuers", Want::PhantomIssuers);
    check("POST", "/-/phantom/v1/issuers", Want::Err(RouteError::MethodNotAllowed));
    check("GET", "/-/phantom/v1/issuers/x", Want::Err(RouteError::UnknownRoute));
    check("GET", "/-/phantom/v1/exchange", Want::Err(RouteError::MethodNotAllowed));
}

#[test]
fn never_forwarded_with_a_credential() {
    for (m, p) in [
        ("POST", "/-/npm/v1/tokens"),
        ("GET", "/-/npm/v1/tokens"),
        ("DELETE", "/-/npm/v1/tokens/token/abc"),
        ("POST", "/-/v1/login"),
        ("GET", "/-/v1/done?sessionId=1"),
        ("PUT", "/-/user/org.couchdb.user:bob"),
        ("GET", "/-/user/token/abc"),
        ("GET", "/-/package/@acme%2fweb/trust"),
        ("POST", "/-/package/@acme%2fweb/trust"),
        ("DELETE", "/-/package/web/trust/1234"),
        ("PUT", "/-/team/acme/devs/package"),
        ("GET", "/-/org/acme/package"),
        ("GET", "/-/npm/v1/user"),
        ("POST", "/-/npm/v1/user"),
        ("POST", "/-/stage/abc/approve"),
        ("DELETE", "/-/stage/abc"),
    ] {
        check(m, p, Want::Forbidden);
    }
}

#[test]
fn refused() {
    use RouteError::*;
    let table: &[(&str, &str, RouteError)] = &[
        ("DELETE", "/web", MethodNotAllowed),
        ("POST", "/web", MethodNotAllowed),
        ("PATCH", "/web", MethodNotAllowed),
        ("OPTIONS", "/web", MethodNotAllowed),
        ("PATCH", "/-/package/web/dist-tags/next", MethodNotAllowed),
        ("BREW", "/-/package/web/dist-tags/next", MethodNotAllowed),
        ("PUT", "/web/1.0.0", MethodNotAllowed),
        ("PUT", "/web/-/web-1.0.0.tgz", MethodNotAllowed),
        ("PUT", "/web?write=true", UnexpectedQuery),
        ("GET", "/web?evil=1", UnexpectedQuery),
        ("PUT", "/JSONStream", LegacyNameWrite),
        ("PUT", "/Web", LegacyNameWrite),
        ("GET", "/@acme%252fweb", BadName(NameError::BadScope)),
        ("GET", "/web%2fother", BadEncoding),
        ("GET", "/@acme%2fweb%2fx", BadEncoding),
        ("GET", "/%40acme%2fweb", BadEncoding),
        ("GET", "/web/../other", BadPath),
        ("GET", "/web/%2e%2e/other", BadPath),
        ("GET", "/web/%2E", BadPath),
        ("GET", "/./web", BadPath),
        ("GET", "/web/", BadPath),
        ("GET", "/web//", BadPath),
        ("GET", "//web", BadPath),
        ("GET", "/-//package/web/dist-tags", BadPath),
        ("GET", "web", BadPath),
        ("GET", "/we b", BadPath),
        ("GET", "/web\u{7f}", BadPath),
        ("GET", "/has%20space", BadEncoding),
        ("GET", "/@acme/web/-/other-1.0.0.tgz", TarballMismatch),
        ("GET", "/@acme/web/-/web-.tgz", TarballMismatch),
        ("GET", "/@acme/web/-/web-x.tgz", TarballMismatch),
        ("GET", "/web/-/web-1.0.0.tar", TarballMismatch),
        ("GET", "/web/-/webx-1.0.0.tgz", TarballMismatch),
        ("PUT", "/-/package/web/dist-tags/a%2fb", BadTag),
        ("PUT", "/-/package/web/dist-tags/a%20b", BadTag),
        ("GET", "/-/package/web/unknown", UnknownRoute),
        ("GET", "/-/all", UnknownRoute),
        ("GET", "/-/npm/v1/security/other", UnknownRoute),
        ("GET", "/-/npm/v1/security/advisories/bulk", MethodNotAllowed),
        ("GET", "/web/1.0.0/extra/more", UnknownRoute),
        ("GET", "/@acme", BadName(NameError::BadScope)),
        ("PUT", "/-/stage/package/web", MethodNotAllowed),
        ("GET", "/-/user/org.couchdb.user:Bob%20", BadPath),
    ];
    for (m, p, e) in table {
        check(m, p, Want::Err(e.clone()));
    }
    let long = format!("/{}", "a".repeat(3000));
    check("GET", &long, Want::Err(BadPath));
}

#[test]
fn action_names_round_trip() {
    for a in ActionKind::ALL {
        assert_eq!(ActionKind::parse(a.as_str()), Some(a));
    }
    assert_eq!(ActionKind::parse("admin"), None);
    let set: ActionSet = [ActionKind::Publish, ActionKind::DistTag].into_iter().collect();
    assert!(set.contains(ActionKind::Publish) && !set.contains(ActionKind::Read));
    assert_eq!(set.names(), ["publish", "dist-tag"]);
}

#[test]
fn dot_segments_raw_or_encoded() {
    // What the allocating check (lowercase, then `%2e` -> `.`) said, segment by segment.
    let reference = |s: &str| {
        let lower = s.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    };
    let table = [
        (".", true),
        ("..", true),
        ("%2e", true),
        ("%2E", true),
        ("%2e%2E", true),
        (".%2e", true),
        ("%2e.", true),
        ("...", false),
        ("%2e%2e%2e", false),
        ("%2e%2e.", false),
        ("", false),
        (".a", false),
        ("a.", false),
        ("%2", false),
        ("%2f", false),
        ("%%2e", false),
        ("%2e2e", false),
        (".%2", false),
        ("pb-bench", false),
        ("@scope%2fname", false),
    ];
    for (segment, want) in table {
        assert_eq!(is_dot_segment(segment), want, "{segment:?}");
        assert_eq!(reference(segment), want, "{segment:?}");
    }
}

#[test]
fn staged_versions_are_reads_and_their_review_is_never_forwarded() {
    use Want::Reg;
    let id = "4c00c615-1e36-4201-a75c-47b46b8fd83f";
    check("GET", "/-/stage", Reg("StageList", None, "/-/stage"));
    check(
        "GET",
        "/-/stage?page=0&perPage=100&package=%40acme%2Fweb",
        Reg("StageList", Some("@acme/web"), "/-/stage?package=%40acme%2Fweb&page=0&perPage=100"),
    );
    check("GET", "/-/stage?package=web", Reg("StageList", Some("web"), "/-/stage?package=web"));
    const VIEW: &str = "/-/stage/4c00c615-1e36-4201-a75c-47b46b8fd83f";
    const TARBALL: &str = "/-/stage/4c00c615-1e36-4201-a75c-47b46b8fd83f/tarball";
    check("GET", VIEW, Reg("StageView", None, VIEW));
    check("GET", TARBALL, Reg("StageTarball", None, TARBALL));
    check("GET", "/-/stage?package=%40acme%2Fweb&package=web", Want::Err(RouteError::UnexpectedQuery));
    check("GET", "/-/stage?evil=1", Want::Err(RouteError::UnexpectedQuery));
    check("GET", "/-/stage?page=-1", Want::Err(RouteError::UnexpectedQuery));
    check("GET", "/-/stage?package=%2e%2e", Want::Err(RouteError::BadEncoding));
    check("GET", "/-/stage/not-a-uuid", Want::Err(RouteError::BadPath));
    check("GET", &format!("/-/stage/{id}?x=1"), Want::Err(RouteError::UnexpectedQuery));
    // Approval and rejection are a maintainer's, with 2FA: never through the broker.
    check("POST", &format!("/-/stage/{id}/approve"), Want::Forbidden);
    check("DELETE", &format!("/-/stage/{id}"), Want::Forbidden);
    check("POST", "/-/stage", Want::Forbidden);
}

#[test]
fn the_brokers_own_reads_are_gets_of_classified_paths() {
    let web = PackageName::parse("@acme/web").unwrap();
    let read = NpmRequest::packument(&web, false);
    assert_eq!((read.method.as_str(), read.upstream_path().as_str()), ("GET", "/@acme%2fweb"));
    assert_eq!(NpmRequest::packument(&web, true).upstream_path(), "/@acme%2fweb?write=true");
    assert_eq!(NpmRequest::whoami().upstream_path(), "/-/whoami");
    let id = "4C00C615-1E36-4201-A75C-47B46B8FD83F";
    let view = NpmRequest::stage_view(id).unwrap();
    assert_eq!(view.upstream_path(), "/-/stage/4c00c615-1e36-4201-a75c-47b46b8fd83f");
    // A stage id is a UUID: nothing else becomes a path.
    for bad in ["", "../../-/whoami", "4c00c615-1e36-4201-a75c-47b46b8fd83f/approve", "not-a-uuid"] {
        assert!(NpmRequest::stage_view(bad).is_none(), "{bad:?}");
    }
    // A staged tarball's item is its view; other requests have none.
    let path = format!("/-/stage/{id}/tarball").to_ascii_lowercase();
    let Ok(Route::Registry(tarball)) = classify(&Method::GET, &path, None) else {
        panic!("a staged tarball classifies")
    };
    assert_eq!(tarball.stage_item().unwrap().upstream_path(), view.upstream_path());
    assert!(read.stage_item().is_none());
}
