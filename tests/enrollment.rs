//! The enrollment ceremony through the real binary, as an operator runs it: `setup-local`
//! keeps no SO PIN in the state folder; a new token added to the config is never used by
//! the service on its own; `hsm-kms hsm enroll` refuses without the operator's confirmation
//! of the transport key fingerprint, and with it moves the cluster wrapping key and copies
//! every key to the new token; both are in the service's audit trail after its next start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::real_binary::{self, Guard};
use common::Client;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use hsm_kms::hsm::ceremony::{self, CwkState, SoPin};
use hsm_kms::hsm::softhsm::{self, LocalHsm};
use hsm_kms::kms::credentials::SEALING_KEY_ID;
use hsm_kms::kms::digest::DIGEST_KEY_ID;
use hsm_kms::kms::service::IMPORT_TOKEN_KEY_ID;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The `CKA_ID`s of the KMS keys in a token (secret and private keys but the service's own,
/// except the credential-sealing and audit digest keys, which every HSM needs),
/// read with the user PIN in a module instance of this test's own.
fn kms_key_ids(hsm: &LocalHsm) -> BTreeSet<Vec<u8>> {
    let token = common::UserToken::open(hsm);
    let s = token.session();
    let mut ids = BTreeSet::new();
    for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
        for h in s.find_objects(&[Attribute::Class(class)]).unwrap() {
            if let Some(Attribute::Id(id)) =
                s.get_attributes(h, &[AttributeType::Id]).unwrap().pop()
            {
                if !id.starts_with(b"hsm-kms/")
                    || id == SEALING_KEY_ID.as_bytes()
                    || id == DIGEST_KEY_ID.as_bytes()
                    || id == IMPORT_TOKEN_KEY_ID.as_bytes()
                {
                    ids.insert(id);
                }
            }
        }
    }
    ids
}

