//! Principals: the forms an `AWS` principal may take in a policy (`*`, an account, a user,
//! a role, a role session) and the [`Caller`] a request is evaluated for, with the
//! matching rules between the two (direct, or through the caller's account).

use super::PolicyError;

/// The partitions whose ARNs are accepted.
const PARTITIONS: &[&str] = &["aws", "aws-cn", "aws-us-gov"];

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// An IAM name (user, role, session) or path segment: `[\w+=,.@-]`, 1 to 128 characters.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// `path/segments/name` with every segment a valid name; the last one is returned.
fn path_name(s: &str) -> Option<&str> {
    if s.len() > 512 || !s.split('/').all(is_name) {
        return None;
    }
    s.rsplit('/').next()
}

/// The parts of an IAM or STS ARN: (partition, service, account, resource).
fn split_arn(arn: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = arn.splitn(6, ':');
    let (prefix, partition, service, region, account, resource) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    (prefix == "arn" && PARTITIONS.contains(&partition) && region.is_empty() && is_account(account))
        .then_some((partition, service, account, resource))
}

/// An `AWS` principal named by a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AwsPrincipal {
    /// `*`: every principal.
    Everyone,
    /// An account: `111122223333` or `arn:aws:iam::111122223333:root`.
    Account(String),
    /// An IAM user, by ARN.
    User(String),
    /// An IAM role, by ARN: its sessions match.
    Role(String),
    /// One role session, by its `sts` ARN.
    Session(String),
}

impl AwsPrincipal {
    /// The principal `s` names, or `None` when `s` is not a principal AWS accepts.
    pub(super) fn parse(s: &str) -> Option<AwsPrincipal> {
        if s == "*" {
            return Some(AwsPrincipal::Everyone);
        }
        if is_account(s) {
            return Some(AwsPrincipal::Account(s.to_string()));
        }
        let (_, service, account, resource) = split_arn(s)?;
        match service {
            "iam" if resource == "root" => Some(AwsPrincipal::Account(account.to_string())),
            "iam" => {
                if let Some(rest) = resource.strip_prefix("user/") {
                    path_name(rest).map(|_| AwsPrincipal::User(s.to_string()))
                } else if let Some(rest) = resource.strip_prefix("role/") {
                    path_name(rest).map(|_| AwsPrincipal::Role(s.to_string()))
                } else {
                    None
                }
            }
            "sts" => {
                let rest = resource.strip_prefix("assumed-role/")?;
                let (role, session) = rest.split_once('/')?;
                (is_name(role) && is_name(session)).then(|| AwsPrincipal::Session(s.to_string()))
            }
            _ => None,
        }
    }
}

/// What kind of principal made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerKind {
    /// The account's root user (`arn:aws:iam::111122223333:root`).
    Root,
    /// An IAM user.
    User {
        /// The user's name (the last segment of its ARN, without the path).
        name: String,
    },
    /// A session of an assumed IAM role.
    AssumedRole {
        /// The role's IAM ARN (with its path when known).
        role_arn: String,
        /// The session name.
        session_name: String,
    },
}

/// The principal a request is evaluated for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    arn: String,
    account_id: String,
    kind: CallerKind,
    userid: Option<String>,
}

