//! Classifies an HTTP request line into one typed npm registry operation.
//!
//! Every path the broker forwards is rebuilt from the typed value (`NpmRequest::upstream_path`),
//! never copied from the request, so the upstream reads exactly what was classified. Anything
//! that does not parse unambiguously is refused.

use super::name::{NameError, PackageName};
use http::Method;

/// A route the broker understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// npm's trusted-publishing exchange: `POST /-/npm/v1/oidc/token/exchange/package/<name>`.
    NpmOidcExchange { package: PackageName },
    /// The broker's own exchange: `POST /-/phantom/v1/exchange`.
    PhantomExchange,
    /// Endpoints that are never forwarded with a real credential (tokens, login, users, trust,
    /// org and team administration, profile and 2FA, stage review). `path` is the route's fixed
    /// prefix, with `{name}` for the package when there is one: what follows in the request's
    /// path (ids, user names, tokens) is the caller's text and is not kept.
    Forbidden { what: &'static str, path: &'static str, package: Option<PackageName> },
    /// A registry operation to forward.
    Registry(NpmRequest),
}

/// A classified registry request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmRequest {
    pub method: Method,
    pub package: Option<PackageName>,
    pub op: Op,
    /// How a scoped name was written in the path: kept, so the upstream sees the client's form.
    form: NameForm,
    /// The query string forwarded with reads (never with writes).
    query: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameForm {
    /// `@scope%2fname` (also for unscoped names).
    Escaped,
    /// `@scope/name`, as tarball URLs are written.
    Slash,
}

/// The operation, as far as the request line tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Ping,
    Search,
    Whoami,
    /// `GET /-/user/org.couchdb.user:<name>` (npm owner add looks the user up first); anonymous.
    UserLookup {
        name: String,
    },
    /// `npm audit` posts dependency lists; it is a read and is never sent with a credential.
    SecurityAudit {
        path: &'static str,
    },
    Packument,
    VersionManifest {
        spec: String,
    },
    Tarball {
        file: String,
    },
    DistTagsList,
    Visibility,
    Collaborators,
    /// `PUT /<name>`: a publish, or a deprecate; the body decides.
    PutPackument,
    /// `PUT /<name>/-rev/<rev>`: an unpublish of one version, or an owner change; the body decides.
    PutRevision {
        rev: String,
    },
    StagePublish,
    /// `GET /-/stage?package=<name>`: the staged versions of a package (or, without `package`,
    /// of every package the credential may see).
    StageList,
    /// `GET /-/stage/<id>`: one staged version. Its package is not in the path.
    StageView {
        id: String,
    },
    /// `GET /-/stage/<id>/tarball`: the tarball of one staged version.
    StageTarball {
        id: String,
    },
    DistTagSet {
        tag: String,
    },
    DistTagRemove {
        tag: String,
    },
    UnpublishPackage {
        rev: String,
    },
    UnpublishTarball {
        file: String,
        rev: String,
    },
    AccessSet,
}

/// npm actions that grants and phantoms name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    Read,
    Publish,
    StagePublish,
    DistTag,
    Deprecate,
    Unpublish,
    Owner,
    Access,
    Whoami,
}

impl ActionKind {
    pub const ALL: [ActionKind; 9] = [
        ActionKind::Read,
        ActionKind::Publish,
        ActionKind::StagePublish,
        ActionKind::DistTag,
        ActionKind::Deprecate,
        ActionKind::Unpublish,
        ActionKind::Owner,
        ActionKind::Access,
        ActionKind::Whoami,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Read => "read",
            ActionKind::Publish => "publish",
            ActionKind::StagePublish => "stage-publish",
            ActionKind::DistTag => "dist-tag",
            ActionKind::Deprecate => "deprecate",
            ActionKind::Unpublish => "unpublish",
            ActionKind::Owner => "owner",
            ActionKind::Access => "access",
            ActionKind::Whoami => "whoami",
        }
    }

    pub fn parse(s: &str) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// A publish, direct or staged: what adds a version (and may create a package).
    pub fn publishes(self) -> bool {
        matches!(self, ActionKind::Publish | ActionKind::StagePublish)
    }

    /// Writes count against a phantom's `max_uses`.
    pub fn is_write(self) -> bool {
        !matches!(self, ActionKind::Read | ActionKind::Whoami)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// What a request does, as its route tells it (and the audit log and the metrics name it): one
/// action, or two that its body decides between (`publish|deprecate`, `unpublish|owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    One(ActionKind),
    Either(ActionKind, ActionKind),
}

