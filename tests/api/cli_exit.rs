//! `assent` for scripts: each exit status made by the situation it names, the JSON error on
//! standard error, `--json` on every command, and shell completions.

use std::process::{Command, Output};

use serde_json::Value;

use crate::helpers::{TestApp, token};

/// Runs `assent` with `args` against `server`, with `ASSENT_TOKEN` set to `bearer` if given.
async fn run(server: &str, bearer: Option<&str>, args: &[&str]) -> Output {
    let server = server.to_owned();
    let bearer = bearer.map(str::to_owned);
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_assent"));
        command
            .args(&args)
            .env("ASSENT_SERVER", server)
            .env_remove("ASSENT_TOKEN");
        if let Some(bearer) = bearer {
            command.env("ASSENT_TOKEN", bearer);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

async fn run_on(app: &TestApp, args: &[&str]) -> Output {
    run(&format!("http://{}", app.address), None, args).await
}

/// The exit status, and the JSON error a `--json` command printed on standard error.
fn json_error(output: &Output) -> (i32, Value) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error: Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|problem| panic!("not one JSON object ({problem}): {stderr}"));
    (output.status.code().unwrap(), error["error"].clone())
}

/// An address on loopback where nothing listens.
fn closed_port() -> String {
    let vacant = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", vacant.local_addr().unwrap());
    drop(vacant);
    address
}

#[tokio::test]
async fn a_usage_error_exits_1_and_help_and_version_exit_0() {
    let nowhere = closed_port();
    for args in [
        &["check", "--subject", "ada", "--purpose", "training"][..],
        &["check", "--no-such-flag"],
        &["subject"],
        &[],
    ] {
        let output = run(&nowhere, None, args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
    let output = run(&nowhere, None, &["check", "--purpose", "memory", "--json"]).await;
    let (code, error) = json_error(&output);
    assert_eq!(code, 1);
    assert_eq!(error["code"], 1);
    assert_eq!(error["kind"], "usage");
    assert!(
        error["message"].as_str().unwrap().contains("--subject"),
        "{error}"
    );
    assert!(error.get("grpc_status").is_none(), "{error}");

    let help = run(&nowhere, None, &["--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("Exit status:"), "{help}");
    assert!(help.contains("2  unreachable or unauthenticated"), "{help}");
    let version = run(&nowhere, None, &["--version"]).await;
    assert_eq!(version.status.code(), Some(0));
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .starts_with("assent ")
    );
}

#[tokio::test]
async fn an_unreachable_server_exits_2() {
    let nowhere = closed_port();
    let check = ["check", "--subject", "ada", "--purpose", "memory"];
    let output = run(&nowhere, None, &check).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: cannot reach the assent server"),
        "{stderr}"
    );
    let mut json = check.to_vec();
    json.push("--json");
    let output = run(&nowhere, None, &json).await;
    assert!(output.stdout.is_empty());
    let (code, error) = json_error(&output);
    assert_eq!(code, 2);
    assert_eq!(error["kind"], "unreachable");
    assert!(error.get("grpc_status").is_none(), "{error}");
    // The probe, too.
    let output = run(&nowhere, None, &["health", "--timeout-ms", "2000"]).await;
    assert_eq!(output.status.code(), Some(2));
}

/// A server that verifies bearer tokens: none, a forged one and one without the scope exit 2
/// (UNAUTHENTICATED, PERMISSION_DENIED); the right one is answered.
#[tokio::test]
async fn a_missing_or_bad_token_exits_2() {
    let app = TestApp::spawn_with_tokens().await;
    let server = format!("http://{}", app.address);
    let list = ["audit", "list", "--json"];
    let output = run(&server, None, &list).await;
    let (code, error) = json_error(&output);
    assert_eq!(code, 2);
    assert_eq!(error["kind"], "unauthenticated");
    assert_eq!(error["grpc_status"], "UNAUTHENTICATED");

    let forged = format!("{}x", token("auditor", "audit:read"));
    let output = run(&server, Some(&forged), &list).await;
    let (code, error) = json_error(&output);
    assert_eq!(
        (code, &error["grpc_status"]),
        (2, &Value::from("UNAUTHENTICATED"))
    );

    let unscoped = token("auditor", "decisions:check");
    let output = run(&server, Some(&unscoped), &list).await;
    let (code, error) = json_error(&output);
    assert_eq!(code, 2);
    assert_eq!(error["kind"], "permission_denied");
    assert_eq!(error["grpc_status"], "PERMISSION_DENIED");
    let output = run(&server, Some(&unscoped), &["audit", "list"]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: PERMISSION_DENIED: "), "{stderr}");

    let auditor = token("auditor", "audit:read");
    let output = run(&server, Some(&auditor), &list).await;
    assert_eq!(output.status.code(), Some(0));
    let page: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page["events"], serde_json::json!([]));
}

/// A broken audit chain exits 3; its report is still printed, the failure on standard error.
#[tokio::test]
async fn a_broken_audit_chain_exits_3() {
    let app = TestApp::spawn().await;
    app.upsert("ada", assent::proto::Plan::Free).await;
    app.upsert("bob", assent::proto::Plan::Pro).await;
    assert_eq!(
        run_on(&app, &["audit", "verify"]).await.status.code(),
        Some(0)
    );
    let mut connection = app.direct_connection().await;
    connection.drop_audit_guards().await;
    let altered = connection
        .execute("UPDATE audit_events SET kind = 'choice_forgotten' WHERE sequence = 2")
        .await
        .unwrap();
    assert_eq!(altered, 1);
    connection.close().await;

    let output = run_on(&app, &["audit", "verify"]).await;
    assert_eq!(output.status.code(), Some(3));
    let said = String::from_utf8(output.stdout).unwrap();
    assert!(said.starts_with("BROKEN"), "{said}");
    let output = run_on(&app, &["audit", "verify", "--json"]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["eventsChecked"].is_string(), "{report}");
    assert!(!report["firstBadEventId"].as_str().unwrap().is_empty());
    let (code, error) = json_error(&output);
    assert_eq!(code, 3);
    assert_eq!(error["kind"], "check_failed");
}

/// Scenarios whose expectation the policy does not meet exit 3.
#[tokio::test]
async fn failed_policy_scenarios_exit_3() {
    let directory = tempfile::tempdir().unwrap();
    let fixture = std::fs::read_to_string("tests/fixtures/scenarios.json").unwrap();
    let mut scenarios: Value = serde_json::from_str(&fixture).unwrap();
    let expect = &mut scenarios["scenarios"][0]["checks"][0]["expect"];
    assert_eq!(expect["decision"], "ALLOW");
    expect["decision"] = Value::from("DENY");
    let wrong = directory.path().join("wrong.json");
    std::fs::write(&wrong, scenarios.to_string()).unwrap();
    let nowhere = closed_port();
    let policy = "policies/2026-01-01.toml";
    let args = ["policy", "test", policy, wrong.to_str().unwrap()];
    let output = run(&nowhere, None, &args).await;
    assert_eq!(output.status.code(), Some(3));
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(report.contains("1 failed"), "{report}");

    let mut json = args.to_vec();
    json.push("--json");
    let output = run(&nowhere, None, &json).await;
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|line| line["passed"] == false).count(),
        1
    );
    let (code, error) = json_error(&output);
    assert_eq!((code, error["kind"].as_str()), (3, Some("check_failed")));

    let fine = ["policy", "test", policy, "tests/fixtures/scenarios.json"];
    assert_eq!(run(&nowhere, None, &fine).await.status.code(), Some(0));
}

