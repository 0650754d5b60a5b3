//! Classifies an HTTP request line into one typed npm registry operation. Anything that does not
//! parse unambiguously is refused.

use super::name::{NameError, PackageName};
use super::route::{
    is_hold_id, is_read_method, parse_escaped_name, parse_rev, parse_spec, parse_tag, parse_tarball_file, NameForm,
    NpmRequest, Op, Route, RouteError,
};
use http::Method;

const MAX_PATH_LEN: usize = 2048;

/// Classifies a request by method, raw (still percent-encoded) path and raw query.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    if path.len() > MAX_PATH_LEN || !path.starts_with('/') {
        return Err(RouteError::BadPath);
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RouteError::BadPath);
    }
    // libnpmpublish builds `${registry}/-/package/...` from a registry URL that ends in '/'.
    let path = if path.starts_with("//-/") { &path[1..] } else { path };
    let segs: Vec<&str> = path[1..].split('/').collect();
    for s in &segs {
        if s.is_empty() || is_dot_segment(s) {
            return Err(RouteError::BadPath);
        }
    }
    if segs[0] == "-" {
        classify_special(method, &segs[1..], query)
    } else {
        classify_package_path(method, &segs, query).map(Route::Registry)
    }
}

/// `.` and `..`, each dot raw or percent-encoded (`%2e`, in either case). Checked in place:
/// every segment of every request passes through here.
fn is_dot_segment(s: &str) -> bool {
    let mut rest = s.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() && dots < 3 {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    rest.is_empty() && (1..=2).contains(&dots)
}

fn classify_special(method: &Method, segs: &[&str], query: Option<&str>) -> Result<Route, RouteError> {
    let get = is_read_method(method);
    let forbidden = |what, path| Ok(Route::Forbidden { what, path, package: None });
    let simple = |op: Op, query_ok: bool| -> Result<Route, RouteError> {
        if !get {
            return Err(RouteError::MethodNotAllowed);
        }
        Ok(Route::Registry(NpmRequest {
            method: method.clone(),
            package: None,
            op,
            form: NameForm::Escaped,
            query: if query_ok { query.map(str::to_owned) } else { None },
        }))
    };
    match segs {
        ["ping"] => simple(Op::Ping, true),
        ["whoami"] => simple(Op::Whoami, false),
        ["v1", "search"] => simple(Op::Search, true),
        ["npm", "v1", "oidc", "token", "exchange", "package", name] => {
            if *method != Method::POST {
                return Err(RouteError::MethodNotAllowed);
            }
            let (package, _) = parse_escaped_name(name)?;
            Ok(Route::NpmOidcExchange { package })
        }
        ["phantom", "v1", "exchange"] => {
            if *method != Method::POST {
                return Err(RouteError::MethodNotAllowed);
            }
            Ok(Route::PhantomExchange)
        }
        ["phantom", "v1", "issuers"] if get => Ok(Route::PhantomIssuers),
        ["phantom", "v1", "issuers"] => Err(RouteError::MethodNotAllowed),
        ["phantom", "v1", "holds"] if get => Ok(Route::PeopleHolds),
        ["phantom", "v1", "holds", id, verb @ ("approve" | "reject")] if is_hold_id(id) => {
            if *method != Method::POST {
                return Err(RouteError::MethodNotAllowed);
            }
            Ok(Route::HoldDecision { id: (*id).to_owned(), approve: *verb == "approve" })
        }
        ["npm", "v1", "security", rest @ ..] => security_audit(method, rest),
        ["npm", "v1", "tokens", ..] => forbidden("token management", "/-/npm/v1/tokens"),
        ["npm", "v1", "user", ..] => forbidden("profile and 2FA settings", "/-/npm/v1/user"),
        ["v1", "login", ..] => forbidden("login", "/-/v1/login"),
        ["v1", "done", ..] => forbidden("login", "/-/v1/done"),
        ["user", who] if get && who.starts_with("org.couchdb.user:") => {
            simple(Op::UserLookup { name: user_name(&who["org.couchdb.user:".len()..])? }, false)
        }
        ["user", ..] => forbidden("user accounts", "/-/user"),
        ["org", ..] => forbidden("org administration", "/-/org"),
        ["team", ..] => forbidden("team administration", "/-/team"),
        ["package", name, "trust", ..] => {
            let (package, _) = parse_escaped_name(name)?;
            let (what, path) = ("trusted-publisher configuration", "/-/package/{name}/trust");
            Ok(Route::Forbidden { what, path, package: Some(package) })
        }
        ["package", name, rest @ ..] => {
            let (package, form) = parse_escaped_name(name)?;
            package_request(method, package, package_op(method, rest)?, form, query)
        }
        ["stage", "package", name] => {
            if *method != Method::POST {
                return Err(RouteError::MethodNotAllowed);
            }
            let (package, form) = parse_escaped_name(name)?;
            package_request(method, package, Op::StagePublish, form, query)
        }
        ["stage"] if get => stage_list(method, query),
        ["stage", id] if get => stage_item(method, id, query, |id| Op::StageView { id }),
        ["stage", id, "tarball"] if get => stage_item(method, id, query, |id| Op::StageTarball { id }),
        // Approving or discarding a staged version is for humans with 2FA, never the broker.
        ["stage", ..] => forbidden("staged-publish review", "/-/stage"),
        _ => Err(RouteError::UnknownRoute),
    }
}

/// `npm audit`'s posts: relayed as sent, never with a credential.
fn security_audit(method: &Method, rest: &[&str]) -> Result<Route, RouteError> {
    let path = match rest {
        ["advisories", "bulk"] => "/-/npm/v1/security/advisories/bulk",
        ["audits", "quick"] => "/-/npm/v1/security/audits/quick",
        ["audits"] => "/-/npm/v1/security/audits",
        _ => return Err(RouteError::UnknownRoute),
    };
    if *method != Method::POST {
        return Err(RouteError::MethodNotAllowed);
    }
    let op = Op::SecurityAudit { path };
    Ok(Route::Registry(NpmRequest { method: Method::POST, package: None, op, form: NameForm::Escaped, query: None }))
}

/// A user name, as `npm owner add` looks it up (`/-/user/org.couchdb.user:<name>`).
fn user_name(name: &str) -> Result<String, RouteError> {
    let ok = !name.is_empty()
        && name.len() <= 214
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(RouteError::BadPath)
    }
}

