//! The report of `hsm check`: per token, each row's service column (derived from
//! `needs::support` and `needs::import_support`, the capability table the cluster uses),
//! the capabilities per key spec, the verdict (can this token be a cluster member, and if
//! not why), the matrix for people (one column pair per token, differences marked) and the
//! JSON for scripts (field names documented in the README, "Checking a PKCS#11 token").

use super::{offered_by, Kind, Outcome, Ran, Target};
use crate::hsm::needs::{self, Need, Offered, Support};
use serde::Serialize;
use std::collections::BTreeMap;

/// Who the token says it is.
#[derive(Debug, Clone, Serialize)]
pub struct TokenFacts {
    /// Slot number.
    pub slot: u64,
    /// Token label.
    pub label: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// Token model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware version.
    pub firmware: String,
}

/// One row as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable identifier (`gcm.tag_failure`, `rsa.oaep_sha256`, `wrap.ed25519`…).
    pub id: String,
    /// What was done.
    pub check: String,
    /// `OK`, the `CKR_…` name the token returned, `FAILED` or `skipped`.
    pub result: String,
    /// The return value in hex (`0x7`), when there is one.
    pub rv: Option<String>,
    /// The PKCS#11 function that returned it.
    pub function: Option<String>,
    /// Whether the token did what the service needs (`null`: skipped or a measurement).
    pub ok: Option<bool>,
    /// Milliseconds the row took.
    pub ms: f64,
    /// `native`, `fallback`, `refused`, `skipped`, `info`; for connecting rows `ok` or
    /// `failed`.
    pub service: String,
    /// The fallback's name, the refused key specs, why it was skipped, the measurement.
    pub detail: String,
}

/// The report of one token.
#[derive(Debug, Clone, Serialize)]
pub struct HsmReport {
    /// The HSM's name.
    pub name: String,
    /// The module path.
    pub module: String,
    /// The token found (`null`: none).
    pub token: Option<TokenFacts>,
    /// Module loaded, token found, user logged in.
    pub connected: bool,
    /// Whether the token can serve as a cluster member.
    pub member: bool,
    /// The run was stopped by Ctrl-C or SIGTERM.
    pub cancelled: bool,
    /// Why it cannot be a member (empty when it can).
    pub reasons: Vec<String>,
    /// Key specs the service would refuse on this token though it can be a member.
    pub refused: Vec<String>,
    /// Per key spec (`KeySpec/KeyUsage`): `native`, `fallback: …` or `missing: …` (the
    /// same words as the service's health detail).
    pub capabilities: BTreeMap<String, String>,
    /// Per import wrapping algorithm: `native` or `missing: …`.
    pub imports: BTreeMap<String, String>,
    /// Needs no row could test (their rows were skipped), counted as met.
    pub not_checked: Vec<String>,
    /// The rows, in the order they ran.
    pub rows: Vec<Row>,
}

fn plural_list(v: &[String]) -> String {
    v.join(", ")
}

/// What the service does because the token does not meet `n` (with everything else it
/// offers): the key specs it refuses, or the fallback it takes.
fn consequence(n: Need, o: Offered) -> (&'static str, String) {
    let with = o.with(n, true);
    let mut refused = Vec::new();
    let mut fallbacks = Vec::new();
    for (name, kind) in needs::kinds() {
        let (now, then) = (needs::support(o, kind), needs::support(with, kind));
        if now == then {
            continue;
        }
        match now {
            Support::Missing(_) => refused.push(name),
            Support::Fallback(f) if !fallbacks.contains(&f) => fallbacks.push(f),
            _ => {}
        }
    }
    let mut imports = Vec::new();
    for (name, w) in needs::import_wrappings() {
        let (now, then) = (needs::import_support(o, w), needs::import_support(with, w));
        if now != then && matches!(now, Support::Missing(_)) {
            imports.push(name.to_string());
        }
    }
    let all = needs::kinds().len();
    let refused_text = if refused.len() == all {
        "every key spec".to_string()
    } else {
        plural_list(&refused)
    };
    let imports_text = format!("import wrapping {}", plural_list(&imports));
    match (refused.is_empty(), fallbacks.is_empty(), imports.is_empty()) {
        (false, _, true) => ("refused", refused_text),
        (false, _, false) => ("refused", format!("{refused_text}; {imports_text}")),
        (true, false, true) => ("fallback", fallbacks.join("; ")),
        (true, false, false) => (
            "fallback",
            format!(
                "{} (RSA Decrypt); refused: {imports_text}",
                fallbacks.join("; ")
            ),
        ),
        (true, true, false) => ("refused", imports_text),
        (true, true, true) => ("native", "not used by the service with this token".into()),
    }
}

fn result_of(r: &Ran) -> (String, Option<String>, Option<String>) {
    match &r.outcome {
        Outcome::Ok => ("OK".into(), None, None),
        Outcome::Ck { name, rv, function } => (
            name.clone(),
            rv.map(|v| format!("0x{v:X}")),
            function.clone(),
        ),
        Outcome::Failed(_) => ("FAILED".into(), None, None),
        Outcome::Skipped(_) => ("skipped".into(), None, None),
    }
}