/// A request the server refuses exits 4, and `--json` reports the status with its details.
#[tokio::test]
async fn a_refused_request_exits_4_with_its_status_in_json() {
    let app = TestApp::spawn().await;
    let output = run_on(
        &app,
        &["audit", "decisions", "--decision-id", "d-1", "--json"],
    )
    .await;
    let (code, error) = json_error(&output);
    assert_eq!(code, 4);
    assert_eq!(error["code"], 4);
    assert_eq!(error["kind"], "refused");
    assert_eq!(error["grpc_status"], "INVALID_ARGUMENT");
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("decision_id: "), "{error}");
    // The status's google.rpc details follow it: a BadRequest naming the field, and the
    // ErrorInfo (the JSON of each kind of detail is tested in cli::exit).
    let violations = &error["field_violations"];
    assert_eq!(violations[0]["field"], "decision_id", "{error}");
    assert!(
        message.ends_with(violations[0]["description"].as_str().unwrap()),
        "{error}"
    );
    assert_eq!(error["error_info"]["reason"], "INVALID_FIELD", "{error}");
    assert_eq!(error["error_info"]["domain"], "assent", "{error}");

    let output = run_on(&app, &["subject", "get", "nobody", "--json"]).await;
    let (code, error) = json_error(&output);
    assert_eq!(
        (code, &error["grpc_status"]),
        (4, &Value::from("NOT_FOUND"))
    );
    assert!(output.stdout.is_empty());
}