/// `/-/package/<name>/...`: dist-tags, visibility, collaborators, access.
fn package_op(method: &Method, rest: &[&str]) -> Result<Op, RouteError> {
    Ok(match (rest, method) {
        (["dist-tags"], m) if is_read_method(m) => Op::DistTagsList,
        (["dist-tags", tag], &Method::PUT | &Method::POST) => Op::DistTagSet { tag: parse_tag(tag)? },
        (["dist-tags", tag], &Method::DELETE) => Op::DistTagRemove { tag: parse_tag(tag)? },
        (["visibility"], m) if is_read_method(m) => Op::Visibility,
        (["collaborators"], m) if is_read_method(m) => Op::Collaborators,
        (["access"], &Method::POST) => Op::AccessSet,
        (["dist-tags"] | ["dist-tags", _] | ["visibility"] | ["collaborators"] | ["access"], _) => {
            return Err(RouteError::MethodNotAllowed)
        }
        _ => return Err(RouteError::UnknownRoute),
    })
}

/// `GET /-/stage?package=<name>&page=N&perPage=N`, as npm's `stage list` sends it. The query
/// is parsed and rebuilt: only these three parameters, a valid package name, numbers.
fn stage_list(method: &Method, query: Option<&str>) -> Result<Route, RouteError> {
    let (mut package, mut page, mut per_page) = (None, None, None);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or(RouteError::UnexpectedQuery)?;
        let number = || value.parse::<u32>().map_err(|_| RouteError::UnexpectedQuery);
        let slot = match key {
            "package" => &mut package,
            "page" => &mut page,
            "perPage" => &mut per_page,
            _ => return Err(RouteError::UnexpectedQuery),
        };
        if slot.is_some() {
            return Err(RouteError::UnexpectedQuery);
        }
        *slot = Some(match key {
            "package" => value.to_owned(),
            _ => number()?.to_string(),
        });
    }
    let package = match package {
        // URLSearchParams writes `@` and `/` escaped; no other escape belongs in a name.
        Some(v) => {
            let name = v.replace("%40", "@").replace("%2F", "/").replace("%2f", "/");
            if name.contains('%') {
                return Err(RouteError::BadEncoding);
            }
            Some(PackageName::parse(&name)?)
        }
        None => None,
    };
    let mut rebuilt: Vec<String> = Vec::new();
    if let Some(p) = &package {
        rebuilt.push(format!("package={}", p.as_str().replace('@', "%40").replace('/', "%2F")));
    }
    if let Some(n) = page {
        rebuilt.push(format!("page={n}"));
    }
    if let Some(n) = per_page {
        rebuilt.push(format!("perPage={n}"));
    }
    let query = (!rebuilt.is_empty()).then(|| rebuilt.join("&"));
    Ok(Route::Registry(NpmRequest {
        method: method.clone(),
        package,
        op: Op::StageList,
        form: NameForm::Escaped,
        query,
    }))
}