fn enroll(config: &Path, so_pin: &Path, yes: bool, answer: &str) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
    cmd.args(["hsm", "enroll", "hsm-c", "--config"])
        .arg(config)
        .arg("--so-pin-file")
        .arg(so_pin);
    if yes {
        cmd.arg("--yes");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_enrolls_a_new_token_and_the_service_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var");
    let so_pin = dir.path().join("so.pin");
    let st = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .args(["setup-local", "--state-dir"])
        .arg(&state)
        .arg("--so-pin-file")
        .arg(&so_pin)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // The SO PIN is where the operator said, never in the state folder.
    let so = SoPin::read_file(&so_pin).unwrap();
    for f in files(&state) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes
                .windows(so.expose().len())
                .any(|w| w == so.expose().as_bytes()),
            "{} holds the SO PIN",
            f.display()
        );
    }

    // Keys made while the cluster has two HSMs.
    let (child, url) = real_binary::start(&state);
    let mut server = Guard(child);
    let client = Client::new(url, real_binary::credential(&state));
    for spec in [
        json!({}),
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
        json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
    ] {
        client.ok("CreateKey", spec).await;
    }
    real_binary::stop(&mut server.0);

    // A third token appears in the config: the service starts, but never uses or enrolls it.
    let c = softhsm::provision(&state.join("hsm"), "hsm-c", &so).unwrap();
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(state.join("config.toml"))
        .unwrap();
    write!(
        config,
        "\n[[hsm]]\nname = \"hsm-c\"\nmodule = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n[hsm.env]\nSOFTHSM2_CONF = \"{}\"\n",
        c.module.display(),
        c.label,
        c.pin_file.display(),
        c.conf.display()
    )
    .unwrap();
    drop(config);
    let (child, url) = real_binary::start(&state);
    let mut server = Guard(child);
    let client = Client::new(url, real_binary::credential(&state));
    client.ok("CreateKey", json!({})).await;
    real_binary::stop(&mut server.0);
    assert_eq!(
        ceremony::cwk_state(&c.node_config().unwrap()).unwrap(),
        CwkState::Absent
    );
    assert!(
        kms_key_ids(&c).is_empty(),
        "the service copied keys to a token no one enrolled"
    );

    // The operator does not confirm the fingerprint: nothing happens.
    let config = state.join("config.toml");
    let (ok, out) = enroll(&config, &so_pin, false, "no\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("transport key generated inside hsm-c: SHA256:"),
        "{out}"
    );
    assert!(out.contains("not confirmed"), "{out}");
    assert_eq!(
        ceremony::cwk_state(&c.node_config().unwrap()).unwrap(),
        CwkState::Absent
    );

    // A wrong SO PIN is refused by the token.
    let wrong = dir.path().join("wrong.pin");
    std::fs::write(&wrong, "00000000").unwrap();
    let (ok, out) = enroll(&config, &wrong, true, "");
    assert!(!ok && out.contains("refused the SO PIN"), "{out}");

    // Confirmed: the key travels, then every key is copied with progress output.
    let (ok, out) = enroll(&config, &so_pin, false, "yes\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("received the cluster wrapping key from hsm-a"),
        "{out}"
    );
    // Four KMS keys and the service's own three: credential sealing, audit digest, import
    // token keys.
    assert!(out.contains("copying keys: 7/7"), "{out}");
    assert_eq!(
        ceremony::cwk_state(&c.node_config().unwrap()).unwrap(),
        CwkState::Trusted
    );
    let a = LocalHsm {
        name: "hsm-a".into(),
        ..c.clone()
    };
    let a = LocalHsm {
        module: state.join("hsm/hsm-a/libsofthsm2.so"),
        conf: state.join("hsm/hsm-a/softhsm2.conf"),
        label: "hsm-kms-hsm-a".into(),
        pin_file: state.join("hsm/hsm-a/user.pin"),
        ..a
    };
    let on_c = kms_key_ids(&c);
    assert_eq!(
        on_c.len(),
        7,
        "every KMS key, the sealing, digest and import token keys reached hsm-c"
    );
    assert!(on_c.contains(SEALING_KEY_ID.as_bytes()));
    assert!(on_c.contains(DIGEST_KEY_ID.as_bytes()));
    assert!(on_c.contains(IMPORT_TOKEN_KEY_ID.as_bytes()));
    assert!(on_c.is_subset(&kms_key_ids(&a)));
    // Running it again changes nothing.
    let (ok, out) = enroll(&config, &so_pin, true, "");
    assert!(
        ok && out.contains("already holds the cluster wrapping key"),
        "{out}"
    );

    // The enrollment and its copies, made while the service was stopped, waited in the
    // store: the service's next start puts them in its audit trail, naming the command.
    let (child, _url) = real_binary::start(&state);
    let mut server = Guard(child);
    let audit = state.join("audit");
    let mut by_enroll = Vec::new();
    let moved = common::eventually(10, || {
        by_enroll = common::trail(&audit)
            .1
            .into_iter()
            .filter(|e| e["userIdentity"]["invokedBy"] == "hsm-kms hsm enroll")
            .collect();
        by_enroll.len() >= 2
    })
    .await;
    real_binary::stop(&mut server.0);
    assert!(moved, "the enrollment is not in the trail: {by_enroll:?}");
    let names: Vec<&str> = by_enroll
        .iter()
        .map(|e| e["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["EnrollHsm", "SynchronizeHsms"],
        "once each, in order"
    );
    let enrolled = &by_enroll[0];
    assert_eq!(enrolled["eventType"], "AwsServiceEvent", "{enrolled}");
    assert_eq!(
        enrolled["serviceEventDetails"],
        json!({"hsm": "hsm-c", "clusterWrappingKey": "received", "from": "hsm-a"}),
        "{enrolled}"
    );
    assert_eq!(
        enrolled["additionalEventData"]["hsms"],
        json!(["hsm-a", "hsm-c"])
    );
    let copied = by_enroll[1]["serviceEventDetails"]["copiesMade"]
        .as_u64()
        .unwrap();
    // Every one of the 7 keys copied (a key pair is two objects).
    assert!(copied >= 7, "{}", by_enroll[1]);
    assert_eq!(hsm_kms::audit::verify(&audit, None).unwrap().finding, None);
}