impl RouteAction {
    /// Every value a route can give: each action, and the two pairs a body decides between.
    pub const ALL: [RouteAction; 11] = {
        use ActionKind::*;
        [
            RouteAction::One(Read),
            RouteAction::One(Publish),
            RouteAction::One(StagePublish),
            RouteAction::One(DistTag),
            RouteAction::One(Deprecate),
            RouteAction::One(Unpublish),
            RouteAction::One(Owner),
            RouteAction::One(Access),
            RouteAction::One(Whoami),
            RouteAction::Either(Publish, Deprecate),
            RouteAction::Either(Unpublish, Owner),
        ]
    };

    /// `publish`, or `publish|deprecate`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteAction::One(a) => a.as_str(),
            RouteAction::Either(ActionKind::Publish, ActionKind::Deprecate) => "publish|deprecate",
            RouteAction::Either(ActionKind::Unpublish, ActionKind::Owner) => "unpublish|owner",
            RouteAction::Either(a, _) => a.as_str(),
        }
    }
}

/// A set of actions, as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ActionSet(u16);

impl ActionSet {
    pub fn contains(self, a: ActionKind) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn insert(&mut self, a: ActionKind) {
        self.0 |= a.bit();
    }
    pub fn intersect(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 & other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = ActionKind> {
        ActionKind::ALL.into_iter().filter(move |a| self.contains(*a))
    }
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(ActionKind::as_str).collect()
    }
}

impl FromIterator<ActionKind> for ActionSet {
    fn from_iter<I: IntoIterator<Item = ActionKind>>(iter: I) -> Self {
        let mut set = ActionSet::default();
        iter.into_iter().for_each(|a| set.insert(a));
        set
    }
}

impl std::fmt::Debug for ActionSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the path is not a valid registry path")]
    BadPath,
    #[error("the path has an encoding the broker does not accept")]
    BadEncoding,
    #[error("invalid package name: {0}")]
    BadName(#[from] NameError),
    #[error("invalid dist-tag")]
    BadTag,
    #[error("the tarball file name does not belong to the package in the path")]
    TarballMismatch,
    #[error("unknown registry route")]
    UnknownRoute,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("a query string is not accepted on this route")]
    UnexpectedQuery,
    #[error("packages with legacy names (upper case or ~'!()*) cannot be written")]
    LegacyNameWrite,
}

