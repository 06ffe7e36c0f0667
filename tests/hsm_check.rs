//! `hsm-kms hsm check` on fresh SoftHSM2 tokens (the binary, as an operator runs it), and
//! the capability check at connect: a key spec fewer than two HSMs can serve is refused
//! over HTTP naming the missing mechanism, and served where two of three HSMs can.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hsm_kms::hsm::softhsm::{self, LocalHsm};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Run `hsm-kms hsm check --json` with these arguments: (exit status, report, stderr).
fn check(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args([
            "hsm",
            "check",
            "--json",
            "--threads",
            "4",
            "--find-objects",
            "50",
        ])
        .args(args)
        .env("KMS_LOG", "error")
        .output()
        .expect("run hsm-kms");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// The arguments that name `h`'s token.
fn token_args(h: &LocalHsm) -> Vec<String> {
    vec![
        "--module".into(),
        h.module.display().to_string(),
        "--env".into(),
        format!("SOFTHSM2_CONF={}", h.conf.display()),
        "--token-label".into(),
        h.label.clone(),
        "--pin-file".into(),
        h.pin_file.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn row<'a>(hsm: &'a Value, id: &str) -> &'a Value {
    hsm["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row {id} in {hsm:#}"))
}

/// Every object the user sees on `h`'s token.
fn objects(h: &LocalHsm) -> usize {
    let ctx = softhsm::open_module(h).unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == h.label)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let pin = std::fs::read_to_string(&h.pin_file).unwrap();
    s.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::new(pin.trim().into())),
    )
    .unwrap();
    let n = s.find_objects(&[]).unwrap().len();
    drop(s);
    ctx.finalize().unwrap();
    n
}

/// Turn off `mechanism` in `h`'s token: its `softhsm2.conf` lists every other mechanism
/// the token offers (`slots.mechanisms`; SoftHSM 2.6.1 honours a list of mechanisms to
/// enable, and refuses the others at `C_*Init` and in `C_GetMechanismList`).
fn cripple(h: &LocalHsm, mechanism: &str) {
    let ctx = softhsm::open_module(h).unwrap();
    let slot = ctx.get_slots_with_initialized_token().unwrap()[0];
    let keep: Vec<String> = ctx
        .get_mechanism_list(slot)
        .unwrap()
        .into_iter()
        .map(|m| m.to_string())
        .filter(|m| m != mechanism)
        .collect();
    ctx.finalize().unwrap();
    assert!(keep.len() > 20, "{keep:?}");
    let conf = std::fs::read_to_string(&h.conf).unwrap();
    let conf = conf.replace(
        "slots.mechanisms = ALL",
        &format!("slots.mechanisms = {}", keep.join(",")),
    );
    std::fs::write(&h.conf, conf).unwrap();
}

