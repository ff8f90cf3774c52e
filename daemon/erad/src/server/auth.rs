//! Who may call what on the `era.v1` API.
//!
//! erad runs as root and its API starts workloads, so reaching the socket is
//! not enough: every `era.v1.Deployments` call is checked against the
//! caller's role, taken from the kernel's credentials of the connecting
//! process. `admin` (root, erad's own user, and members of
//! `[api] admin_group`) may do everything; `reader` (members of
//! `[api] read_group`) may only read. Anyone else is refused every call.
//! Refusals are `PERMISSION_DENIED` and name the role the call needs.
//! `grpc.health.v1` and reflection stay open: they reveal nothing a
//! deployment holds.

use crate::config::GroupRef;
use std::convert::Infallible;
use std::sync::Arc;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::transport::server::UdsConnectInfo;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read deployments, their history, logs, plugins and images.
    Reader,
    /// Everything, including what changes state.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }
}

/// Each `era.v1.Deployments` method and the role it needs. A method missing
/// here needs admin (fail closed); a unit test holds the table to the proto.
/// `Validate` is apply's dry run: it runs the plugin on the caller's spec and
/// looks at paths it names, so it needs what apply needs.
pub const METHODS: &[(&str, Role)] = &[
    ("Apply", Role::Admin),
    ("Validate", Role::Admin),
    ("Rollback", Role::Admin),
    ("Stop", Role::Admin),
    ("Start", Role::Admin),
    ("Delete", Role::Admin),
    ("Pull", Role::Admin),
    // A plan runs the plugins' validate on the caller's specs and asks
    // registries, as Validate does; applying one changes deployments.
    ("Plan", Role::Admin),
    ("ApplyPlan", Role::Admin),
    ("ForceUnlock", Role::Admin),
    ("Destroy", Role::Admin),
    ("SetOutput", Role::Admin),
    ("Promote", Role::Admin),
    ("AcknowledgeBreaches", Role::Admin),
    ("DeleteAllEnvironments", Role::Admin),
    ("Get", Role::Reader),
    ("List", Role::Reader),
    ("History", Role::Reader),
    ("Watch", Role::Reader),
    ("Plugins", Role::Reader),
    ("Images", Role::Reader),
    ("Logs", Role::Reader),
    ("Locks", Role::Reader),
    ("Runs", Role::Reader),
    ("RunShow", Role::Reader),
    ("Report", Role::Reader),
    ("Outputs", Role::Reader),
    ("Invariants", Role::Reader),
];

/// The role `method` (as in the gRPC path) needs.
pub fn required(method: &str) -> Role {
    METHODS.iter().find(|(m, _)| *m == method).map_or(Role::Admin, |(_, r)| *r)
}

/// A group from the config, resolved to its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    /// How refusals name it: its name where known, else its number.
    pub label: String,
}

/// Why an `[api]` group is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct GroupError {
    pub key: &'static str,
    pub message: String,
}

/// Where group names are looked up. NSS (LDAP, sssd) is not consulted: it
/// needs libc's resolver; such groups are given by number.
const GROUP_FILE: &str = "/etc/group";

/// Resolves a configured group: a number as is, a name through `/etc/group`.
pub fn resolve_group(key: &'static str, group: &GroupRef) -> Result<Group, GroupError> {
    let table = std::fs::read_to_string(GROUP_FILE).unwrap_or_default();
    let entries: Vec<(&str, u32)> = table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .collect();
    let by_number = |gid: u32| {
        let label = entries.iter().find(|(_, g)| *g == gid).map_or(gid.to_string(), |(n, _)| n.to_string());
        Group { gid, label }
    };
    match group {
        GroupRef::Id(gid) => Ok(by_number(*gid)),
        GroupRef::Name(s) => match s.parse::<u32>() {
            Ok(gid) => Ok(by_number(gid)),
            Err(_) => entries
                .iter()
                .find(|(n, _)| n == s)
                .map(|(n, gid)| Group { gid: *gid, label: n.to_string() })
                .ok_or_else(|| GroupError {
                    key,
                    message: format!(
                        "no group named {s:?} in {GROUP_FILE} (give its number if it comes from elsewhere)"
                    ),
                }),
        },
    }
}

