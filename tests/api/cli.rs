//! The `assent` binary's client commands against a running server: the README walkthrough.

use std::process::{Command, Output};

use crate::helpers::TestApp;

async fn assent(app: &TestApp, args: &[&str]) -> Output {
    let server = format!("http://{}", app.address);
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_assent"))
            .args(&args)
            .env("ASSENT_SERVER", server)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn stdout(app: &TestApp, args: &[&str]) -> String {
    let output = assent(app, args).await;
    assert!(
        output.status.success(),
        "assent {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn decision(app: &TestApp, args: &[&str]) -> (String, String) {
    let mut full = vec!["check", "--json"];
    full.extend_from_slice(args);
    let json: serde_json::Value = serde_json::from_str(&stdout(app, &full).await).unwrap();
    (
        json["decision"].as_str().unwrap().to_owned(),
        json["rule"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_readme_walkthrough_works() {
    let app = TestApp::spawn().await;
    let training = ["--subject", "alice", "--purpose", "model-training"];
    let on_c1 = [
        "--subject",
        "alice",
        "--purpose",
        "model-training",
        "--conversation",
        "c-1",
    ];

    assert!(
        stdout(&app, &["subject", "upsert", "alice", "--plan", "free"])
            .await
            .starts_with("ok, revision ")
    );
    assert_eq!(
        decision(&app, &training).await,
        ("DECISION_ALLOW".into(), "T6".into())
    );
    stdout(
        &app,
        &[
            "subject",
            "choice",
            "alice",
            "--purpose",
            "model-training",
            "--choice",
            "refused",
        ],
    )
    .await;
    assert_eq!(
        decision(&app, &training).await,
        ("DECISION_DENY".into(), "T5".into())
    );
    stdout(
        &app,
        &[
            "subject",
            "feedback",
            "alice",
            "--conversation",
            "c-1",
            "--rating",
            "up",
        ],
    )
    .await;
    assert_eq!(
        decision(&app, &on_c1).await,
        ("DECISION_ALLOW".into(), "T3".into())
    );
    assert_eq!(
        decision(&app, &training).await,
        ("DECISION_DENY".into(), "T5".into())
    );

    let text = stdout(
        &app,
        &[
            "check",
            "--subject",
            "alice",
            "--purpose",
            "model-training",
            "--conversation",
            "c-1",
        ],
    )
    .await;
    assert!(text.starts_with("ALLOW"), "{text}");
    assert!(text.contains("feedback grant"), "{text}");

    let subject = stdout(&app, &["subject", "get", "alice"]).await;
    assert!(
        subject.contains("model-training               refused"),
        "{subject}"
    );
    let events = stdout(&app, &["audit", "list"]).await;
    assert_eq!(events.lines().count(), 3, "{events}");
    assert!(stdout(&app, &["audit", "verify"]).await.starts_with("ok"));
}

#[tokio::test]
async fn errors_are_reported_with_their_status() {
    let app = TestApp::spawn().await;
    let output = assent(
        &app,
        &[
            "subject",
            "choice",
            "nobody",
            "--purpose",
            "memory",
            "--choice",
            "refused",
        ],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("NOT_FOUND: subject_id"), "{stderr}");
    let output = assent(&app, &["check", "--subject", "u", "--purpose", "training"]).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("model-training")
    );
}

/// `--server a,b`: a command reaches a replica that accepts even when another listed one does
/// not (here: nothing listens there), whichever it tries first.
#[tokio::test(flavor = "multi_thread")]
async fn check_spreads_over_the_replicas_listed() {
    let app = TestApp::spawn().await;
    app.upsert("alice", assent::proto::Plan::Free).await;
    let vacant = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", vacant.local_addr().unwrap());
    drop(vacant);
    let servers = format!("{nobody},http://{}", app.address);
    for _ in 0..10 {
        let output = tokio::task::block_in_place(|| {
            Command::new(env!("CARGO_BIN_EXE_assent"))
                .args(["check", "--subject", "alice", "--purpose", "model-training"])
                .env("ASSENT_SERVER", &servers)
                .output()
                .unwrap()
        });
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("ALLOW"),
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