/// `audit list --newest-first` lists from the newest event back, a page per line with its next
/// page's token; the hint for the next page goes to standard error.
#[tokio::test]
async fn audit_events_are_listed_newest_first_a_page_per_line() {
    let app = TestApp::spawn().await;
    for subject in ["ada", "bob", "cleo"] {
        app.upsert(subject, assent::proto::Plan::Free).await;
    }
    let subjects = |output: &Output| -> Vec<String> {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .flat_map(|line| {
                let page: Value = serde_json::from_str(line).unwrap();
                let events = page["events"].as_array().unwrap().clone();
                events
                    .into_iter()
                    .map(|event| event["subjectId"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let newest = [
        "audit",
        "list",
        "--newest-first",
        "--page-size",
        "2",
        "--all",
    ];
    let mut json = newest.to_vec();
    json.push("--json");
    let output = run_on(&app, &json).await;
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 2);
    assert_eq!(subjects(&output), ["cleo", "bob", "ada"]);
    let oldest = run_on(&app, &["audit", "list", "--all", "--json"]).await;
    assert_eq!(subjects(&oldest), ["ada", "bob", "cleo"]);

    let first = run_on(&app, &["audit", "list", "--page-size", "2"]).await;
    assert_eq!(String::from_utf8_lossy(&first.stdout).lines().count(), 2);
    let hint = String::from_utf8(first.stderr).unwrap();
    assert!(hint.starts_with("more: --page-token "), "{hint}");
    let first = run_on(&app, &["audit", "list", "--page-size", "2", "--json"]).await;
    assert!(first.stderr.is_empty());
    let page: Value = serde_json::from_slice(&first.stdout).unwrap();
    let token = page["nextPageToken"].as_str().unwrap();
    assert!(!token.is_empty());
    let rest = run_on(
        &app,
        &[
            "audit",
            "list",
            "--page-size",
            "2",
            "--page-token",
            token,
            "--json",
        ],
    )
    .await;
    assert_eq!(subjects(&rest), ["cleo"]);
}

/// An answer of the API in JSON is its message in the proto3 JSON mapping: every field,
/// lowerCamelCase, enum values by name, 64-bit integers as strings, RFC 3339 times.
#[tokio::test]
async fn json_answers_are_their_messages_in_the_proto3_mapping() {
    let app = TestApp::spawn().await;
    app.upsert("ada", assent::proto::Plan::Free).await;
    let output = run_on(
        &app,
        &["check", "--subject", "ada", "--purpose", "memory", "--json"],
    )
    .await;
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in [
        "subjectId",
        "purpose",
        "decision",
        "reason",
        "rule",
        "policyVersion",
        "revision",
        "explanation",
        "decisionId",
        "degraded",
    ] {
        assert!(answer.get(field).is_some(), "{field}: {answer}");
    }
    assert_eq!(answer["purpose"], "PURPOSE_MEMORY");
    assert_eq!(answer["degraded"], false);
    let subject: Value = serde_json::from_slice(
        &run_on(&app, &["subject", "get", "ada", "--json"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(subject["plan"], "PLAN_FREE");
    assert_eq!(subject["choices"], serde_json::json!([]));
    let events: Value =
        serde_json::from_slice(&run_on(&app, &["audit", "list", "--json"]).await.stdout).unwrap();
    let at = events["events"][0]["at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
    let verified: Value =
        serde_json::from_slice(&run_on(&app, &["audit", "verify", "--json"]).await.stdout).unwrap();
    assert_eq!(verified["eventsChecked"], "1");
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    let nowhere = closed_port();
    let bash = run(&nowhere, None, &["completions", "bash"]).await;
    assert_eq!(bash.status.code(), Some(0));
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("_assent()"), "{bash}");
    for subcommand in ["check", "subject", "audit", "verify-offline", "completions"] {
        assert!(bash.contains(subcommand), "{subcommand}");
    }
    assert!(bash.contains("model-training"), "enum values are completed");
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let output = run(&nowhere, None, &["completions", shell]).await;
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains("verify-offline"), "{shell}: {script}");
    }
    let output = run(&nowhere, None, &["completions", "tcsh"]).await;
    assert_eq!(output.status.code(), Some(1));
}

/// A reader that stops reading (`assent ... | head`) ends the command quietly with status 0,
/// not with a panic: 145 KB of bash completions into a pipe closed after the first bytes.
#[tokio::test]
async fn a_closed_pipe_ends_the_command_quietly() {
    use std::io::Read as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_assent"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
