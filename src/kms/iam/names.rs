//! IAM names, paths, ids and ARNs, validated as IAM validates them and refused with IAM's
//! `ValidationError` wording ("1 validation error detected: Value '…' at '…' failed to
//! satisfy constraint: …").

use crate::kms::KmsError;

/// IAM's pattern for user, role and policy names.
pub(crate) const NAME_PATTERN: &str = r"[\w+=,.@-]+";
/// IAM's pattern for a path.
const PATH_PATTERN: &str = r"(\u002F)|(\u002F[\u0021-\u007E]+\u002F)";
/// The longest user or role name.
pub(crate) const MAX_NAME: usize = 64;
/// The longest policy name.
pub(crate) const MAX_POLICY_NAME: usize = 128;

/// One failed constraint, worded as IAM words it.
pub(crate) fn invalid(field: &str, value: &str, constraint: &str) -> KmsError {
    KmsError::Validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy \
         constraint: {constraint}"
    ))
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b)
}

/// `value` as a name of at most `max` characters of [`NAME_PATTERN`].
pub(crate) fn check_name(field: &str, value: &str, max: usize) -> Result<(), KmsError> {
    if value.is_empty() {
        return Err(invalid(
            field,
            value,
            "Member must have length greater than or equal to 1",
        ));
    }
    if value.chars().count() > max {
        return Err(invalid(
            field,
            value,
            &format!("Member must have length less than or equal to {max}"),
        ));
    }
    if !value.bytes().all(is_name_char) {
        return Err(invalid(
            field,
            value,
            &format!("Member must satisfy regular expression pattern: {NAME_PATTERN}"),
        ));
    }
    Ok(())
}

/// A role session name: 2 to 64 characters of [`NAME_PATTERN`].
pub(crate) fn check_session_name(value: &str) -> Result<(), KmsError> {
    let field = "roleSessionName";
    if value.chars().count() < 2 {
        return Err(invalid(
            field,
            value,
            "Member must have length greater than or equal to 2",
        ));
    }
    check_name(field, value, 64).map_err(|_| {
        if value.chars().count() > 64 {
            invalid(
                field,
                value,
                "Member must have length less than or equal to 64",
            )
        } else {
            invalid(
                field,
                value,
                r"Member must satisfy regular expression pattern: [\w+=,.@-]*",
            )
        }
    })
}

/// A path: `/`, or `/` segments `/` where every segment is a name (IAM also allows other
/// printable characters in a path; they are refused here because the principal ARNs the
/// policy language reads allow only name characters).
pub(crate) fn check_path(value: &str) -> Result<(), KmsError> {
    let field = "path";
    if value.len() > 512 {
        return Err(invalid(
            field,
            value,
            "Member must have length less than or equal to 512",
        ));
    }
    let ok = value == "/"
        || (value.len() > 2
            && value.starts_with('/')
            && value.ends_with('/')
            && value.get(1..value.len() - 1).is_some_and(|inner| {
                inner
                    .split('/')
                    .all(|seg| !seg.is_empty() && seg.bytes().all(is_name_char))
            }));
    if !ok {
        return Err(invalid(
            field,
            value,
            &format!("Member must satisfy regular expression pattern: {PATH_PATTERN}"),
        ));
    }
    Ok(())
}

/// A `PathPrefix` of a listing: starts with `/`, at most 512 printable characters.
pub(crate) fn check_path_prefix(value: &str) -> Result<(), KmsError> {
    let ok = value.starts_with('/')
        && value.len() <= 512
        && value.bytes().all(|b| (0x21..=0x7f).contains(&b));
    if !ok {
        return Err(invalid(
            "pathPrefix",
            value,
            r"Member must satisfy regular expression pattern: \u002F[\u0021-\u007F]*",
        ));
    }
    Ok(())
}

/// A role description: at most 1000 characters, printable ASCII, tab, line breaks or
/// Latin-1.
pub(crate) fn check_description(value: &str) -> Result<(), KmsError> {
    if value.chars().count() > 1000 {
        return Err(invalid(
            "description",
            value,
            "Member must have length less than or equal to 1000",
        ));
    }
    let ok = value
        .chars()
        .all(|c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7e}' | '\u{a1}'..='\u{ff}'));
    if !ok {
        return Err(invalid(
            "description",
            value,
            r"Member must satisfy regular expression pattern: [\u0009\u000A\u000D\u0020-\u007E\u00A1-\u00FF]*",
        ));
    }
    Ok(())
}

/// `value` within `min..=max`, else IAM's message for the bound it crosses.
pub(crate) fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<(), KmsError> {
    if value < min {
        return Err(invalid(
            field,
            &value.to_string(),
            &format!("Member must have value greater than or equal to {min}"),
        ));
    }
    if value > max {
        return Err(invalid(
            field,
            &value.to_string(),
            &format!("Member must have value less than or equal to {max}"),
        ));
    }
    Ok(())
}

/// The ARN of the user `name` at `path` in `account`.
pub(crate) fn user_arn(account: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user{path}{name}")
}

/// The ARN of the role `name` at `path` in `account`.
pub(crate) fn role_arn(account: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:role{path}{name}")
}

/// `(account, path, name)` of an IAM ARN of `kind` (`user`, `role`), or `None`.
pub(crate) fn split_arn<'a>(arn: &'a str, kind: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = arn.strip_prefix("arn:aws:iam::")?;
    let (account, resource) = rest.split_once(':')?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let resource = resource.strip_prefix(kind)?;
    if !resource.starts_with('/') {
        return None;
    }
    let cut = resource.rfind('/')?;
    let (path, name) = (resource.get(..=cut)?, resource.get(cut + 1..)?);
    (check_path(path).is_ok() && check_name("name", name, MAX_NAME).is_ok())
        .then_some((account, path, name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_paths_and_arns_follow_iam() {
        assert!(check_name("userName", "alice+=,.@_-1", 64).is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(check_name("userName", bad, 64).is_err(), "{bad}");
        }
        let e = check_name("userName", "a b", 64).unwrap_err().to_string();
        assert_eq!(
            e,
            r"1 validation error detected: Value 'a b' at 'userName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@-]+"
        );
        for ok in ["/", "/a/", "/a/b-c/"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "/a", "a/", "//", "/a//b/", "/a b/"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            split_arn("arn:aws:iam::111122223333:user/a/b/alice", "user"),
            Some(("111122223333", "/a/b/", "alice"))
        );
        assert_eq!(
            split_arn("arn:aws:iam::111122223333:role/r", "role"),
            Some(("111122223333", "/", "r"))
        );
        assert_eq!(split_arn("arn:aws:iam::111122223333:root", "user"), None);
        assert_eq!(split_arn("arn:aws:iam::1111:user/a", "user"), None);
        assert!(check_session_name("ab").is_ok());
        assert!(check_session_name("a").is_err());
        assert!(check_session_name("a b").is_err());
        assert!(check_range("maxSessionDuration", 3599, 3600, 43200).is_err());
        assert!(check_range("maxSessionDuration", 43200, 3600, 43200).is_ok());
    }
}
