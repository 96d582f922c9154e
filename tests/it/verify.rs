//! Through the real binary: an `adapters:` section in `orchestrator.yaml` drives `run-once`,
//! `artifacts verify` passes on intact artifacts and reports tampered and missing ones with
//! exit 1, and a bad adapter setting is refused naming its key and line.

use serde_json::Value;

use crate::backend_tests;
use crate::support::{TestDb, artifacts_under, bin, json, run, stderr, stdout};

backend_tests!(artifacts_verify_reports_tampering);

const SECRET: &str = "cli-secret-never-printed";

const CONFIG: &str = "\
adapters:
  webhook:
    targets:
      hook:
        url: http://127.0.0.1:9/never-contacted
        secret_env: HOOK_SECRET
  social:
    platforms:
      mastodon: hook
";

fn orch(db: &TestDb, args: &[&str]) -> std::process::Output {
    run(bin(db.dir.path()).env("HOOK_SECRET", SECRET).arg("--database-url").arg(&db.url).args(args))
}

async fn artifacts_verify_reports_tampering(db: &TestDb) {
    let dir = db.dir.path();
    std::fs::write(dir.join("orchestrator.yaml"), CONFIG).unwrap();
    for (t, p) in [
        ("WEBHOOK", r#"{"target":"hook","body":{"x":1}}"#),
        ("POST_SOCIAL", r#"{"platform":"mastodon","content":"hi","audience":"all"}"#),
    ] {
        let o = orch(db, &["enqueue", t, "--payload", p]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let o = orch(db, &["run-once", "--json"]);
    assert_eq!(json(&o)["succeeded"], 2, "{}", stderr(&o));
    let o = orch(db, &["artifacts", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = json(&o);
    assert_eq!((r["checked"].as_u64(), r["ok"].as_u64()), (Some(2), Some(2)), "{r}");

    let files = artifacts_under(&dir.join("artifacts"));
    let webhook = files.iter().find(|p| p.to_string_lossy().contains("/webhook/")).unwrap();
    let social = files.iter().find(|p| p.to_string_lossy().contains("/proof_social/")).unwrap();
    let text = std::fs::read_to_string(social).unwrap();
    assert!(text.contains("webhook target 'hook'") && text.contains("never-contacted"), "{text}");
    for f in &files {
        assert!(!std::fs::read_to_string(f).unwrap().contains(SECRET), "{f:?} holds the secret");
    }
    std::fs::write(webhook, b"tampered").unwrap();
    std::fs::remove_file(social).unwrap();

    let o = orch(db, &["artifacts", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(1), "tampering is an error: {}", stdout(&o));
    let r = json(&o);
    assert_eq!(r["ok"], 0);
    let mismatched = r["mismatched"].as_array().unwrap();
    assert_eq!(mismatched.len(), 1);
    assert!(mismatched[0]["path"].as_str().unwrap().contains("/webhook/"));
    assert_ne!(mismatched[0]["actual_sha256"], mismatched[0]["expected_sha256"]);
    let missing = r["missing"].as_array().unwrap();
    assert_eq!((missing.len(), &missing[0]["problem"]), (1, &Value::from("missing")));
    let o = orch(db, &["artifacts", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("mismatch: artifacts/webhook/") && out.contains("1 missing, 1 changed"), "{out}");

    std::fs::write(dir.join("orchestrator.yaml"), CONFIG.replace("mastodon: hook", "mastodon: hoook")).unwrap();
    let o = orch(db, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("orchestrator.yaml:9:") && e.contains("adapters.social.platforms.mastodon"), "{e}");
}