impl RouteError {
    /// The HTTP status this refusal maps to.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::UnknownRoute => 404,
            RouteError::MethodNotAllowed => 405,
            _ => 400,
        }
    }
}

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
        ["npm", "v1", "security", rest @ ..] => {
            let path = match rest {
                ["advisories", "bulk"] => "/-/npm/v1/security/advisories/bulk",
                ["audits", "quick"] => "/-/npm/v1/security/audits/quick",
                ["audits"] => "/-/npm/v1/security/audits",
                _ => return Err(RouteError::UnknownRoute),
            };
            if *method != Method::POST {
                return Err(RouteError::MethodNotAllowed);
            }
            Ok(Route::Registry(NpmRequest {
                method: Method::POST,
                package: None,
                op: Op::SecurityAudit { path },
                form: NameForm::Escaped,
                query: None,
            }))
        }
        ["npm", "v1", "tokens", ..] => forbidden("token management", "/-/npm/v1/tokens"),
        ["npm", "v1", "user", ..] => forbidden("profile and 2FA settings", "/-/npm/v1/user"),
        ["v1", "login", ..] => forbidden("login", "/-/v1/login"),
        ["v1", "done", ..] => forbidden("login", "/-/v1/done"),
        ["user", who] if get && who.starts_with("org.couchdb.user:") => {
            let name = &who["org.couchdb.user:".len()..];
            let ok = !name.is_empty()
                && name.len() <= 214
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'));
            if !ok {
                return Err(RouteError::BadPath);
            }
            simple(Op::UserLookup { name: name.to_owned() }, false)
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
            let op = match (rest, method) {
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
            };
            package_request(method, package, op, form, query)
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
    let groups: Vec<&str> = id.split('-').collect();
    let uuid =
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !uuid {
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

fn is_read_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

/// `name` or `@scope%2fname` (either case of the escape). Any other `%` is refused.
fn parse_escaped_name(seg: &str) -> Result<(PackageName, NameForm), RouteError> {
    let unescaped = if seg.starts_with('@') {
        let lower = seg.to_ascii_lowercase();
        let at = lower.find("%2f").ok_or(RouteError::BadName(NameError::BadScope))?;
        format!("{}/{}", &seg[..at], &seg[at + 3..])
    } else {
        seg.to_owned()
    };
    if unescaped.contains('%') {
        return Err(RouteError::BadEncoding);
    }
    Ok((PackageName::parse(&unescaped)?, NameForm::Escaped))
}

/// Dist-tags as npm writes them (`encodeURIComponent`): the characters that need no escape.
pub fn parse_tag(seg: &str) -> Result<String, RouteError> {
    let ok = !seg.is_empty()
        && seg.len() <= 128
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if ok {
        Ok(seg.to_owned())
    } else {
        Err(RouteError::BadTag)
    }
}

fn parse_rev(seg: &str) -> Result<String, RouteError> {
    let ok = !seg.is_empty() && seg.len() <= 128 && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| seg.to_owned()).ok_or(RouteError::BadPath)
}

fn parse_spec(seg: &str) -> Result<String, RouteError> {
    let ok = seg.len() <= 256
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'~'));
    ok.then(|| seg.to_owned()).ok_or(RouteError::BadEncoding)
}

/// A tarball file must be `<bare name>-<version>.tgz` for the package in the same path.
fn parse_tarball_file(package: &PackageName, seg: &str) -> Result<String, RouteError> {
    let version = seg
        .strip_suffix(".tgz")
        .and_then(|s| s.strip_prefix(package.bare()))
        .and_then(|s| s.strip_prefix('-'))
        .ok_or(RouteError::TarballMismatch)?;
    if version.is_empty() || !version.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err(RouteError::TarballMismatch);
    }
    parse_spec(version)?;
    Ok(seg.to_owned())
}

impl NpmRequest {
    /// The action this request performs, before the body is read. Body-dependent operations
    /// (`PutPackument`, `PutRevision`) report the action their body must still confirm.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Writes that carry a JSON body (checked before anything decisive is forwarded). Other
    /// writes take no body at all.
    pub fn takes_body(&self) -> bool {
        matches!(
            self.op,
            Op::PutPackument | Op::PutRevision { .. } | Op::StagePublish | Op::DistTagSet { .. } | Op::AccessSet
        )
    }

    pub fn is_read(&self) -> bool {
        matches!(
            self.op,
            Op::Ping
                | Op::Search
                | Op::UserLookup { .. }
                | Op::SecurityAudit { .. }
                | Op::Packument
                | Op::VersionManifest { .. }
                | Op::Tarball { .. }
                | Op::DistTagsList
                | Op::Visibility
                | Op::Collaborators
                | Op::StageList
                | Op::StageView { .. }
                | Op::StageTarball { .. }
        )
    }

    /// Reads that are never sent with a credential, whoever asks.
    pub fn always_anonymous(&self) -> bool {
        matches!(self.op, Op::Ping | Op::Search | Op::SecurityAudit { .. } | Op::UserLookup { .. })
    }