fn write_secret(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn softhsm_2_6_1_facts_and_nothing_left_behind() {
    let t = unenrolled_tokens(&["a"]);
    let h = &t.hsms[0];
    let before = objects(h);
    let so = write_secret(t.dir.path(), "so.pin", t.so.expose());
    let mut args = token_args(h);
    args.extend(["--so-pin-file".into(), so]);
    let (status, report, stderr) = check(&strs(&args));
    let hsm = &report["hsms"][0];
    assert_eq!(status, 0, "{stderr}\n{report:#}");
    assert_eq!(report["exit_status"], 0);
    assert_eq!(hsm["member"], true, "{:#}", hsm["reasons"]);
    // RSA-OAEP with SHA-256: refused by the token, RSA Decrypt falls back to X.509 raw and
    // the SHA-256 import wrappings are refused.
    let oaep = row(hsm, "rsa.oaep_sha256");
    assert_eq!(oaep["result"], "CKR_ARGUMENTS_BAD", "{oaep}");
    assert_eq!(oaep["rv"], "0x7");
    assert_eq!(oaep["service"], "fallback", "{oaep}");
    let detail = oaep["detail"].as_str().unwrap();
    assert!(detail.contains("CKM_RSA_X_509"), "{detail}");
    assert!(detail.contains("RSAES_OAEP_SHA_256"), "{detail}");
    assert_eq!(
        hsm["capabilities"]["RSA_2048/ENCRYPT_DECRYPT"],
        "fallback: CKM_RSA_X_509 in the token, OAEP decoded on the host"
    );
    assert_eq!(row(hsm, "rsa.oaep_sha1")["result"], "OK");
    // Ed25519 private keys are not wrappable: the spec is refused (an optional one).
    let ed = row(hsm, "wrap.ed25519");
    assert_eq!(ed["result"], "CKR_KEY_NOT_WRAPPABLE", "{ed}");
    assert_eq!(ed["service"], "refused");
    assert_eq!(ed["detail"], "ECC_NIST_EDWARDS25519/SIGN_VERIFY");
    for family in ["aes", "hmac", "rsa", "ec"] {
        assert_eq!(row(hsm, &format!("wrap.{family}"))["result"], "OK");
    }
    // A GCM tag failure is CKR_GENERAL_ERROR, which the service reads as a bad ciphertext.
    let tag = row(hsm, "gcm.tag_failure");
    assert_eq!(tag["result"], "CKR_GENERAL_ERROR", "{tag}");
    assert_eq!(tag["function"], "C_Decrypt");
    assert_eq!(tag["ok"], true);
    // Custody: wrap-with-trusted and the unwrap template are enforced.
    let wwt = row(hsm, "custody.wrap_with_trusted");
    assert_eq!(wwt["result"], "CKR_KEY_NOT_WRAPPABLE", "{wwt}");
    assert_eq!(wwt["ok"], true);
    assert_eq!(row(hsm, "custody.unwrap_template")["ok"], true);
    // SoftHSM 2.6.1 refuses nested unwrap templates: RSA_AES imports need the opt-in.
    let nested = row(hsm, "custody.nested_unwrap_template").to_string();
    assert!(
        nested.contains("allow_unconfined_rsa_aes_import")
            && nested.contains("CKR_ATTRIBUTE_VALUE_INVALID"),
        "{nested}"
    );
    assert_eq!(row(hsm, "so.trusted_wrapping_key")["result"], "OK");
    assert_eq!(row(hsm, "sessions.limit")["ok"], true);
    assert_eq!(row(hsm, "sessions.concurrent")["ok"], true);
    // Every object the check made is gone.
    assert_eq!(objects(h), before);
}

#[test]
fn against_a_token_without_ecdsa_marks_the_difference_and_fails() {
    let t = unenrolled_tokens(&["a", "b"]);
    let (a, b) = (&t.hsms[0], &t.hsms[1]);
    cripple(b, "CKM_ECDSA");
    let mut args = token_args(a);
    args.extend([
        "--against".into(),
        b.module.display().to_string(),
        "--against-token-label".into(),
        b.label.clone(),
        "--against-pin-file".into(),
        b.pin_file.display().to_string(),
        "--against-env".into(),
        format!("SOFTHSM2_CONF={}", b.conf.display()),
    ]);
    let (status, report, stderr) = check(&strs(&args));
    assert_eq!(status, 1, "{stderr}\n{report:#}");
    let (ra, rb) = (&report["hsms"][0], &report["hsms"][1]);
    assert_eq!(ra["member"], true, "{:#}", ra["reasons"]);
    assert_eq!(rb["member"], false);
    let ecdsa = row(rb, "ecdsa.p-256");
    assert_eq!(ecdsa["result"], "CKR_MECHANISM_INVALID", "{ecdsa}");
    assert_eq!(ecdsa["service"], "refused");
    assert!(ecdsa["detail"]
        .as_str()
        .unwrap()
        .contains("ECC_NIST_P256/SIGN_VERIFY"));
    assert!(!ecdsa["detail"].as_str().unwrap().contains("KEY_AGREEMENT"));
    let reasons = rb["reasons"].to_string();
    assert!(reasons.contains("CKM_ECDSA missing"), "{reasons}");
    let diff: Vec<&str> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        diff.contains(&"ecdsa.p-256") && diff.contains(&"ecdsa.secp256k1"),
        "{diff:?}"
    );
    assert!(!diff.contains(&"gcm"), "{diff:?}");
    // The same as a table for people.
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["hsm", "check", "--threads", "2", "--find-objects", "20"])
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CKR_MECHANISM_INVALID (0x70)"), "{text}");
    assert!(text.contains("≠"), "{text}");
    assert!(text.contains("CANNOT serve as a cluster member"), "{text}");
}

