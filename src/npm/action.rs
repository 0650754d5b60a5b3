//! The npm actions that grants and phantoms name, and what a request does as its route tells it.

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
    pub(crate) fn intersect(self, other: ActionSet) -> ActionSet {
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
