//! A classified registry request as a type: the route, the operation, the package, and the path
//! the upstream gets, rebuilt from those parts (`NpmRequest::upstream_path`), never copied from
//! the request; and the parsers of a path's segments. (`classify.rs` makes them.)

use super::action::{ActionKind, ActionSet, RouteAction};
use super::name::{NameError, PackageName};
use http::Method;

/// A route the broker understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// npm's trusted-publishing exchange: `POST /-/npm/v1/oidc/token/exchange/package/<name>`.
    NpmOidcExchange { package: PackageName },
    /// The broker's own exchange: `POST /-/phantom/v1/exchange`.
    PhantomExchange,
    /// The issuers people may sign in with from the CLI: `GET /-/phantom/v1/issuers`.
    PhantomIssuers,
    /// The held writes a person may approve: `GET /-/phantom/v1/holds`.
    PeopleHolds,
    /// A person's approval or rejection of a held write: `POST /-/phantom/v1/holds/<id>/approve`
    /// (or `/reject`).
    HoldDecision { id: String, approve: bool },
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
    pub(super) form: NameForm,
    /// The query string forwarded with reads (never with writes).
    pub(super) query: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameForm {
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

pub(super) fn is_read_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

/// `name` or `@scope%2fname` (either case of the escape). Any other `%` is refused.
pub(super) fn parse_escaped_name(seg: &str) -> Result<(PackageName, NameForm), RouteError> {
    let unescaped = if seg.starts_with('@') {
        // `%2f` or `%2F`, found without a lowercased copy.
        let at = seg
            .as_bytes()
            .windows(3)
            .position(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
            .ok_or(RouteError::BadName(NameError::BadScope))?;
        format!("{}/{}", &seg[..at], &seg[at + 3..])
    } else {
        seg.to_owned()
    };
    if unescaped.contains('%') {
        return Err(RouteError::BadEncoding);
    }
    Ok((PackageName::parse_owned(unescaped)?, NameForm::Escaped))
}

/// Dist-tags as npm writes them (`encodeURIComponent`): the characters that need no escape.
pub(super) fn parse_tag(seg: &str) -> Result<String, RouteError> {
    let ok = !seg.is_empty()
        && seg.len() <= 128
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if ok {
        Ok(seg.to_owned())
    } else {
        Err(RouteError::BadTag)
    }
}

pub(super) fn parse_rev(seg: &str) -> Result<String, RouteError> {
    let ok = !seg.is_empty() && seg.len() <= 128 && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| seg.to_owned()).ok_or(RouteError::BadPath)
}

pub(super) fn parse_spec(seg: &str) -> Result<String, RouteError> {
    let ok = seg.len() <= 256
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'~'));
    ok.then(|| seg.to_owned()).ok_or(RouteError::BadEncoding)
}

/// A tarball file must be `<bare name>-<version>.tgz` for the package in the same path.
pub(super) fn parse_tarball_file(package: &PackageName, seg: &str) -> Result<String, RouteError> {
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

/// A stage id is a UUID.
/// A held write's id, as the broker makes them: 24 lower-case hex digits.
pub fn is_hold_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A staged version's id as the registry gives it: a UUID.
pub fn is_stage_id(id: &str) -> bool {
    id.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl NpmRequest {
    /// The action this request performs, before the body is read. Body-dependent operations
    /// (`PutPackument`, `PutRevision`) report the action their body must still confirm.
    pub(crate) fn op(&self) -> &Op {
        &self.op
    }

    /// Writes that carry a JSON body (checked before anything decisive is forwarded). Other
    /// writes take no body at all.
    pub(crate) fn takes_body(&self) -> bool {
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
    pub(crate) fn always_anonymous(&self) -> bool {
        matches!(self.op, Op::Ping | Op::Search | Op::SecurityAudit { .. } | Op::UserLookup { .. })
    }

    /// The actions this request may turn out to be, before its body is read: a write whose
    /// phantom allows none of them is refused without reading the body.
    pub(crate) fn candidate_actions(&self) -> ActionSet {
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

    /// The broker's own read of `package`'s packument; `for_write` reads it as npm does before
    /// it sends it back changed (`?write=true`).
    pub(crate) fn packument(package: &PackageName, for_write: bool) -> NpmRequest {
        NpmRequest {
            method: Method::GET,
            package: Some(package.clone()),
            op: Op::Packument,
            form: NameForm::Escaped,
            query: for_write.then(|| "write=true".to_owned()),
        }
    }

    /// `GET /-/whoami`: the account a credential authenticates as.
    pub(crate) fn whoami() -> NpmRequest {
        NpmRequest { method: Method::GET, package: None, op: Op::Whoami, form: NameForm::Escaped, query: None }
    }

    /// `GET /-/stage?page=0&perPage=100[&package=<name>]` (pages count from 0): the versions the
    /// credential may see staged, of one package or of all (the console's list; a registry may
    /// refuse it to a token).
    pub(crate) fn stage_list(package: Option<&PackageName>) -> NpmRequest {
        let mut query = "page=0&perPage=100".to_owned();
        if let Some(p) = package {
            query.push_str("&package=");
            query.extend(percent_encoding::utf8_percent_encode(p.as_str(), percent_encoding::NON_ALPHANUMERIC));
        }
        NpmRequest {
            method: Method::GET,
            package: None,
            op: Op::StageList,
            form: NameForm::Escaped,
            query: Some(query),
        }
    }

    /// `GET /-/stage/<id>`: one staged version, when `id` is a stage id.
    pub(crate) fn stage_view(id: &str) -> Option<NpmRequest> {
        is_stage_id(id).then(|| NpmRequest {
            method: Method::GET,
            package: None,
            op: Op::StageView { id: id.to_ascii_lowercase() },
            form: NameForm::Escaped,
            query: None,
        })
    }

    /// For a staged version's view or tarball: the view of that item, which names its package.
    pub(crate) fn stage_item(&self) -> Option<NpmRequest> {
        match &self.op {
            Op::StageView { id } | Op::StageTarball { id } => NpmRequest::stage_view(id),
            _ => None,
        }
    }

    /// A publish (`PUT /<name>`) as a staged publish of the same package
    /// (`POST /-/stage/package/<name>`), for grants that stage their publishes.
    pub(crate) fn as_staged(&self) -> Option<NpmRequest> {
        (self.op == Op::PutPackument).then(|| NpmRequest {
            method: Method::POST,
            op: Op::StagePublish,
            form: NameForm::Escaped,
            ..self.clone()
        })
    }

    /// The action as far as the route tells it: the one action, or both that the body will
    /// decide between.
    pub(crate) fn route_action(&self) -> RouteAction {
        use ActionKind::*;
        match self.op {
            Op::PutPackument => RouteAction::Either(Publish, Deprecate),
            Op::PutRevision { .. } => RouteAction::Either(Unpublish, Owner),
            _ => RouteAction::One(self.candidate_actions().iter().next().unwrap_or(Read)),
        }
    }

    /// A packument read with `?write=true`: npm reads it to send it back changed (deprecate,
    /// unpublish).
    pub(crate) fn reads_for_write(&self) -> bool {
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
