//! STS actions: `GetCallerIdentity` (which account, principal and unique id a credential
//! is) and `AssumeRole` (temporary credentials of a role session, accepted by the very
//! next request).

use super::{el, iso8601, Params, QueryError};
use crate::api::AppState;
use crate::auth::Principal;
use crate::kms::iam::{AssumeRoleInput, Ctx};

/// The STS actions served.
pub(super) const ACTIONS: &[&str] = &["GetCallerIdentity", "AssumeRole"];

/// The STS action `action` as `ctx.principal`: the answer's result.
pub(super) async fn execute(
    app: &AppState,
    ctx: &Ctx<'_>,
    action: &str,
    params: &Params,
    response: &mut serde_json::Value,
) -> Result<Option<String>, QueryError> {
    Ok(Some(match action {
        "GetCallerIdentity" => get_caller_identity(app, ctx.principal)?,
        _ => assume_role(app, ctx, params, response).await?,
    }))
}

/// `GetCallerIdentity`: the account, ARN and unique id of the caller (`AIDA…` for a
/// user, `AROA…:session` for a role session, the account for the root user).
fn get_caller_identity(app: &AppState, p: &Principal) -> Result<String, QueryError> {
    let caller = app.kms.iam().caller(p)?;
    let user_id = caller.userid().unwrap_or(&p.account_id);
    Ok(format!(
        "    {}\n    {}\n    {}\n",
        el("Arn", &p.arn),
        el("UserId", user_id),
        el("Account", &p.account_id)
    ))
}

/// `AssumeRole`: the new credential joins the live set before the answer leaves.
/// Its record's `responseElements` (into `response`) name the session's access key id
/// and role session as CloudTrail does, without the secret or the session token.
async fn assume_role(
    app: &AppState,
    ctx: &Ctx<'_>,
    params: &Params,
    response: &mut serde_json::Value,
) -> Result<String, QueryError> {
    let input = AssumeRoleInput {
        role_arn: params.req("RoleArn", "roleArn")?,
        session_name: params.req("RoleSessionName", "roleSessionName")?,
        duration_seconds: params.int("DurationSeconds")?,
        session_policy: params.opt("Policy").is_some() || params.any_with_prefix("PolicyArns."),
    };
    let r = app.kms.iam().assume_role(ctx, &input).await?;
    let out = format!(
        "    <AssumedRoleUser>\n      {}\n      {}\n    </AssumedRoleUser>\n    \
         <Credentials>\n      {}\n      {}\n      {}\n      {}\n    </Credentials>\n",
        el("AssumedRoleId", &r.assumed_role_id),
        el("Arn", &r.arn),
        el("AccessKeyId", &r.credential.access_key_id),
        el("SecretAccessKey", &r.credential.secret_access_key),
        el("SessionToken", &r.session_token),
        el("Expiration", &iso8601(r.expiration)),
    );
    *response = serde_json::json!({
        "credentials": {
            "accessKeyId": r.credential.access_key_id,
            "expiration": crate::kms::audit::response_date(r.expiration),
        },
        "assumedRoleUser": {"assumedRoleId": r.assumed_role_id, "arn": r.arn},
    });
    app.credentials.upsert(r.credential);
    Ok(out)
}