impl Caller {
    /// The caller an ARN names: `arn:aws:iam::ACCOUNT:root`, `arn:aws:iam::ACCOUNT:user/…`
    /// or `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` (whose role ARN is then taken to
    /// have no path; see [`Caller::assumed_role`]).
    pub fn from_arn(arn: &str) -> Result<Caller, PolicyError> {
        let bad = || PolicyError::InvalidCaller(arn.to_string());
        let (partition, service, account, resource) = split_arn(arn).ok_or_else(bad)?;
        let kind = match (service, resource) {
            ("iam", "root") => CallerKind::Root,
            ("iam", r) if r.starts_with("user/") => CallerKind::User {
                name: r
                    .strip_prefix("user/")
                    .and_then(path_name)
                    .ok_or_else(bad)?
                    .to_string(),
            },
            ("sts", r) => {
                let (role, session) = r
                    .strip_prefix("assumed-role/")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(role, session)| is_name(role) && is_name(session))
                    .ok_or_else(bad)?;
                CallerKind::AssumedRole {
                    role_arn: format!("arn:{partition}:iam::{account}:role/{role}"),
                    session_name: session.to_string(),
                }
            }
            _ => return Err(bad()),
        };
        Ok(Caller {
            arn: arn.to_string(),
            account_id: account.to_string(),
            kind,
            userid: None,
        })
    }

    /// A session `session_name` of the role `role_arn` (`arn:aws:iam::ACCOUNT:role/path/NAME`):
    /// its ARN is `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`.
    pub fn assumed_role(role_arn: &str, session_name: &str) -> Result<Caller, PolicyError> {
        let bad = || PolicyError::InvalidCaller(format!("{role_arn} / {session_name}"));
        let (partition, service, account, resource) = split_arn(role_arn).ok_or_else(bad)?;
        let name = resource
            .strip_prefix("role/")
            .and_then(path_name)
            .filter(|_| service == "iam" && is_name(session_name))
            .ok_or_else(bad)?;
        Ok(Caller {
            arn: format!("arn:{partition}:sts::{account}:assumed-role/{name}/{session_name}"),
            account_id: account.to_string(),
            kind: CallerKind::AssumedRole {
                role_arn: role_arn.to_string(),
                session_name: session_name.to_string(),
            },
            userid: None,
        })
    }

    /// The same caller with its unique id (`aws:userid`: `AIDA…` for a user,
    /// `AROA…:session` for a role session, the account id for root).
    pub fn with_userid(mut self, userid: impl Into<String>) -> Caller {
        self.userid = Some(userid.into());
        self
    }

    /// The caller's ARN (for a role session, the `sts` session ARN).
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The caller's 12-digit account.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// What kind of principal the caller is.
    pub fn kind(&self) -> &CallerKind {
        &self.kind
    }

    /// The caller's unique id, when known.
    pub fn userid(&self) -> Option<&str> {
        self.userid.as_deref()
    }

    /// `aws:username`: an IAM user's name (no other kind of caller has one).
    pub fn username(&self) -> Option<&str> {
        match &self.kind {
            CallerKind::User { name } => Some(name),
            _ => None,
        }
    }

    /// `aws:PrincipalArn`: the caller's ARN, or for a role session the role's ARN.
    pub fn principal_arn(&self) -> &str {
        match &self.kind {
            CallerKind::AssumedRole { role_arn, .. } => role_arn,
            _ => &self.arn,
        }
    }

    /// How `p` names this caller, if it does.
    pub(super) fn matched_by(&self, p: &AwsPrincipal) -> Option<PrincipalMatch> {
        match p {
            AwsPrincipal::Everyone => Some(PrincipalMatch::Direct),
            AwsPrincipal::Account(a) if *a == self.account_id => Some(match self.kind {
                // The root user is the account: IAM allows it everything.
                CallerKind::Root => PrincipalMatch::Direct,
                _ => PrincipalMatch::Account,
            }),
            AwsPrincipal::User(arn) | AwsPrincipal::Session(arn) if *arn == self.arn => {
                Some(PrincipalMatch::Direct)
            }
            AwsPrincipal::Role(arn) => match &self.kind {
                CallerKind::AssumedRole { role_arn, .. } if role_arn == arn => {
                    Some(PrincipalMatch::Direct)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether every identity of the caller (its account, and its user, or its role and
    /// session) is among `listed`: only then does a `NotPrincipal` exclude it (AWS's rule,
    /// hence "list the account too" in its documentation).
    pub(super) fn excluded_by(&self, listed: &[AwsPrincipal]) -> bool {
        if listed.contains(&AwsPrincipal::Everyone) {
            return true;
        }
        let account = listed
            .iter()
            .any(|p| matches!(p, AwsPrincipal::Account(a) if *a == self.account_id));
        let user_or_session = |want: &str| {
            listed
                .iter()
                .any(|p| matches!(p, AwsPrincipal::User(a) | AwsPrincipal::Session(a) if a == want))
        };
        let role = |want: &str| {
            listed
                .iter()
                .any(|p| matches!(p, AwsPrincipal::Role(a) if a == want))
        };
        account
            && match &self.kind {
                CallerKind::Root => true,
                CallerKind::User { .. } => user_or_session(&self.arn),
                CallerKind::AssumedRole { role_arn, .. } => {
                    role(role_arn) && user_or_session(&self.arn)
                }
            }
    }
}

/// How a statement's principal names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum PrincipalMatch {
    /// Through the caller's account (its id or root ARN): AWS delegates to the account's
    /// IAM policies.
    Account,
    /// The caller itself (its ARN, its role, `*`), or the root user through its account.
    Direct,
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    #[test]
    fn principal_forms() {
        use AwsPrincipal::*;
        let p = |s: &str| AwsPrincipal::parse(s);
        assert_eq!(p("*"), Some(Everyone));
        assert_eq!(p("111122223333"), Some(Account("111122223333".into())));
        assert_eq!(
            p("arn:aws:iam::111122223333:root"),
            Some(Account("111122223333".into()))
        );
        for ok in [
            "arn:aws:iam::111122223333:user/alice",
            "arn:aws:iam::111122223333:user/division/team/alice",
            "arn:aws-cn:iam::111122223333:user/a.b@c",
        ] {
            assert_eq!(p(ok), Some(User(ok.into())), "{ok}");
        }
        for ok in [
            "arn:aws:iam::111122223333:role/admin",
            "arn:aws:iam::111122223333:role/service-role/x",
        ] {
            assert_eq!(p(ok), Some(Role(ok.into())), "{ok}");
        }
        let s = "arn:aws:sts::111122223333:assumed-role/admin/sess";
        assert_eq!(p(s), Some(Session(s.into())));
        for bad in [
            "",
            "**",
            "11112222333",
            "1111222233334",
            "arn:aws:iam::111122223333:user/*",
            "arn:aws:iam::111122223333:user/",
            "arn:aws:iam::111122223333:user//a",
            "arn:aws:iam::111122223333:group/admins",
            "arn:aws:iam:us-east-1:111122223333:root",
            "arn:aws:iam::1111222233:root",
            "arn:aws:iam::*:root",
            "arn:aws:sts::111122223333:assumed-role/admin",
            "arn:aws:sts::111122223333:assumed-role/admin/s/x",
            "arn:aws:kms:us-east-1:111122223333:key/x",
            "arn:other:iam::111122223333:root",
            "AWS",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn callers() {
        let root = Caller::from_arn("arn:aws:iam::111122223333:root").unwrap();
        assert_eq!(root.kind(), &CallerKind::Root);
        assert_eq!(root.account_id(), "111122223333");
        let u = Caller::from_arn("arn:aws:iam::111122223333:user/ops/alice").unwrap();
        assert_eq!(u.username(), Some("alice"));
        assert_eq!(
            u.principal_arn(),
            "arn:aws:iam::111122223333:user/ops/alice"
        );
        let s = Caller::from_arn("arn:aws:sts::111122223333:assumed-role/admin/s1").unwrap();
        assert_eq!(s.principal_arn(), "arn:aws:iam::111122223333:role/admin");
        assert_eq!(s.username(), None);
        let s2 = Caller::assumed_role("arn:aws:iam::111122223333:role/team/admin", "s1").unwrap();
        assert_eq!(s2.arn(), "arn:aws:sts::111122223333:assumed-role/admin/s1");
        assert_eq!(
            s2.principal_arn(),
            "arn:aws:iam::111122223333:role/team/admin"
        );
        assert!(Caller::from_arn("arn:aws:iam::111122223333:role/admin").is_err());
        assert!(Caller::from_arn("garbage").is_err());
        assert!(Caller::assumed_role("arn:aws:iam::111122223333:user/a", "s").is_err());
        assert!(Caller::assumed_role("arn:aws:iam::111122223333:role/a", "s/x").is_err());
    }

    #[test]
    fn matching() {
        use AwsPrincipal::*;
        let u = Caller::from_arn("arn:aws:iam::111122223333:user/alice").unwrap();
        let s = Caller::from_arn("arn:aws:sts::111122223333:assumed-role/admin/s1").unwrap();
        let root = Caller::from_arn("arn:aws:iam::111122223333:root").unwrap();
        let acct = Account("111122223333".into());
        assert_eq!(u.matched_by(&Everyone), Some(PrincipalMatch::Direct));
        assert_eq!(u.matched_by(&acct), Some(PrincipalMatch::Account));
        assert_eq!(root.matched_by(&acct), Some(PrincipalMatch::Direct));
        assert_eq!(u.matched_by(&Account("444455556666".into())), None);
        assert_eq!(
            u.matched_by(&User("arn:aws:iam::111122223333:user/alice".into())),
            Some(PrincipalMatch::Direct)
        );
        assert_eq!(
            u.matched_by(&User("arn:aws:iam::111122223333:user/bob".into())),
            None
        );
        assert_eq!(
            s.matched_by(&Role("arn:aws:iam::111122223333:role/admin".into())),
            Some(PrincipalMatch::Direct)
        );
        assert_eq!(
            s.matched_by(&Session(
                "arn:aws:sts::111122223333:assumed-role/admin/s1".into()
            )),
            Some(PrincipalMatch::Direct)
        );
        assert_eq!(
            s.matched_by(&Session(
                "arn:aws:sts::111122223333:assumed-role/admin/s2".into()
            )),
            None
        );
        assert_eq!(
            u.matched_by(&Role("arn:aws:iam::111122223333:role/admin".into())),
            None
        );
    }
}