/// Who is calling: the kernel's credentials of the connecting process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// The primary group and the supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// The caller behind a connection. `SO_PEERCRED` gives the uid, primary
    /// gid and pid at connect time; the supplementary groups come from
    /// `/proc/<pid>/status`, which is what the kernel itself checks access
    /// with (`setpriv`, `newgrp`, systemd's `SupplementaryGroups=`, NSS
    /// groups all show there), while `/etc/group` can differ from what a
    /// process really holds (a member removed there keeps the group until
    /// they log in again, one added has not got it yet). The pid may have
    /// exited and been reused by the time it is read, so the groups count
    /// only if that process has the same effective uid and gid as the peer;
    /// otherwise the caller has its primary group alone (fails closed).
    pub fn from_connection(info: &UdsConnectInfo) -> Option<Caller> {
        let cred = info.peer_cred?;
        let mut groups = vec![cred.gid()];
        if let Some(pid) = cred.pid()
            && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        {
            groups.extend(supplementary_groups(&status, cred.uid(), cred.gid()));
        }
        groups.sort_unstable();
        groups.dedup();
        Some(Caller { uid: cred.uid(), groups })
    }
}

/// The `Groups:` of a `/proc/<pid>/status` whose effective uid and gid are
/// `uid` and `gid`; none otherwise.
fn supplementary_groups(status: &str, uid: u32, gid: u32) -> Vec<u32> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::split_whitespace);
    let effective = |name: &str| field(name).and_then(|mut f| f.nth(1)).and_then(|v| v.parse::<u32>().ok());
    if effective("Uid:") != Some(uid) || effective("Gid:") != Some(gid) {
        return Vec::new();
    }
    field("Groups:").map(|f| f.filter_map(|g| g.parse().ok()).collect()).unwrap_or_default()
}

/// The roles of this daemon: who holds which.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// erad's own effective uid: its user is admin like root.
    pub own_uid: u32,
    pub admin_group: Option<Group>,
    pub read_group: Option<Group>,
}

impl ApiAccess {
    pub fn role_of(&self, caller: &Caller) -> Option<Role> {
        let member = |g: &Option<Group>| g.as_ref().is_some_and(|g| caller.groups.contains(&g.gid));
        if caller.uid == 0 || caller.uid == self.own_uid || member(&self.admin_group) {
            Some(Role::Admin)
        } else if member(&self.read_group) {
            Some(Role::Reader)
        } else {
            None
        }
    }

    /// Who holds `role`, for refusals.
    fn holders(&self, role: Role) -> String {
        let admin = match &self.admin_group {
            Some(g) => format!("root or group {}", g.label),
            None => "root or erad's own user; no api.admin_group is configured".to_string(),
        };
        match (role, &self.read_group) {
            (Role::Admin, _) => admin,
            (Role::Reader, Some(g)) => format!("group {}, or admin: {admin}", g.label),
            (Role::Reader, None) => format!("no api.read_group is configured, so admin: {admin}"),
        }
    }

    /// Checks a call to `method` (the last segment of its gRPC path).
    pub fn check(&self, method: &str, caller: Option<&Caller>) -> Result<(), tonic::Status> {
        let needed = required(method);
        let role = caller.and_then(|c| self.role_of(c));
        if role.is_some_and(|r| r >= needed) {
            return Ok(());
        }
        let who = match (caller, role) {
            (Some(c), Some(r)) => format!("you are uid {} in the {} role", c.uid, r.as_str()),
            (Some(c), None) => format!("you are uid {} with no role", c.uid),
            (None, _) => "erad cannot tell who you are (no peer credentials)".to_string(),
        };
        Err(tonic::Status::permission_denied(format!(
            "{} needs the {} role ({}); {who}",
            method.to_ascii_lowercase(),
            needed.as_str(),
            self.holders(needed)
        )))
    }
}

/// A gRPC service with every call checked by [`ApiAccess`].
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    access: Arc<ApiAccess>,
}

