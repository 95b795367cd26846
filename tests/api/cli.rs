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
    assert_eq!(output.status.code(), Some(4), "refused");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("NOT_FOUND: subject_id"), "{stderr}");
    let output = assent(&app, &["check", "--subject", "u", "--purpose", "training"]).await;
    assert_eq!(output.status.code(), Some(1), "a usage error");
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("model-training")
    );
}

/// Each line of a listing printed with `--json`: one page, its items under `field`.
fn items_of_pages(output: &str, field: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .flat_map(|line| {
            let page: serde_json::Value = serde_json::from_str(line).unwrap();
            page[field].as_array().unwrap().clone()
        })
        .collect()
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

/// The policy commands: validate and test a file without a server, then apply it, list the
/// versions, compare, and ask as of an instant; `changes watch` prints the change log.
#[tokio::test]
async fn policy_files_are_validated_tested_applied_and_compared() {
    let app = TestApp::spawn().await;
    let builtin = "policies/2026-01-01.toml";
    let scenarios = "tests/fixtures/scenarios.json";
    let valid = stdout(&app, &["policy", "validate", builtin]).await;
    assert!(
        valid.contains("policy version 2026-01-01 is valid"),
        "{valid}"
    );
    let tested = stdout(&app, &["policy", "test", builtin, scenarios]).await;
    assert!(tested.contains(" 0 failed"), "{tested}");

    // A second version: the free plan is never trained on, from a minute from now.
    let effective = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    let source = std::fs::read_to_string(builtin)
        .unwrap()
        .replacen("version = \"2026-01-01\"", "version = \"2026-12-cli\"", 1)
        .replacen(
            "effective_from = 2026-01-01",
            &format!(
                "effective_from = {}",
                humantime::format_rfc3339_seconds(effective)
            ),
            1,
        )
        .replacen(
            "plan = [\"TEAM\", \"ENTERPRISE\", \"API_PAID\"]",
            "plan = [\"FREE\", \"TEAM\", \"ENTERPRISE\", \"API_PAID\"]",
            1,
        );
    let directory = tempfile::tempdir().unwrap();
    let v2 = directory.path().join("v2.toml");
    std::fs::write(&v2, source).unwrap();
    let v2 = v2.to_str().unwrap();
    // The scenarios were written for the built-in policy: the new one fails some, and says so.
    let output = assent(&app, &["policy", "test", v2, scenarios]).await;
    assert_eq!(output.status.code(), Some(3), "failed checks");
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(
        report.contains("FAIL free plan trains by default"),
        "{report}"
    );
    let broken = directory.path().join("broken.toml");
    std::fs::write(&broken, "version = \"x\"\n").unwrap();
    let output = assent(&app, &["policy", "validate", broken.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(3), "an invalid policy file");
    let output = assent(&app, &["policy", "validate", "no-such-policy.toml"]).await;
    assert_eq!(output.status.code(), Some(1), "an unreadable file");

    app.upsert("alice", assent::proto::Plan::Free).await;
    let diff = stdout(&app, &["policy", "diff", "in-force", v2]).await;
    assert!(
        diff.contains("2026-01-01 -> 2026-12-cli: 1 subjects"),
        "{diff}"
    );
    assert!(diff.contains("e.g. alice: ALLOW T6 -> DENY T4"), "{diff}");
    assert!(diff.contains("retention schedule: the same"), "{diff}");
    let applied = stdout(&app, &["policy", "apply", v2, "--reason", "test"]).await;
    assert!(
        applied.starts_with("applied policy version 2026-12-cli"),
        "{applied}"
    );
    let listed = stdout(&app, &["policy", "list"]).await;
    assert!(
        listed.contains("2026-01-01") && listed.contains("IN FORCE"),
        "{listed}"
    );
    assert!(listed.contains("2026-12-cli"), "{listed}");
    let fetched = stdout(&app, &["policy", "get", "2026-12-cli"]).await;
    assert!(fetched.contains("version = \"2026-12-cli\""));

    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let as_of = [
        "--subject",
        "alice",
        "--purpose",
        "model-training",
        "--as-of",
        now.as_str(),
    ];
    assert_eq!(
        decision(&app, &as_of).await,
        ("DECISION_ALLOW".to_owned(), "T6".to_owned())
    );
    // Each line is a WatchResponse: a change (or a heartbeat) under its name.
    let watched = stdout(&app, &["changes", "watch", "--limit", "2", "--json"]).await;
    let kinds: Vec<String> = watched
        .lines()
        .map(|line| {
            let answer: serde_json::Value = serde_json::from_str(line).unwrap();
            answer["change"]["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["subject_upserted", "policy_applied"]);
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&app, &["policy", "list", "--json"]).await).unwrap();
    assert_eq!(listed["inForce"], "2026-01-01");
    assert_eq!(listed["versions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rights_requests_are_filed_advanced_and_listed() {
    let app = TestApp::spawn().await;
    stdout(
        &app,
        &[
            "subject",
            "upsert",
            "carol",
            "--plan",
            "free",
            "--jurisdiction",
            "US-CA",
        ],
    )
    .await;
    let written: serde_json::Value = serde_json::from_str(
        &stdout(
            &app,
            &[
                "rights",
                "file",
                "--json",
                "--subject",
                "carol",
                "--kind",
                "objection",
                "--received-at",
                "2026-01-10T09:00:00Z",
            ],
        )
        .await,
    )
    .unwrap();
    // The RightsWriteResponse: the request, and the revision of the write.
    assert!(written["revision"].as_str().unwrap().starts_with("r1."));
    let filed = &written["request"];
    assert_eq!(filed["kind"], "RIGHT_KIND_OBJECTION");
    assert_eq!(filed["regime"], "REGIME_US_STATE");
    assert_eq!(filed["dueAt"], "2026-02-24T23:59:59.999999Z");
    assert_eq!(filed["effectApplied"], true);
    assert_eq!(
        decision(&app, &["--subject", "carol", "--purpose", "model-training"]).await,
        ("DECISION_DENY".to_owned(), "T5".to_owned())
    );
    let id = filed["requestId"].as_str().unwrap();
    let overdue = stdout(&app, &["rights", "overdue", "--at", "2026-02-25T00:00:00Z"]).await;
    assert!(
        overdue.contains(id) && overdue.contains("OVERDUE"),
        "{overdue}"
    );
    let refusal = assent(&app, &["rights", "advance", id, "--state", "refused"]).await;
    assert_eq!(refusal.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&refusal.stderr).contains("INVALID_ARGUMENT: reason"));
    let refused = stdout(
        &app,
        &[
            "rights",
            "advance",
            id,
            "--state",
            "refused",
            "--refusal-reason",
            "duplicate",
        ],
    )
    .await;
    assert!(
        refused.contains("REFUSED") && refused.contains("refused: duplicate"),
        "{refused}"
    );
    assert!(
        stdout(&app, &["rights", "overdue", "--at", "2026-02-25T00:00:00Z"])
            .await
            .is_empty()
    );
    let listed = stdout(&app, &["rights", "list", "--subject", "carol"]).await;
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let listed = stdout(&app, &["rights", "list", "--subject", "carol", "--json"]).await;
    let requests = items_of_pages(&listed, "requests");
    assert_eq!(requests.len(), 1, "{listed}");
    assert_eq!(requests[0]["state"], "REQUEST_STATE_REFUSED");
    assert!(
        stdout(&app, &["rights", "get", id])
            .await
            .contains("OBJECTION")
    );
}

/// `subject choice` with how and under what the choice was given, and `subject
/// consent-history`.
#[tokio::test]
async fn choices_carry_their_provenance_and_their_history_on_the_command_line() {
    let app = TestApp::spawn().await;
    app.upsert("bea", assent::proto::Plan::Free).await;
    let in_a_year = std::time::SystemTime::now() + std::time::Duration::from_secs(396 * 86_400);
    let expires_at = humantime::format_rfc3339_seconds(in_a_year).to_string();
    let grant = [
        "subject",
        "choice",
        "bea",
        "--purpose",
        "analytics-cookies",
        "--choice",
        "granted",
        "--method",
        "cookie-banner",
        "--notice-version",
        "cookies-3",
        "--expires-at",
        expires_at.as_str(),
    ];
    assert!(stdout(&app, &grant).await.starts_with("ok, revision "));
    assert!(
        stdout(&app, &grant)
            .await
            .starts_with("ok, nothing to change"),
        "the same choice, notice, method and expiry again"
    );
    let text = stdout(&app, &["subject", "get", "bea"]).await;
    assert!(
        text.contains(&format!(
            "analytics-cookies            granted  notice cookies-3, by cookie-banner, via \
             anonymous, until {}",
            &expires_at[..19]
        )),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&app, &["subject", "get", "bea", "--json"]).await).unwrap();
    let choice = &json["choices"][0];
    assert_eq!(choice["method"], "CONSENT_METHOD_COOKIE_BANNER");
    assert_eq!(choice["noticeVersion"], "cookies-3");
    assert_eq!(choice["caller"], "anonymous");
    assert!(
        choice["expiresAt"]
            .as_str()
            .unwrap()
            .starts_with(&expires_at[..19])
    );
    stdout(
        &app,
        &[
            "subject",
            "choice",
            "bea",
            "--purpose",
            "analytics-cookies",
            "--choice",
            "cleared",
            "--method",
            "settings-page",
        ],
    )
    .await;

    let history = stdout(&app, &["subject", "consent-history", "bea"]).await;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].contains("analytics-cookies") && lines[0].contains("granted"),
        "{history}"
    );
    assert!(lines[0].contains("set-by-caller"), "{history}");
    assert!(
        lines[1].contains("cleared") && lines[1].contains("by settings-page"),
        "{history}"
    );
    let paged = stdout(
        &app,
        &[
            "subject",
            "consent-history",
            "bea",
            "--page-size",
            "1",
            "--all",
            "--json",
        ],
    )
    .await;
    // One ConsentHistoryResponse per line, one page each.
    assert_eq!(paged.lines().count(), 2, "{paged}");
    let whys: Vec<String> = items_of_pages(&paged, "records")
        .iter()
        .map(|record| format!("{} {}", record["choice"], record["why"]))
        .collect();
    assert_eq!(
        whys,
        [
            "\"CHOICE_GRANTED\" \"CONSENT_EVENT_REASON_SET_BY_CALLER\"",
            "\"CHOICE_CLEARED\" \"CONSENT_EVENT_REASON_SET_BY_CALLER\""
        ]
    );

    let yesterday = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - std::time::Duration::from_secs(86_400),
    )
    .to_string();
    let output = assent(
        &app,
        &[
            "subject",
            "choice",
            "bea",
            "--purpose",
            "analytics-cookies",
            "--choice",
            "granted",
            "--expires-at",
            yesterday.as_str(),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("INVALID_ARGUMENT: expires_at"), "{stderr}");
    let output = assent(
        &app,
        &[
            "subject",
            "choice",
            "bea",
            "--purpose",
            "memory",
            "--choice",
            "refused",
            "--method",
            "carrier-pigeon",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cookie-banner"), "{stderr}");
}

/// `retention query` and `retention due`, in text and JSON.
#[tokio::test]
async fn retention_is_queried_and_due_data_listed() {
    let app = TestApp::spawn().await;
    for subject in ["ada", "bob", "cleo"] {
        app.upsert(subject, assent::proto::Plan::Free).await;
    }
    stdout(&app, &["subject", "delete", "ada"]).await;
    stdout(&app, &["subject", "delete", "cleo"]).await;

    let text = stdout(
        &app,
        &[
            "retention",
            "query",
            "--category",
            "account-data",
            "--subject",
            "ada",
        ],
    )
    .await;
    assert!(text.starts_with("account-data  kept until "), "{text}");
    assert!(text.contains("not due  legal hold"), "{text}");
    assert!(
        text.contains("privacy policy §5, Account Data (policy 2026-01-01"),
        "{text}"
    );
    let open = stdout(
        &app,
        &[
            "retention",
            "query",
            "--category",
            "account-data",
            "--subject",
            "bob",
        ],
    )
    .await;
    assert!(
        open.starts_with("account-data  kept 1 year after account-termination  not due"),
        "{open}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &stdout(
            &app,
            &[
                "retention",
                "query",
                "--category",
                "invoices",
                "--event-time",
                "2026-03-15T00:00:00Z",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["category"], "DATA_CATEGORY_INVOICES");
    assert_eq!(json["keepUntil"], "2037-01-01T00:00:00Z");
    assert_eq!(json["legalHold"], true);
    assert_eq!(json["due"], false);

    let first_page = [
        "retention",
        "due",
        "--category",
        "chat-conversation",
        "--page-size",
        "1",
    ];
    let output = assent(&app, &first_page).await;
    assert!(output.status.success());
    let due = String::from_utf8(output.stdout).unwrap();
    assert!(due.contains("subjects whose data is due: 1"), "{due}");
    assert!(due.contains("    ada "), "{due}");
    // How to ask for the next page is said on standard error, not in the answer.
    assert!(!due.contains("more:"), "{due}");
    let hint = String::from_utf8(output.stderr).unwrap();
    assert!(hint.starts_with("more: --page-token d1."), "{hint}");
    let mut json_page = first_page.to_vec();
    json_page.push("--json");
    let output = assent(&app, &json_page).await;
    assert!(output.stderr.is_empty());
    let page: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(page["nextPageToken"].as_str().unwrap().starts_with("d1."));
    let all: serde_json::Value = serde_json::from_str(
        &stdout(
            &app,
            &[
                "retention",
                "due",
                "--category",
                "chat-conversation",
                "--page-size",
                "1",
                "--all",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    let ids: Vec<&str> = all["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|subject| subject["subjectId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ada", "cleo"]);
    assert_eq!(all["nextPageToken"], "");
    assert_eq!(
        all["recordCutoff"]["event"],
        "RETENTION_EVENT_CONVERSATION_OR_ACCOUNT_DELETION"
    );

    let output = assent(
        &app,
        &[
            "retention",
            "query",
            "--category",
            "account-data",
            "--subject",
            "nobody",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("NOT_FOUND: subject_id"), "{stderr}");
}

#[tokio::test]
async fn verify_state_reports_a_subject_whose_rows_were_changed() {
    let app = TestApp::spawn().await;
    app.upsert("ada", assent::proto::Plan::Pro).await;
    let ok = stdout(&app, &["audit", "verify-state"]).await;
    assert_eq!(
        ok.trim(),
        "ok: the state tables match the audit events (1 subjects)"
    );
    let mut database = app.direct_connection().await;
    database
        .execute("UPDATE subjects SET plan = 'ENTERPRISE' WHERE subject_id = 'ada'")
        .await
        .unwrap();
    database.close().await;
    let output = assent(&app, &["audit", "verify-state"]).await;
    assert_eq!(output.status.code(), Some(3), "a failed check");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "MISMATCH: 1 of 1 subjects differ from their audit events\n\
         ada\n  plan: stored ENTERPRISE, events PRO\n"
    );
    let output = assent(&app, &["audit", "verify-state", "--json"]).await;
    assert_eq!(output.status.code(), Some(3), "a failed check");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["mismatches"][0]["subjectId"], "ada");
    assert_eq!(
        json["mismatches"][0]["differences"][0],
        "plan: stored ENTERPRISE, events PRO"
    );
}

/// `assent audit decisions` lists what the decision log recorded, a subject's or one
/// decision's, as text or JSON lines; a decision id that is not one is refused by name.
#[tokio::test]
async fn recorded_decisions_are_listed_on_the_command_line() {
    let app = TestApp::spawn().await;
    app.upsert("ada", assent::proto::Plan::Free).await;
    app.upsert("bob", assent::proto::Plan::Free).await;
    let (mut ids, mut answers) = (Vec::new(), Vec::new());
    for (subject, purpose) in [
        ("ada", "model-training"),
        ("bob", "memory"),
        ("ada", "memory"),
    ] {
        let json = stdout(
            &app,
            &[
                "check",
                "--json",
                "--subject",
                subject,
                "--purpose",
                purpose,
            ],
        )
        .await;
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        ids.push(json["decisionId"].as_str().unwrap().to_owned());
        answers.push(json);
    }
    // Shipped about a second after the decision; each line a page of them.
    let listed = |output: String| items_of_pages(&output, "decisions");
    let mut of_ada = Vec::new();
    for _ in 0..100 {
        of_ada = listed(stdout(&app, &["audit", "decisions", "--subject", "ada", "--json"]).await);
        if of_ada.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let listed_ids: Vec<&str> = of_ada
        .iter()
        .map(|decision| decision["decisionId"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, [ids[0].as_str(), ids[2].as_str()]);
    assert_eq!(of_ada[0]["purpose"], "PURPOSE_MODEL_TRAINING");
    assert_eq!(of_ada[0]["decision"], answers[0]["decision"]);
    assert_eq!(of_ada[0]["rule"], answers[0]["rule"]);
    assert_eq!(of_ada[0]["subjectId"], "ada");

    let one = stdout(&app, &["audit", "decisions", "--decision-id", &ids[1]]).await;
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains(" bob ") && one.contains(&ids[1]), "{one}");
    let before = stdout(
        &app,
        &[
            "audit",
            "decisions",
            "--subject",
            "ada",
            "--until",
            "2020-01-01T00:00:00Z",
        ],
    )
    .await;
    assert_eq!(before, "");

    let output = assent(&app, &["audit", "decisions", "--decision-id", "d-1"]).await;
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("INVALID_ARGUMENT: decision_id"), "{stderr}");
}