fn service_of(r: &Ran, o: Offered) -> (String, String) {
    let with_note = |d: String| -> String {
        match (d.is_empty(), r.note.is_empty()) {
            (_, true) => d,
            (true, false) => r.note.clone(),
            (false, false) => format!("{d}; {}", r.note),
        }
    };
    let failed_text = match &r.outcome {
        Outcome::Failed(m) => m.clone(),
        _ => String::new(),
    };
    let (service, detail) = match (&r.outcome, r.kind, r.met) {
        (Outcome::Skipped(why), ..) => ("skipped", format!("skipped ({why})")),
        (_, Kind::Info, _) => ("info", failed_text),
        (_, Kind::Connect, Some(true)) => ("ok", String::new()),
        (_, Kind::Connect, _) => (
            "failed",
            with_reason(&failed_text, "cannot check this token"),
        ),
        (
            _,
            Kind::MustRefuse {
                otherwise,
                critical,
            }
            | Kind::Behaviour {
                otherwise,
                critical,
            },
            met,
        ) => match met {
            Some(true) => ("native", String::new()),
            _ if critical => (
                "refused",
                with_reason(&failed_text, &format!("every key spec: {otherwise}")),
            ),
            _ => ("fallback", with_reason(&failed_text, otherwise)),
        },
        (_, Kind::Need(_), Some(true)) => ("native", String::new()),
        (_, Kind::Need(n), _) => {
            let (s, d) = consequence(n, o);
            (s, with_reason(&failed_text, &d))
        }
    };
    (service.to_string(), with_note(detail))
}

fn with_reason(reason: &str, rest: &str) -> String {
    if reason.is_empty() {
        rest.to_string()
    } else {
        format!("{reason}: {rest}")
    }
}

impl HsmReport {
    pub(super) fn new(t: &Target, token: Option<TokenFacts>, ran: Vec<Ran>) -> HsmReport {
        let offered = offered_by(&ran);
        let connected = !ran
            .iter()
            .any(|r| r.kind == Kind::Connect && r.met != Some(true))
            && ran.iter().any(|r| r.id == "login");
        let cancelled = ran
            .iter()
            .any(|r| matches!(&r.outcome, Outcome::Skipped(w) if w.starts_with("cancelled")));
        let mut reasons = Vec::new();
        let mut refused = Vec::new();
        let mut capabilities = BTreeMap::new();
        let mut imports = BTreeMap::new();
        let mut not_checked = Vec::new();
        if connected {
            let mut by_need: Vec<(Need, Vec<String>)> = Vec::new();
            for (name, kind) in needs::kinds() {
                let s = needs::support(offered, kind);
                capabilities.insert(name.clone(), s.to_string());
                if let Support::Missing(n) = s {
                    if needs::optional(kind) {
                        refused.push(format!("{name} ({} missing)", n.mechanism()));
                    } else if let Some((_, v)) = by_need.iter_mut().find(|(m, _)| *m == n) {
                        v.push(name);
                    } else {
                        by_need.push((n, vec![name]));
                    }
                }
            }
            for (n, specs) in by_need {
                reasons.push(format!(
                    "{} missing: refuses {}",
                    n.mechanism(),
                    specs.join(", ")
                ));
            }
            for (name, w) in needs::import_wrappings() {
                imports.insert(
                    name.to_string(),
                    needs::import_support(offered, w).to_string(),
                );
            }
            for r in &ran {
                if let (
                    Kind::MustRefuse {
                        critical: true,
                        otherwise,
                    }
                    | Kind::Behaviour {
                        critical: true,
                        otherwise,
                    },
                    Some(false),
                ) = (r.kind, r.met)
                {
                    reasons.push(format!("{}: {otherwise}", r.check));
                }
            }
            for n in Need::every() {
                let rows: Vec<&Ran> = ran.iter().filter(|r| r.kind == Kind::Need(n)).collect();
                if !rows.is_empty() && rows.iter().all(|r| r.met.is_none()) {
                    not_checked.push(n.mechanism());
                }
            }
            if cancelled {
                reasons.push("the check was cancelled".into());
            }
        } else {
            reasons.push("could not connect to the token (module, token or login)".into());
        }
        let rows = ran
            .iter()
            .map(|r| {
                let (result, rv, function) = result_of(r);
                let (service, detail) = service_of(r, offered);
                Row {
                    id: r.id.clone(),
                    check: r.check.clone(),
                    result,
                    rv,
                    function,
                    ok: r.met,
                    ms: (r.ms * 100.0).round() / 100.0,
                    service,
                    detail,
                }
            })
            .collect();
        HsmReport {
            name: t.name.clone(),
            module: t.module.display().to_string(),
            token,
            member: connected && reasons.is_empty(),
            connected,
            cancelled,
            reasons,
            refused,
            capabilities,
            imports,
            not_checked,
            rows,
        }
    }