/// `GET /-/stage/<id>` and its tarball: the id is a UUID, as npm checks before it asks.
fn stage_item(method: &Method, id: &str, query: Option<&str>, op: fn(String) -> Op) -> Result<Route, RouteError> {
    if query.is_some() {
        return Err(RouteError::UnexpectedQuery);
    }
    if !super::route::is_stage_id(id) {
        return Err(RouteError::BadPath);
    }
    let op = op(id.to_ascii_lowercase());
    Ok(Route::Registry(NpmRequest { method: method.clone(), package: None, op, form: NameForm::Escaped, query: None }))
}

fn classify_package_path(method: &Method, segs: &[&str], query: Option<&str>) -> Result<NpmRequest, RouteError> {
    // The package name takes one segment (`name`, `@scope%2fname`) or two (`@scope/name`).
    let (package, form, rest) = if segs[0].starts_with('@') && !segs[0].contains('%') {
        if segs.len() < 2 {
            return Err(RouteError::BadName(NameError::BadScope));
        }
        let package = PackageName::parse(&format!("{}/{}", segs[0], segs[1]))?;
        (package, NameForm::Slash, &segs[2..])
    } else {
        let (package, form) = parse_escaped_name(segs[0])?;
        (package, form, &segs[1..])
    };
    let read = is_read_method(method);
    let op = match (rest, method) {
        ([], _) if read => Op::Packument,
        ([], &Method::PUT) => Op::PutPackument,
        (["-", file], _) if read => Op::Tarball { file: parse_tarball_file(&package, file)? },
        (["-rev", rev], &Method::PUT) => Op::PutRevision { rev: parse_rev(rev)? },
        (["-rev", rev], &Method::DELETE) => Op::UnpublishPackage { rev: parse_rev(rev)? },
        (["-", file, "-rev", rev], &Method::DELETE) => {
            Op::UnpublishTarball { file: parse_tarball_file(&package, file)?, rev: parse_rev(rev)? }
        }
        ([spec], _) if read && *spec != "-" && *spec != "-rev" => Op::VersionManifest { spec: parse_spec(spec)? },
        ([] | ["-", _] | ["-rev", _] | ["-", _, "-rev", _] | [_], _) => return Err(RouteError::MethodNotAllowed),
        _ => return Err(RouteError::UnknownRoute),
    };
    match package_request(method, package, op, form, query)? {
        Route::Registry(r) => Ok(r),
        _ => unreachable!("package_request builds registry routes"),
    }
}

fn package_request(
    method: &Method,
    package: PackageName,
    op: Op,
    form: NameForm,
    query: Option<&str>,
) -> Result<Route, RouteError> {
    let write = !is_read_method(method);
    if write && query.is_some() {
        return Err(RouteError::UnexpectedQuery);
    }
    if write && package.is_legacy() {
        return Err(RouteError::LegacyNameWrite);
    }
    let query = match (&op, query) {
        // `?write=true` asks for the full document with `_rev`; it is still a read.
        (Op::Packument, Some("write=true")) => Some("write=true".to_owned()),
        (_, None) => None,
        _ if !write => return Err(RouteError::UnexpectedQuery),
        _ => None,
    };
    Ok(Route::Registry(NpmRequest { method: method.clone(), package: Some(package), op, form, query }))
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
