//! IAM actions: users, access keys, inline policies, roles. Parameters are read here; the
//! domain (`kms::iam`) validates, authorizes and acts; the answers are IAM's XML shapes
//! (policy documents URL-encoded, as IAM sends them).

use super::{el, iso8601, url_encode, Params, QueryError};
use crate::api::AppState;
use crate::kms::iam::{AccessKeyView, Ctx, RoleView, UserView};
use crate::store::IamPrincipalKind;

/// The IAM actions served.
pub(super) const ACTIONS: &[&str] = &[
    "CreateUser",
    "GetUser",
    "ListUsers",
    "DeleteUser",
    "CreateAccessKey",
    "ListAccessKeys",
    "UpdateAccessKey",
    "DeleteAccessKey",
    "PutUserPolicy",
    "GetUserPolicy",
    "ListUserPolicies",
    "DeleteUserPolicy",
    "CreateRole",
    "GetRole",
    "DeleteRole",
    "PutRolePolicy",
    "GetRolePolicy",
    "ListRolePolicies",
    "DeleteRolePolicy",
];

fn user_xml(u: &UserView, indent: &str) -> String {
    let mut s = format!("{indent}<User>\n");
    if let Some(path) = &u.path {
        s.push_str(&format!("{indent}  {}\n", el("Path", path)));
    }
    if let Some(name) = &u.name {
        s.push_str(&format!("{indent}  {}\n", el("UserName", name)));
    }
    s.push_str(&format!(
        "{indent}  {}\n{indent}  {}\n{indent}  {}\n{indent}</User>\n",
        el("UserId", &u.id),
        el("Arn", &u.arn),
        el("CreateDate", &iso8601(u.created))
    ));
    s
}

fn member_user_xml(u: &UserView) -> String {
    user_xml(u, "      ")
        .replace("<User>", "<member>")
        .replace("</User>", "</member>")
}

fn role_xml(r: &RoleView) -> String {
    let mut s = format!(
        "    <Role>\n      {}\n      {}\n      {}\n      {}\n      {}\n      {}\n",
        el("Path", &r.path),
        el("RoleName", &r.name),
        el("RoleId", &r.id),
        el("Arn", &r.arn),
        el("CreateDate", &iso8601(r.created)),
        el("AssumeRolePolicyDocument", &url_encode(&r.trust_policy)),
    );
    if let Some(d) = &r.description {
        s.push_str(&format!("      {}\n", el("Description", d)));
    }
    s.push_str(&format!(
        "      {}\n    </Role>\n",
        el("MaxSessionDuration", &r.max_session_duration.to_string())
    ));
    s
}

fn key_xml(k: &AccessKeyView, tag: &str) -> String {
    let mut s = format!("    <{tag}>\n");
    if let Some(u) = &k.user_name {
        s.push_str(&format!("      {}\n", el("UserName", u)));
    }
    s.push_str(&format!(
        "      {}\n      {}\n",
        el("AccessKeyId", &k.access_key_id),
        el("Status", if k.active { "Active" } else { "Inactive" })
    ));
    if let Some(secret) = &k.secret {
        s.push_str(&format!("      {}\n", el("SecretAccessKey", secret)));
    }
    s.push_str(&format!(
        "      {}\n    </{tag}>\n",
        el("CreateDate", &iso8601(k.created))
    ));
    s
}

fn names_xml(list: &str, names: &[String]) -> String {
    let mut s = format!("    <{list}>\n");
    for n in names {
        s.push_str(&format!("      {}\n", el("member", n)));
    }
    s.push_str(&format!(
        "    </{list}>\n    <IsTruncated>false</IsTruncated>\n"
    ));
    s
}

