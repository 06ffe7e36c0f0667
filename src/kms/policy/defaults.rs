//! The policies AWS writes itself: the default key policy of `CreateKey` without a policy,
//! and the key policy of an AWS managed key (`alias/aws/<service>`), both in the layout
//! `GetKeyPolicy` shows them (Jackson's default pretty printer: `" : "` between name and
//! value, two-space indents for objects, arrays on one line, `[ {` … `}, {` … `} ]`).

/// A JSON value with its members in writing order.
enum Node {
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(&'static str, Node)>),
}

fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

fn quote(v: &str) -> String {
    serde_json::Value::String(v.to_string()).to_string()
}

fn write(node: &Node, depth: usize, out: &mut String) {
    match node {
        Node::Str(v) => out.push_str(&quote(v)),
        Node::Arr(items) if items.is_empty() => out.push_str("[ ]"),
        Node::Arr(items) => {
            out.push_str("[ ");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(item, depth, out);
            }
            out.push_str(" ]");
        }
        Node::Obj(members) if members.is_empty() => out.push_str("{ }"),
        Node::Obj(members) => {
            out.push('{');
            for (i, (name, value)) in members.iter().enumerate() {
                out.push_str(if i > 0 { ",\n" } else { "\n" });
                out.push_str(&"  ".repeat(depth + 1));
                out.push_str(&quote(name));
                out.push_str(" : ");
                write(value, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
            out.push('}');
        }
    }
}

fn render(node: &Node) -> String {
    let mut out = String::new();
    write(node, 0, &mut out);
    out
}

/// A string, or an array when there are several (as AWS writes `Action`).
fn one_or_many(items: &[&str]) -> Node {
    match items {
        [one] => s(*one),
        many => Node::Arr(many.iter().map(|a| s(*a)).collect()),
    }
}

/// The default key policy `CreateKey` gives a key when the request has none: the
/// account's root may do everything (`kms:*`), which enables the account's IAM policies.
pub fn default_key_policy(account_id: &str) -> String {
    render(&Node::Obj(vec![
        ("Version", s("2012-10-17")),
        ("Id", s("key-default-1")),
        (
            "Statement",
            Node::Arr(vec![Node::Obj(vec![
                ("Sid", s("Enable IAM User Permissions")),
                ("Effect", s("Allow")),
                (
                    "Principal",
                    Node::Obj(vec![("AWS", s(format!("arn:aws:iam::{account_id}:root")))]),
                ),
                ("Action", s("kms:*")),
                ("Resource", s("*")),
            ])]),
        ),
    ]))
}

/// How AWS names a service in its managed key's policy: (`alias/aws/<service>`, display
/// name, `kms:ViaService` host prefix, `Id`, actions through the service). Services not
/// listed use their alias name for all three and the common actions.
const SERVICES: &[(&str, &str, &str, &str, &[&str])] = &[
    ("ebs", "EBS", "ec2", "auto-ebs-2", COMMON_ACTIONS),
    (
        "s3",
        "S3",
        "s3",
        "auto-s3-2",
        &[
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:GenerateDataKey*",
            "kms:DescribeKey",
        ],
    ),
    (
        "rds",
        "RDS",
        "rds",
        "auto-rds-2",
        &[
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:GenerateDataKey*",
            "kms:CreateGrant",
            "kms:ListGrants",
            "kms:DescribeKey",
        ],
    ),
    (
        "lambda",
        "AWS Lambda",
        "lambda",
        "auto-awslambda",
        COMMON_ACTIONS,
    ),
    (
        "secretsmanager",
        "AWS Secrets Manager",
        "secretsmanager",
        "auto-secretsmanager-2",
        COMMON_ACTIONS,
    ),
];

const COMMON_ACTIONS: &[&str] = &[
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:CreateGrant",
    "kms:DescribeKey",
];

/// The key policy of the AWS managed key `alias/aws/<service>` in `region`: principals of
/// the account may use the key only through the service (`kms:ViaService` =
/// `<prefix>.<region>.amazonaws.com`, `kms:CallerAccount` = the account), and the account
/// may read the key's metadata and revoke grants directly. AWS writes a variant per
/// service; the best-known ones (EBS, S3, RDS, Lambda, Secrets Manager) follow the policies
/// AWS shows, others use the service's alias name and the common actions.
pub fn aws_managed_key_policy(account_id: &str, service: &str, region: &str) -> String {
    let (display, via, id, actions) = SERVICES
        .iter()
        .find(|(alias, ..)| *alias == service)
        .map(|&(_, display, via, id, actions)| (display.to_string(), via, id.to_string(), actions))
        .unwrap_or_else(|| {
            (
                service.to_string(),
                service,
                format!("auto-{service}-2"),
                COMMON_ACTIONS,
            )
        });
    render(&Node::Obj(vec![
        ("Version", s("2012-10-17")),
        ("Id", s(id)),
        (
            "Statement",
            Node::Arr(vec![
                Node::Obj(vec![
                    (
                        "Sid",
                        s(format!(
                            "Allow access through {display} for all principals in the account that are authorized to use {display}"
                        )),
                    ),
                    ("Effect", s("Allow")),
                    ("Principal", Node::Obj(vec![("AWS", s("*"))])),
                    ("Action", one_or_many(actions)),
                    ("Resource", s("*")),
                    (
                        "Condition",
                        Node::Obj(vec![(
                            "StringEquals",
                            Node::Obj(vec![
                                ("kms:CallerAccount", s(account_id)),
                                ("kms:ViaService", s(format!("{via}.{region}.amazonaws.com"))),
                            ]),
                        )]),
                    ),
                ]),
                Node::Obj(vec![
                    ("Sid", s("Allow direct access to key metadata to the account")),
                    ("Effect", s("Allow")),
                    (
                        "Principal",
                        Node::Obj(vec![("AWS", s(format!("arn:aws:iam::{account_id}:root")))]),
                    ),
                    (
                        "Action",
                        one_or_many(&["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"]),
                    ),
                    ("Resource", s("*")),
                ]),
            ]),
        ),
    ]))
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
    use crate::kms::policy::{PolicyDocument, PolicyKind};

    #[test]
    fn default_policy_is_awss_text() {
        let want = r#"{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::111122223333:root"
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}"#;
        assert_eq!(default_key_policy("111122223333"), want);
        assert!(PolicyDocument::parse(want, PolicyKind::Key).is_ok());
    }

    #[test]
    fn aws_managed_policy_text() {
        let want = r#"{
  "Version" : "2012-10-17",
  "Id" : "auto-ebs-2",
  "Statement" : [ {
    "Sid" : "Allow access through EBS for all principals in the account that are authorized to use EBS",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "*"
    },
    "Action" : [ "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey" ],
    "Resource" : "*",
    "Condition" : {
      "StringEquals" : {
        "kms:CallerAccount" : "111122223333",
        "kms:ViaService" : "ec2.us-west-2.amazonaws.com"
      }
    }
  }, {
    "Sid" : "Allow direct access to key metadata to the account",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : "arn:aws:iam::111122223333:root"
    },
    "Action" : [ "kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant" ],
    "Resource" : "*"
  } ]
}"#;
        assert_eq!(
            aws_managed_key_policy("111122223333", "ebs", "us-west-2"),
            want
        );
        for service in [
            "ebs",
            "s3",
            "rds",
            "lambda",
            "secretsmanager",
            "sqs",
            "dynamodb",
        ] {
            let text = aws_managed_key_policy("111122223333", service, "eu-west-1");
            assert!(
                PolicyDocument::parse(&text, PolicyKind::Key).is_ok(),
                "{service}"
            );
        }
        let sqs = aws_managed_key_policy("111122223333", "sqs", "eu-west-1");
        assert!(sqs.contains("\"Id\" : \"auto-sqs-2\""));
        assert!(sqs.contains("\"kms:ViaService\" : \"sqs.eu-west-1.amazonaws.com\""));
        assert!(sqs.contains("Allow access through sqs for all principals in the account that are authorized to use sqs"));
    }

    #[test]
    fn printer_edge_cases() {
        assert_eq!(render(&Node::Arr(vec![])), "[ ]");
        assert_eq!(render(&Node::Obj(vec![])), "{ }");
        assert_eq!(render(&s("a\"b\\c\n")), r#""a\"b\\c\n""#);
    }
}