    /// 0 member, 1 not a member, 2 could not connect, 130 cancelled.
    pub fn exit_status(&self) -> i32 {
        if self.cancelled {
            130
        } else if !self.connected {
            2
        } else if !self.member {
            1
        } else {
            0
        }
    }
}

/// The report of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The process exit status (see [`Report::exit_status`]).
    pub exit_status: i32,
    /// One report per token, in the order checked.
    pub hsms: Vec<HsmReport>,
    /// Ids of the rows whose result or service column differs between the tokens.
    pub differences: Vec<String>,
}

impl Report {
    pub(super) fn new(hsms: Vec<HsmReport>) -> Report {
        let exit_status = hsms
            .iter()
            .map(HsmReport::exit_status)
            .max_by_key(|s| match s {
                130 => 4,
                2 => 3,
                1 => 2,
                _ => 1,
            })
            .unwrap_or(2);
        let mut differences = Vec::new();
        if hsms.len() > 1 {
            for id in row_ids(&hsms) {
                let cells: Vec<Option<(&str, &str)>> = hsms
                    .iter()
                    .map(|h| {
                        h.rows
                            .iter()
                            .find(|r| r.id == id)
                            .map(|r| (r.result.as_str(), r.service.as_str()))
                    })
                    .collect();
                if cells.windows(2).any(|w| w.first() != w.last()) {
                    differences.push(id);
                }
            }
        }
        Report {
            exit_status,
            hsms,
            differences,
        }
    }

    /// The status the process exits with: 0 every token can be a cluster member, 1 one
    /// cannot (its `reasons` say why), 2 one could not be checked (module, token, PIN), 130
    /// the run was cancelled.
    pub fn exit_status(&self) -> i32 {
        self.exit_status
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The matrix for people: one row per check, per token its result and what the service
    /// does; rows that differ between tokens are marked `≠`.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for h in &self.hsms {
            out.push_str(&format!("{}: {}", h.name, h.module));
            if let Some(t) = &h.token {
                out.push_str(&format!(
                    ", token '{}' in slot {} ({} {}, firmware {}, serial {})",
                    t.label, t.slot, t.manufacturer, t.model, t.firmware, t.serial
                ));
            }
            out.push('\n');
        }
        out.push('\n');
        let many = self.hsms.len() > 1;
        let mut header = vec!["check".to_string()];
        for h in &self.hsms {
            let p = if many {
                format!("{}: ", h.name)
            } else {
                String::new()
            };
            header.push(format!("{p}result"));
            header.push(format!("{p}ms"));
            header.push(format!("{p}service"));
        }
        if many {
            header.push("≠".into());
        }
        let mut lines = vec![header];
        for id in row_ids(&self.hsms) {
            let mut check = String::new();
            let mut cells = Vec::new();
            for h in &self.hsms {
                match h.rows.iter().find(|r| r.id == id) {
                    Some(r) => {
                        check = r.check.clone();
                        cells.push(match &r.rv {
                            Some(rv) => format!("{} ({rv})", r.result),
                            None => r.result.clone(),
                        });
                        cells.push(format!("{:.1}", r.ms));
                        cells.push(if r.detail.is_empty() {
                            r.service.clone()
                        } else {
                            format!("{}: {}", r.service, r.detail)
                        });
                    }
                    None => cells.extend(["–".to_string(), String::new(), String::new()]),
                }
            }
            let mut line = vec![check];
            line.extend(cells);
            if many {
                line.push(if self.differences.contains(&id) {
                    "≠".into()
                } else {
                    String::new()
                });
            }
            lines.push(line);
        }
        out.push_str(&render(&lines));
        out.push('\n');
        for h in &self.hsms {
            let caps: Vec<String> = h
                .capabilities
                .iter()
                .filter(|(_, v)| v.as_str() != "native")
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if h.connected {
                out.push_str(&format!(
                    "{}: key specs: {} native{}\n",
                    h.name,
                    h.capabilities.len() - caps.len(),
                    if caps.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", caps.join("; "))
                    }
                ));
            }
            if !h.not_checked.is_empty() {
                out.push_str(&format!(
                    "{}: not checked: {}\n",
                    h.name,
                    h.not_checked.join(", ")
                ));
            }
            if h.member {
                out.push_str(&format!("{}: can serve as a cluster member\n", h.name));
            } else {
                out.push_str(&format!(
                    "{}: CANNOT serve as a cluster member: {}\n",
                    h.name,
                    h.reasons.join("; ")
                ));
            }
        }
        out
    }
}

/// Every row id of the tokens, in first-seen order.
fn row_ids(hsms: &[HsmReport]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for h in hsms {
        for r in &h.rows {
            if !ids.contains(&r.id) {
                ids.push(r.id.clone());
            }
        }
    }
    ids
}

/// A plain-text table with columns padded to their widest cell.
fn render(lines: &[Vec<String>]) -> String {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .zip(&width)
            .map(|(s, w)| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count()))))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}