/// The IAM action `action` as `ctx.principal`: the answer's result, if it has one; the
/// record's `responseElements` into `response` where CloudTrail has them.
pub(super) async fn execute(
    app: &AppState,
    ctx: &Ctx<'_>,
    action: &str,
    params: &Params,
    response: &mut serde_json::Value,
) -> Result<Option<String>, QueryError> {
    let iam = app.kms.iam();
    let user = || params.req("UserName", "userName");
    let role = || params.req("RoleName", "roleName");
    let policy = || params.req("PolicyName", "policyName");
    // The user or role an inline policy action is about.
    let kind = if action.contains("Role") {
        IamPrincipalKind::Role
    } else {
        IamPrincipalKind::User
    };
    let holder = || match kind {
        IamPrincipalKind::User => user(),
        IamPrincipalKind::Role => role(),
    };
    let result = match action {
        "CreateUser" => {
            let u = iam.create_user(ctx, user()?, params.opt("Path")).await?;
            Some(user_xml(&u, "    "))
        }
        "GetUser" => {
            let u = iam.get_user(ctx, params.opt("UserName")).await?;
            Some(user_xml(&u, "    "))
        }
        "ListUsers" => {
            let page = iam.list_users(
                ctx,
                params.opt("PathPrefix"),
                params.opt("Marker"),
                params.int("MaxItems")?,
            )?;
            let mut s = String::from("    <Users>\n");
            for u in &page.users {
                s.push_str(&member_user_xml(u));
            }
            s.push_str("    </Users>\n");
            s.push_str(&format!(
                "    {}\n",
                el(
                    "IsTruncated",
                    if page.marker.is_some() {
                        "true"
                    } else {
                        "false"
                    }
                )
            ));
            if let Some(m) = &page.marker {
                s.push_str(&format!("    {}\n", el("Marker", m)));
            }
            Some(s)
        }
        "DeleteUser" => {
            iam.delete_user(ctx, user()?).await?;
            None
        }
        // Access keys change in the store, then in the live set, under the set's change
        // lock: the periodic reload never mistakes them for changes made outside the API.
        "CreateAccessKey" => {
            let _changing = app.credentials.lock_changes().await;
            let (view, credential) = iam.create_access_key(ctx, params.opt("UserName")).await?;
            app.credentials.upsert(credential);
            // As CloudTrail shows it: the new key's id, never its secret.
            let mut key = serde_json::Map::new();
            key.insert("accessKeyId".into(), view.access_key_id.clone().into());
            let status = if view.active { "Active" } else { "Inactive" };
            key.insert("status".into(), status.into());
            if let Some(u) = &view.user_name {
                key.insert("userName".into(), u.clone().into());
            }
            let created = crate::kms::audit::response_date(view.created);
            key.insert("createDate".into(), created.into());
            *response = serde_json::json!({ "accessKey": key });
            Some(key_xml(&view, "AccessKey"))
        }
        "ListAccessKeys" => {
            let keys = iam.list_access_keys(ctx, params.opt("UserName")).await?;
            let mut s = String::from("    <AccessKeyMetadata>\n");
            for k in &keys {
                s.push_str(
                    &key_xml(k, "member")
                        .lines()
                        .map(|l| format!("  {l}\n"))
                        .collect::<String>(),
                );
            }
            s.push_str("    </AccessKeyMetadata>\n    <IsTruncated>false</IsTruncated>\n");
            Some(s)
        }
        "UpdateAccessKey" => {
            let akid = params.req("AccessKeyId", "accessKeyId")?;
            let status = params.req("Status", "status")?;
            let _changing = app.credentials.lock_changes().await;
            let active = iam
                .update_access_key(ctx, params.opt("UserName"), akid, status)
                .await?;
            app.credentials.set_active(akid, active);
            None
        }
        "DeleteAccessKey" => {
            let akid = params.req("AccessKeyId", "accessKeyId")?;
            let _changing = app.credentials.lock_changes().await;
            iam.delete_access_key(ctx, params.opt("UserName"), akid)
                .await?;
            app.credentials.remove(akid);
            None
        }
        "PutUserPolicy" | "PutRolePolicy" => {
            let doc = params.req("PolicyDocument", "policyDocument")?;
            iam.put_policy(ctx, kind, holder()?, policy()?, doc).await?;
            None
        }
        "GetUserPolicy" | "GetRolePolicy" => {
            let v = iam.get_policy(ctx, kind, holder()?, policy()?)?;
            let holder_tag = match kind {
                IamPrincipalKind::User => "UserName",
                IamPrincipalKind::Role => "RoleName",
            };
            Some(format!(
                "    {}\n    {}\n    {}\n",
                el(holder_tag, &v.principal_name),
                el("PolicyName", &v.policy_name),
                el("PolicyDocument", &url_encode(&v.document))
            ))
        }
        "ListUserPolicies" | "ListRolePolicies" => {
            let names = iam.list_policies(ctx, kind, holder()?)?;
            Some(names_xml("PolicyNames", &names))
        }
        "CreateRole" => {
            let r = iam
                .create_role(
                    ctx,
                    role()?,
                    params.opt("Path"),
                    params.req("AssumeRolePolicyDocument", "assumeRolePolicyDocument")?,
                    params.opt("Description"),
                    params.int("MaxSessionDuration")?,
                )
                .await?;
            Some(role_xml(&r))
        }
        "GetRole" => Some(role_xml(&iam.get_role(ctx, role()?)?)),
        "DeleteRole" => {
            iam.delete_role(ctx, role()?).await?;
            None
        }
        // DeleteUserPolicy, DeleteRolePolicy.
        _ => {
            iam.delete_policy(ctx, kind, holder()?, policy()?).await?;
            None
        }
    };
    Ok(result)
}