impl<S> Authorized<S> {
    pub fn new(inner: S, access: Arc<ApiAccess>) -> Self {
        Authorized { inner, access }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authorized<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let caller = req.extensions().get::<UdsConnectInfo>().and_then(Caller::from_connection);
        match self.access.check(method, caller.as_ref()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                tracing::info!(method, uid = caller.map(|c| c.uid), "refused: {}", status.message());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> ApiAccess {
        ApiAccess {
            own_uid: 990,
            admin_group: Some(Group { gid: 500, label: "era-admin".into() }),
            read_group: Some(Group { gid: 501, label: "era".into() }),
        }
    }

    fn caller(uid: u32, groups: &[u32]) -> Caller {
        Caller { uid, groups: groups.to_vec() }
    }

    #[test]
    fn every_method_of_the_proto_has_a_role_and_only_reads_are_open_to_readers() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(era_api::v1::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "Deployments")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
            .collect();
        let mut listed: Vec<String> = METHODS.iter().map(|(m, _)| m.to_string()).collect();
        methods.sort();
        listed.sort();
        assert_eq!(methods, listed, "METHODS must list every era.v1.Deployments method");
        let reads: Vec<&str> = METHODS.iter().filter(|(_, r)| *r == Role::Reader).map(|(m, _)| *m).collect();
        assert_eq!(
            reads,
            [
                "Get",
                "List",
                "History",
                "Watch",
                "Plugins",
                "Images",
                "Logs",
                "Locks",
                "Runs",
                "RunShow",
                "Report",
                "Outputs",
                "Invariants"
            ]
        );
        assert_eq!(required("SomethingNew"), Role::Admin, "unknown methods fail closed");
    }

    #[test]
    fn roles_come_from_uid_and_groups() {
        let a = access();
        assert_eq!(a.role_of(&caller(0, &[0])), Some(Role::Admin));
        assert_eq!(a.role_of(&caller(990, &[990])), Some(Role::Admin), "erad's own user");
        assert_eq!(a.role_of(&caller(1000, &[1000, 500])), Some(Role::Admin));
        assert_eq!(a.role_of(&caller(1000, &[501])), Some(Role::Reader));
        assert_eq!(a.role_of(&caller(1000, &[1000, 27])), None);
    }

    #[test]
    fn refusals_name_the_role_needed_and_the_callers() {
        let a = access();
        let err = a.check("Apply", Some(&caller(1000, &[501]))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "apply needs the admin role (root or group era-admin); you are uid 1000 in the reader role"
        );
        let err = a.check("Get", Some(&caller(65534, &[65534]))).unwrap_err();
        assert_eq!(
            err.message(),
            "get needs the reader role (group era, or admin: root or group era-admin); you are uid 65534 with no role"
        );
        assert!(a.check("Get", Some(&caller(1000, &[501]))).is_ok());
        assert!(a.check("Delete", Some(&caller(1000, &[500]))).is_ok());
        assert!(a.check("Get", None).is_err(), "no credentials, no access");
    }

    #[test]
    fn supplementary_groups_count_only_for_the_same_credentials() {
        let status = "Name:\tera\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t27 500 \n";
        assert_eq!(supplementary_groups(status, 1000, 100), [27, 500]);
        assert!(supplementary_groups(status, 1001, 100).is_empty(), "another process now has this pid");
        assert!(supplementary_groups(status, 1000, 27).is_empty());
        assert!(supplementary_groups("Uid:\t1000\t1000\t1000\t1000\nGid:\t1\t1\t1\t1\nGroups:\n", 1000, 1).is_empty());
    }

    #[test]
    fn groups_resolve_by_number_or_by_name() {
        assert_eq!(resolve_group("api.read_group", &GroupRef::Id(0)).unwrap().gid, 0);
        assert_eq!(resolve_group("api.read_group", &GroupRef::Name("0".into())).unwrap().gid, 0);
        assert_eq!(resolve_group("api.read_group", &GroupRef::Name("root".into())).unwrap().gid, 0);
        let err = resolve_group("api.admin_group", &GroupRef::Name("no-such-group-here".into())).unwrap_err();
        assert!(err.to_string().starts_with("api.admin_group: no group named \"no-such-group-here\""), "{err}");
    }
}
