//! The staff console over HTTP, against a real server: a subject's decisions, reasons and past;
//! a rights request advanced and its audit event; a read-only viewer, forged forms and missing
//! tokens refused; the first screen of a subject with 10,000 events.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assent::proto::{self, Choice, Plan, Purpose, RequestState, RightKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, actor, token, with_token};

/// An answer of the console.
#[derive(Debug)]
struct Page {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The CSRF cookie the page set.
    fn csrf_cookie(&self) -> String {
        let cookie = self
            .header("set-cookie")
            .expect("the page sets the csrf cookie");
        let value = cookie
            .strip_prefix("assent_csrf=")
            .and_then(|rest| rest.split(';').next())
            .expect("the cookie is assent_csrf");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        value.to_owned()
    }

    /// The value of the first hidden `csrf` field of the page's forms.
    fn csrf_field(&self) -> Option<String> {
        let at = self.body.find(r#"name="csrf" value=""#)?;
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        Some(rest[..rest.find('"')?].to_owned())
    }
}

/// One request over a fresh HTTP/1.1 connection.
async fn request(
    console: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Page {
    let mut stream = tokio::net::TcpStream::connect(console).await.unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(form) = form {
        text.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(form.unwrap_or(""));
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name.eq_ignore_ascii_case("transfer-encoding") && value == "chunked");
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Page {
        status,
        headers,
        body,
    }
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

async fn get(console: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Page {
    request(console, "GET", path, headers, None).await
}

/// A form sent as a page of the console sends it: with the viewer's token (`Bearer …`) and the
/// CSRF cookie `csrf`.
async fn post(console: SocketAddr, path: &str, bearer: &str, csrf: &str, form: &str) -> Page {
    let cookie = format!("assent_csrf={csrf}");
    let headers = [("Authorization", bearer), ("Cookie", cookie.as_str())];
    request(console, "POST", path, &headers, Some(form)).await
}

/// The text of a page without its tags, its whitespace collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for character in html.chars() {
        match character {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(character),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The row of the decisions table for `purpose` (its words), as text.
fn decision_row(body: &str, purpose: &str) -> String {
    let table = &body[body.find("<tbody>").unwrap()..];
    let row_start = table
        .find(&format!("<th scope=\"row\">{purpose}</th>"))
        .unwrap_or_else(|| panic!("no row for {purpose}"));
    let row = &table[row_start..];
    text(&row[..row.find("</tr>").unwrap()])
}

fn as_of_now() -> String {
    let micros = assent::store::now_micros();
    let date = assent::calendar::Date::from_micros(micros);
    let seconds = micros.rem_euclid(86_400_000_000) / 1_000_000;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date.year,
        date.month,
        date.day,
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[tokio::test]
async fn the_console_shows_a_subject_its_reasons_and_its_past() {
    let app = TestApp::spawn_console(false, |_| {}).await;
    let console = app.console.unwrap();
    app.upsert("u-console", Plan::Free).await;
    app.set_choice("u-console", Purpose::ModelTraining, Choice::Granted)
        .await
        .unwrap();
    let before_opt_out = as_of_now();
    // The as-of field names a second: the opt-out falls in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.set_choice("u-console", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();

    let search = get(console, "/subjects", &[]).await;
    assert_eq!(search.status, 200, "{}", search.body);
    assert!(
        search
            .body
            .contains(r#"<label for="id">Subject id</label>"#)
    );

    let now = get(console, "/subjects?id=u-console", &[]).await;
    assert_eq!(now.status, 200, "{}", now.body);
    let training = decision_row(&now.body, "model training");
    assert!(training.contains("DENY"), "{training}");
    let check = app.check("u-console", Purpose::ModelTraining).await;
    assert_eq!(check.decision(), proto::Decision::Deny);
    assert!(training.contains(&check.rule), "{training}");
    let reason = check.reason().as_str_name()["REASON_".len()..]
        .to_lowercase()
        .replace('_', " ");
    assert!(training.contains(&reason), "{training} lacks {reason}");
    // The why panel cites the policy sentence and the choice the rule read.
    assert!(now.body.contains(&check.explanation), "no explanation");
    assert!(text(&now.body).contains("Choice for this purpose REFUSED"));
    // The history lists both choices, newest first.
    let history = text(&now.body[now.body.find("id=\"history\"").unwrap()..]);
    let refused = history.find("granted → refused").unwrap();
    let granted = history.find("none → granted").unwrap();
    assert!(refused < granted, "{history}");

    let then = get(
        console,
        &format!("/subjects?id=u-console&as_of={before_opt_out}"),
        &[],
    )
    .await;
    assert_eq!(then.status, 200, "{}", then.body);
    let training_then = decision_row(&then.body, "model training");
    assert!(training_then.contains("ALLOW"), "{training_then}");
    assert!(then.body.contains("Decisions as of"));

    // Asked for, each change shows the decisions it flipped: the opt-out, training's.
    let flips = get(console, "/subjects?id=u-console&flips=1", &[]).await;
    assert_eq!(flips.status, 200, "{}", flips.body);
    let history = text(&flips.body[flips.body.find("id=\"history\"").unwrap()..]);
    let opt_out = &history[history.find("granted → refused").unwrap()..];
    let opt_out = &opt_out[..opt_out.find("none → granted").unwrap_or(opt_out.len())];
    assert!(
        opt_out.contains("model training: ALLOW")
            && opt_out.contains(&format!("→ DENY ({})", check.rule)),
        "{history}"
    );
    assert!(
        !now.body.contains("Decisions flipped"),
        "only when asked for"
    );

    let bad = get(console, "/subjects?id=u-console&as_of=yesterday", &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("as_of: expected a date"), "{}", bad.body);
    let unknown = get(console, "/subjects?id=bad%20id", &[]).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("subject_id"), "{}", unknown.body);
    // The pages are not cached, nor framed by another site.
    assert_eq!(now.header("cache-control"), Some("no-store"));
    assert!(
        now.header("content-security-policy")
            .is_some_and(|policy| policy.contains("frame-ancestors 'none'"))
    );
    app.stop().await;
}

async fn file_request(app: &TestApp, subject_id: &str, writer: &str) -> String {
    app.subjects()
        .upsert_subject(with_token(
            proto::UpsertSubjectRequest {
                subject_id: subject_id.into(),
                plan: Some(Plan::Free as i32),
                jurisdiction: Some("FR".into()),
                actor: actor(),
                ..Default::default()
            },
            writer,
        ))
        .await
        .unwrap();
    proto::rights_client::RightsClient::new(app.channel())
        .file_request(with_token(
            proto::FileRightsRequest {
                subject_id: subject_id.into(),
                kind: RightKind::Access as i32,
                actor: actor(),
                ..Default::default()
            },
            writer,
        ))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap()
        .request_id
}

/// A console that takes bearer tokens, a subject `subject_id` and a rights request of theirs
/// filed: the server, the console's address, a token of every scope, and the request's id.
async fn console_with_a_request(subject_id: &str) -> (TestApp, SocketAddr, String, String) {
    let app = TestApp::spawn_console(true, |_| {}).await;
    let console = app.console.unwrap();
    let writer = token("support-backend", "admin");
    let request_id = file_request(&app, subject_id, &writer).await;
    (app, console, writer, request_id)
}

/// The state of rights request `request_id` as the API reads it.
async fn stored_state(app: &TestApp, request_id: &str, token: &str) -> RequestState {
    proto::rights_client::RightsClient::new(app.channel())
        .get_request(with_token(
            proto::GetRightsRequest {
                request_id: request_id.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .state()
}

#[tokio::test]
async fn a_rights_request_is_advanced_from_the_console_and_audited() {
    let (app, console, writer, request_id) = console_with_a_request("u-rights").await;
    let privacy = format!(
        "Bearer {}",
        token(
            "dpo@example.com",
            "rights:read rights:write audit:read subjects:read decisions:check"
        )
    );
    let auth = [("Authorization", privacy.as_str())];

    let queue = get(console, "/rights", &auth).await;
    assert_eq!(queue.status, 200, "{}", queue.body);
    assert!(
        queue.body.contains(&request_id),
        "the queue lists the request"
    );
    assert!(text(&queue.body).contains("Signed in as dpo@example.com"));
    let filtered = get(console, "/rights?regime=REGIME_US_STATE", &auth).await;
    assert!(
        !filtered.body.contains(&request_id),
        "a GDPR request filtered out"
    );

    let page = get(console, &format!("/rights/{request_id}"), &auth).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(">Advance</button>"),
        "the writer sees the action"
    );
    let cookie = page.csrf_cookie();
    assert_eq!(page.csrf_field().as_deref(), Some(cookie.as_str()));
    let form = format!(
        "csrf={cookie}&state=REQUEST_STATE_VERIFYING&reason=checking+the+requester%27s+identity"
    );
    let advanced = post(
        console,
        &format!("/rights/{request_id}/advance"),
        &privacy,
        &cookie,
        &form,
    )
    .await;
    assert_eq!(advanced.status, 200, "{}", advanced.body);
    assert!(text(&advanced.body).contains("Request advanced"));
    assert!(text(&advanced.body).contains("State verifying"));
    // The step is an audit event with the viewer as its operator, and the reason given.
    let steps = text(&advanced.body[advanced.body.find("id=\"steps\"").unwrap()..]);
    assert!(
        steps.contains("dpo@example.com: checking the requester's identity"),
        "{steps}"
    );
    let stored = stored_state(&app, &request_id, &writer).await;
    assert_eq!(stored, RequestState::Verifying);
    let events = app
        .audit()
        .list_events(with_token(
            proto::ListEventsRequest {
                subject_id: Some("u-rights".into()),
                page_size: 100,
                page_token: String::new(),
                newest_first: false,
            },
            &writer,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let step = events.last().unwrap();
    assert_eq!(step.kind, "rights_request_advanced");
    assert_eq!(step.caller, "dpo@example.com");
    let actor = step.actor.clone().unwrap();
    assert_eq!(actor.operator_id, "dpo@example.com");
    assert_eq!(actor.reason, "checking the requester's identity");
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_viewer_sees_no_actions_and_forged_forms_are_refused() {
    let (app, console, writer, request_id) = console_with_a_request("u-readonly").await;
    let reader = format!(
        "Bearer {}",
        token(
            "auditor@example.com",
            "rights:read audit:read subjects:read"
        )
    );
    let privacy = format!(
        "Bearer {}",
        token("dpo@example.com", "rights:read rights:write audit:read")
    );
    let path = format!("/rights/{request_id}");
    let advance = format!("{path}/advance");

    let page = get(console, &path, &[("Authorization", reader.as_str())]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("<form method=\"post\""),
        "no action for a reader"
    );
    assert!(page.csrf_field().is_none());
    let cookie = page.csrf_cookie();
    let cookie_header = format!("assent_csrf={cookie}");
    let form = format!("csrf={cookie}&state=REQUEST_STATE_VERIFYING&reason=x");

    // A reader's own well-formed POST: refused by the API's scopes, not by the console.
    let by_reader = post(console, &advance, &reader, &cookie, &form).await;
    assert_eq!(by_reader.status, 403, "{}", by_reader.body);
    assert!(
        by_reader.body.contains("lacks the scope rights:write"),
        "{}",
        by_reader.body
    );

    // Forged: no cookie, another cookie, or sent from another site.
    let other = "0".repeat(64);
    let other_cookie = format!("assent_csrf={other}");
    for (headers, label) in [
        (vec![("Authorization", privacy.as_str())], "no cookie"),
        (
            vec![
                ("Authorization", privacy.as_str()),
                ("Cookie", other_cookie.as_str()),
            ],
            "another cookie",
        ),
        (
            vec![
                ("Authorization", privacy.as_str()),
                ("Cookie", cookie_header.as_str()),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            "from another site",
        ),
    ] {
        let forged = request(console, "POST", &advance, &headers, Some(&form)).await;
        assert_eq!(forged.status, 403, "{label}: {}", forged.body);
        assert!(forged.body.contains("csrf:"), "{label}: {}", forged.body);
    }
    // No token, or a bad one: nothing is shown.
    let anonymous = get(console, &path, &[]).await;
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .body
            .contains("authorization: a bearer token is required")
    );
    let bad = get(console, &path, &[("Authorization", "Bearer not-a-token")]).await;
    assert_eq!(bad.status, 401);
    // Nothing was written: the request is as filed.
    let stored = stored_state(&app, &request_id, &writer).await;
    assert_eq!(stored, RequestState::Received);

    // The privacy officer's form, with the page's token, is taken.
    let taken = post(console, &advance, &privacy, &cookie, &form).await;
    assert_eq!(taken.status, 200, "{}", taken.body);
    app.stop().await;
}

#[tokio::test]
async fn a_subject_with_ten_thousand_events_shows_its_first_screen_within_200_ms() {
    let app = TestApp::spawn_console(false, |settings| {
        // The writes of the test stand for many callers.
        settings.limits.writes_per_second = 0;
    })
    .await;
    let console = app.console.unwrap();
    app.upsert("u-busy", Plan::Pro).await;
    // 10,000 changes, written 50 at a time: a rating of a conversation each.
    for batch in 0..200 {
        let writes = (0..50).map(|index| {
            let app = &app;
            async move {
                let conversation = format!("c-{batch}-{index}");
                app.rate("u-busy", &conversation, proto::Rating::ThumbsUp)
                    .await;
            }
        });
        futures_util::future::join_all(writes).await;
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let page = get(console, "/subjects?id=u-busy", &[]).await;
        times.push(started.elapsed());
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Older changes"), "the history is paged");
    }
    // The decisions flipped by a page of 25 changes: 500 checks as of an instant, which the
    // server answers from one pass over the subject's events.
    let started = Instant::now();
    let flips = get(console, "/subjects?id=u-busy&flips=1", &[]).await;
    assert_eq!(flips.status, 200, "{}", flips.body);
    assert!(
        flips.body.contains("Decisions flipped"),
        "{}",
        text(&flips.body)
    );
    println!(
        "the decisions flipped by its newest 25 changes: {:?}",
        started.elapsed()
    );
    times.sort();
    let median = times[2];
    println!("subject page with 10,000 events: median {median:?} of {times:?}");
    assert!(median < Duration::from_millis(200), "{times:?}");
    app.stop().await;
}