    /// The actions this request may turn out to be, before its body is read: a write whose
    /// phantom allows none of them is refused without reading the body.
    pub fn candidate_actions(&self) -> ActionSet {
        use ActionKind::*;
        let list: &[ActionKind] = match self.op {
            Op::Whoami => &[Whoami],
            Op::PutPackument => &[Publish, Deprecate],
            Op::PutRevision { .. } => &[Unpublish, Owner],
            Op::StagePublish => &[StagePublish],
            Op::DistTagSet { .. } | Op::DistTagRemove { .. } => &[DistTag],
            Op::UnpublishPackage { .. } | Op::UnpublishTarball { .. } => &[Unpublish],
            Op::AccessSet => &[Access],
            _ => &[Read],
        };
        list.iter().copied().collect()
    }

    /// A publish (`PUT /<name>`) as a staged publish of the same package
    /// (`POST /-/stage/package/<name>`), for grants that stage their publishes.
    pub fn as_staged(&self) -> Option<NpmRequest> {
        (self.op == Op::PutPackument).then(|| NpmRequest {
            method: Method::POST,
            op: Op::StagePublish,
            form: NameForm::Escaped,
            ..self.clone()
        })
    }

    /// The action as far as the route tells it: the one action, or both that the body will
    /// decide between.
    pub fn route_action(&self) -> RouteAction {
        use ActionKind::*;
        match self.op {
            Op::PutPackument => RouteAction::Either(Publish, Deprecate),
            Op::PutRevision { .. } => RouteAction::Either(Unpublish, Owner),
            _ => RouteAction::One(self.candidate_actions().iter().next().unwrap_or(Read)),
        }
    }

    /// A packument read with `?write=true`: npm reads it to send it back changed (deprecate,
    /// unpublish).
    pub fn reads_for_write(&self) -> bool {
        self.query.as_deref() == Some("write=true")
    }

    /// The path and query to send upstream, rebuilt from the classified parts.
    pub fn upstream_path(&self) -> String {
        let name = match (&self.package, self.form) {
            (Some(p), NameForm::Escaped) => p.escaped(),
            (Some(p), NameForm::Slash) => p.as_str().to_owned(),
            (None, _) => String::new(),
        };
        let mut path = match &self.op {
            Op::Ping => "/-/ping".to_owned(),
            Op::Search => "/-/v1/search".to_owned(),
            Op::Whoami => "/-/whoami".to_owned(),
            Op::UserLookup { name } => format!("/-/user/org.couchdb.user:{name}"),
            Op::SecurityAudit { path } => (*path).to_owned(),
            Op::Packument | Op::PutPackument => format!("/{name}"),
            Op::VersionManifest { spec } => format!("/{name}/{spec}"),
            Op::Tarball { file } => format!("/{name}/-/{file}"),
            Op::PutRevision { rev } | Op::UnpublishPackage { rev } => format!("/{name}/-rev/{rev}"),
            Op::UnpublishTarball { file, rev } => format!("/{name}/-/{file}/-rev/{rev}"),
            Op::DistTagsList => format!("/-/package/{name}/dist-tags"),
            Op::DistTagSet { tag } | Op::DistTagRemove { tag } => {
                format!("/-/package/{name}/dist-tags/{tag}")
            }
            Op::Visibility => format!("/-/package/{name}/visibility"),
            Op::Collaborators => format!("/-/package/{name}/collaborators"),
            Op::AccessSet => format!("/-/package/{name}/access"),
            Op::StagePublish => format!("/-/stage/package/{name}"),
            Op::StageList => "/-/stage".to_owned(),
            Op::StageView { id } => format!("/-/stage/{id}"),
            Op::StageTarball { id } => format!("/-/stage/{id}/tarball"),
        };
        if let Some(q) = &self.query {
            path.push('?');
            path.push_str(q);
        }
        path
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