#[test]
fn wrong_pin_missing_token_slot_or_module_are_clear_rows_with_status_2() {
    let t = unenrolled_tokens(&["a"]);
    let h = &t.hsms[0];
    let wrong = write_secret(t.dir.path(), "wrong.pin", "000000");
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            {
                let mut a = token_args(h);
                a[7] = wrong.clone();
                a
            },
            "login",
            "CKR_PIN_INCORRECT",
        ),
        (
            {
                let mut a = token_args(h);
                a[5] = "no-such-token".into();
                a
            },
            "token",
            "no initialized token labelled 'no-such-token'",
        ),
        (
            {
                let mut a = token_args(h);
                a.drain(4..6);
                a.extend(["--slot".into(), "987654".into()]);
                a
            },
            "token",
            "no slot 987654 with a token",
        ),
        (
            {
                let mut a = token_args(h);
                a[1] = "/nonexistent/libpkcs11.so".into();
                a
            },
            "module",
            "does not exist",
        ),
    ];
    for (args, id, expect) in cases {
        let (status, report, stderr) = check(&strs(&args));
        assert_eq!(status, 2, "{args:?}: {stderr}\n{report:#}");
        let hsm = &report["hsms"][0];
        assert_eq!(hsm["connected"], false);
        let r = row(hsm, id);
        assert_eq!(r["service"], "failed", "{r}");
        assert!(
            r["result"] == expect || r["detail"].as_str().unwrap().contains(expect),
            "{args:?}: {r}"
        );
    }
}

async fn create(c: &Client, spec: &str, usage: &str) -> Reply {
    c.call("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_fewer_than_two_hsms_can_serve_is_refused_naming_the_mechanism() {
    let t = tokens(&["a", "b"]);
    cripple(&t.hsms[1], "CKM_ECDSA");
    let (running, c) = start_on(&t, std::sync::Arc::new(hsm_kms::clock::SystemClock)).await;
    let r = create(&c, "ECC_NIST_P256", "SIGN_VERIFY").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_type(), "UnsupportedOperationException");
    assert_eq!(
        r.body["message"],
        "KeySpec ECC_NIST_P256 is not available: CKM_ECDSA is missing in HSM b."
    );
    // What does not need CKM_ECDSA still works.
    let r = create(&c, "ECC_NIST_P256", "KEY_AGREEMENT").await;
    assert_eq!(r.status, 200, "{}", r.body);
    c.ok("CreateKey", json!({})).await;
    // The health detail shows it per HSM.
    let health = running.cluster.health();
    let b = health.iter().find(|h| h.name == "b").unwrap();
    let caps = b.capabilities.as_ref().unwrap();
    assert_eq!(caps["ECC_NIST_P256/SIGN_VERIFY"], "missing: CKM_ECDSA");
    assert_eq!(caps["ECC_NIST_P256/KEY_AGREEMENT"], "native");
    let a = health.iter().find(|h| h.name == "a").unwrap();
    assert_eq!(
        a.capabilities.as_ref().unwrap()["ECC_NIST_P256/SIGN_VERIFY"],
        "native"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_hsms_serve_a_spec_the_third_lacks() {
    let t = tokens(&["a", "b", "c"]);
    cripple(&t.hsms[2], "CKM_ECDSA");
    let (running, c) = start_on(&t, std::sync::Arc::new(hsm_kms::clock::SystemClock)).await;
    // Several keys, so that a generation would land on c if c were not left out.
    for _ in 0..3 {
        let r = create(&c, "ECC_NIST_P256", "SIGN_VERIFY").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let key = r.body["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let obj = format!("kms/{key}/1").into_bytes();
        assert!(running.cluster.hsm_holds_private("a", &obj));
        assert!(running.cluster.hsm_holds_private("b", &obj));
        assert!(!running.cluster.hsm_holds_private("c", &obj));
        for _ in 0..4 {
            let s = c
                .ok(
                    "Sign",
                    json!({"KeyId": key, "Message": "aGVsbG8=", "SigningAlgorithm": "ECDSA_SHA_256"}),
                )
                .await;
            assert!(s["Signature"].is_string());
        }
    }
    running.stop().await;
}
