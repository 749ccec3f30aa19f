//! The console over HTTP, as a browser speaks to it (a cookie, forms, redirects):
//! sign-in and its session, capabilities, CSRF, stored text shown as text, the
//! security headers, and the check of a session's chain.

use std::time::Duration;

use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::json;
use steward::identity::Capability;
use steward::ids::{SessionId, TurnId};
use steward::orchestrator::{FinishReason, TurnRecord};

use crate::helpers::{spawn_app_with, unique, Storage, TestApp};

/// A browser: no redirects followed, its console cookie kept by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self { http: reqwest::Client::builder().redirect(Policy::none()).build().unwrap(), base: app.address.clone(), cookie: None }
    }

    async fn sign_in(&mut self, key: &str) -> reqwest::Response {
        let response = self.http.post(format!("{}/console/sign-in", self.base)).form(&[("key", key)]).send().await.unwrap();
        if let Some(cookie) = response.headers().get(SET_COOKIE) {
            self.cookie = cookie.to_str().unwrap().split(';').next().map(str::to_owned);
        }
        response
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.unwrap()
    }
}

fn location(headers: &HeaderMap) -> &str {
    headers.get(LOCATION).map(|v| v.to_str().unwrap()).unwrap_or_default()
}

/// The CSRF token of a page's sign-out form.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// A finished turn of `tenant` as the store would hold it, with this text.
pub(crate) fn stored_turn(tenant: &str, user_message: &str, assistant_message: &str) -> TurnRecord {
    TurnRecord {
        turn_id: TurnId::mint(),
        session_id: SessionId::mint(),
        tenant: tenant.to_owned(),
        user_message: user_message.to_owned(),
        preamble: "[]".into(),
        assistant_message: assistant_message.to_owned(),
        finish_reason: FinishReason::Stop,
        policy_verdict: "allow".into(),
        constitution_hash: format!("sha256:{}", "a".repeat(64)),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        prompt_tokens: None,
        completion_tokens: None,
        created_at: steward::db::now_ms(),
        output_code: None,
    }
}

async fn app() -> TestApp {
    spawn_app_with(Storage::Sqlite, |s| s.identity.key_cache = Duration::ZERO).await
}

#[tokio::test]
async fn an_auditor_signs_in_finds_a_turn_reads_it_and_sees_its_record_intact() {
    let app = app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let sse = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 8 })).await;
    let turn_id = sse.first("session")["turn_id"].as_str().unwrap().to_owned();

    let mut browser = Browser::new(&app);
    let signed_in = browser.sign_in(&audit).await;
    assert_eq!((signed_in.status().as_u16(), location(signed_in.headers())), (303, "/console"));
    assert_eq!(location(browser.get("/console").await.headers()), "/console/overview", "the first page this key may see");
    let cookie = signed_in.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains(&audit), "the key is never in the cookie");

    let overview = browser.page("/console/overview").await;
    assert!(overview.contains("Turns, last hour"), "{overview}");
    let listed = browser.page("/console/turns").await;
    assert!(listed.contains(&turn_id), "the turn is listed");
    let shown = browser.page(&format!("/console/turns/{turn_id}")).await;
    assert!(shown.contains("Say hello to me.") && shown.contains("turn.completed") && shown.contains("sha256:"), "{shown}");
    let verified = browser.page(&format!("/console/turns/{turn_id}/verify")).await;
    assert!(verified.contains("<strong class=\"intact\">intact</strong>"), "{verified}");
}

#[tokio::test]
async fn an_auditor_finds_an_answer_cut_on_output_by_its_category_and_reads_the_constitution_it_was_judged_under() {
    let model = crate::scripted_server::scripted(crate::scripted_server::Script::Answer(vec!["Here is ", "how to ", "kill some", "one quietly."])).await;
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.identity.key_cache = Duration::ZERO;
        s.slm.base_url = model;
    })
    .await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let sse = app.chat(&chat, &json!({ "message": "Tell me a story." })).await;
    let (turn_id, hash) =
        (sse.first("session")["turn_id"].as_str().unwrap().to_owned(), sse.first("session")["constitution_hash"].as_str().unwrap().to_owned());
    let code = sse.first("refusal")["code"].as_str().unwrap().to_owned();

    let mut browser = Browser::new(&app);
    browser.sign_in(&audit).await;
    let overview = browser.page("/console/overview").await;
    assert!(overview.contains(&format!("code={code}\">{code}</a></td><td>0</td><td>1</td>")), "counted as cut on output: {overview}");
    let found = browser.page(&format!("/console/turns?verdict=refuse&hours=1&code={code}")).await;
    assert!(found.contains(&turn_id) && found.contains("cut on output"), "{found}");
    let other = if code == "S2" { "S3" } else { "S2" };
    assert!(!browser.page(&format!("/console/turns?verdict=refuse&hours=1&code={other}")).await.contains(&turn_id));

    let shown = browser.page(&format!("/console/turns/{turn_id}")).await;
    assert!(shown.contains(&format!("href=\"/console/constitution/{hash}\"")), "the hash links to its document: {shown}");
    let document = browser.page(&format!("/console/constitution/{hash}")).await;
    assert!(document.contains("active now") && document.contains("[[categories]]"), "{document}");
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_eq!(browser.get(&format!("/console/constitution/{unknown}")).await.status(), 404, "a document this tenant was never judged under");
}

#[tokio::test]
async fn an_altered_event_is_reported_as_altered() {
    let app = app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let sse = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 8 })).await;
    let (turn_id, session) = (sse.first("session")["turn_id"].as_str().unwrap().to_owned(), sse.header("x-session-id").to_owned());
    sqlx::query("UPDATE outbox SET payload = replace(payload, '\"seq\":1', '\"seq\":1,\"note\":\"edited\"') WHERE session_id = $1")
        .bind(&session)
        .execute(app.db.pool())
        .await
        .unwrap();

    let mut browser = Browser::new(&app);
    browser.sign_in(&audit).await;
    let verified = browser.page(&format!("/console/turns/{turn_id}/verify")).await;
    assert!(verified.contains("<strong class=\"altered\">altered</strong>"), "{verified}");
}

#[tokio::test]
async fn stored_text_is_shown_as_text_under_a_policy_that_runs_no_other_script() {
    let app = app().await;
    let tenant = unique("tenant-");
    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let hostile = format!("<script>document.title='owned'</script><img src=x onerror=alert(1)><a href=\"javascript:alert(1)\">x</a>{}", "A".repeat(1 << 20));
    let turn = stored_turn(&tenant, &hostile, "</div><script>alert(2)</script>");
    app.store.record(&turn).await.unwrap();

    let mut browser = Browser::new(&app);
    browser.sign_in(&audit).await;
    let response = browser.get(&format!("/console/turns/{}", turn.turn_id)).await;
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let page = response.text().await.unwrap();
    assert!(page.contains("&lt;script&gt;document.title=") && page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!page.contains("<script>document") && !page.contains("<img src=x") && !page.contains("<script>alert(2)"));
    assert!(!page.contains("href=\"javascript:"), "the link is text, not a link");
    assert!(page.len() > 1 << 20, "the whole megabyte is there, as text");
    // The only script is the console's own file.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script src=\"/console/assets/console."));
}

#[tokio::test]
async fn a_chat_key_opens_no_page_and_forms_without_the_session_token_are_refused() {
    let app = app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let mut browser = Browser::new(&app);
    let refused = browser.sign_in(&chat).await;
    assert_eq!(refused.status(), 403);
    assert!(browser.cookie.is_none(), "no session for a chat key");
    let wrong = browser.sign_in("stw_not_a_key").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(location(browser.get("/console/turns").await.headers()), "/console/sign-in", "not signed in: to the sign-in page");

    let audit = app.key(&tenant, &[Capability::Audit]).await;
    browser.sign_in(&audit).await;
    let page = browser.page("/console/overview").await;
    assert_eq!(browser.post("/console/sign-out", &[]).await.status(), 403, "no CSRF token");
    assert_eq!(browser.post("/console/sign-out", &[("csrf", "0".repeat(64).as_str())]).await.status(), 403, "a wrong one");
    let out = browser.post("/console/sign-out", &[("csrf", &csrf_of(&page))]).await;
    assert_eq!((out.status().as_u16(), location(out.headers())), (303, "/console/sign-in"));
    assert_eq!(location(browser.get("/console/overview").await.headers()), "/console/sign-in", "the session ended at sign-out");
}

#[tokio::test]
async fn a_revoked_key_ends_its_sessions_and_an_auditor_reads_only_its_tenant() {
    let app = app().await;
    let (tenant, other) = (unique("tenant-"), unique("tenant-"));
    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let chat_other = app.key(&other, &[Capability::Chat]).await;
    let theirs = app.chat(&chat_other, &json!({ "message": "Say hello to me.", "max_tokens": 8 })).await;
    let their_turn = theirs.first("session")["turn_id"].as_str().unwrap().to_owned();

    let mut browser = Browser::new(&app);
    browser.sign_in(&audit).await;
    assert_eq!(browser.get(&format!("/console/turns/{their_turn}")).await.status(), 404, "another tenant's turn is not there for this key");
    assert!(!browser.page("/console/turns").await.contains(&their_turn));

    let record = app.keys.list().await.unwrap().into_iter().find(|k| k.tenant == tenant).unwrap();
    app.keys.revoke(&record.id).await.unwrap();
    assert_eq!(location(browser.get("/console/overview").await.headers()), "/console/sign-in", "revoked: signed out");
}

#[tokio::test]
async fn a_training_admin_enables_and_disables_training_from_the_console_and_both_are_audited_via_console() {
    let app = app().await;
    let tenant = unique("tenant-");
    let admin = app.key(&tenant, &[Capability::TrainingAdmin]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&admin).await;
    assert_eq!(location(browser.get("/console").await.headers()), "/console/training", "the first page this key may see");
    assert_eq!(browser.get("/console/turns").await.status(), 403, "training:admin does not read the record");

    let page = browser.page("/console/training").await;
    assert!(page.contains("Training mode is <strong class=\"allow\">off</strong>"), "{page}");
    let csrf = csrf_of(&page);
    assert_eq!(browser.post("/console/training/enable", &[("reason", "label a batch"), ("ttl_seconds", "600")]).await.status(), 403, "no CSRF token");
    let enabled = browser.post("/console/training/enable", &[("csrf", &csrf), ("reason", "label a batch"), ("ttl_seconds", "600")]).await.text().await.unwrap();
    let token = enabled.split("<p class=\"mono\">").nth(1).and_then(|rest| rest.split('<').next()).expect("the lock token, shown once").to_owned();
    assert!(enabled.contains("Training mode is <strong class=\"warn\">on</strong>"), "{enabled}");
    let disabled = browser.post("/console/training/disable", &[("csrf", &csrf), ("lock_token", &token)]).await.text().await.unwrap();
    assert!(disabled.contains("Training mode is off.") && disabled.contains("<strong class=\"allow\">off</strong>"), "{disabled}");

    let records: Vec<serde_json::Value> = app.outbox(&app.settings.kafka.training_topic).await.into_iter().filter(|r| r["tenant"] == tenant.as_str()).collect();
    let seen: Vec<(&str, &str)> = records.iter().map(|r| (r["type"].as_str().unwrap(), r["via"].as_str().unwrap())).collect();
    assert_eq!(seen, [("training.enabled", "console"), ("training.disabled", "console")]);
}

#[tokio::test]
async fn an_operator_creates_a_key_whose_secret_is_shown_once_and_revokes_it() {
    let app = app().await;
    let ops = app.key(&unique("ops-"), &[Capability::Ops]).await;
    let tenant = unique("tenant-");
    let mut browser = Browser::new(&app);
    browser.sign_in(&ops).await;
    let page = browser.page("/console/keys").await;
    let csrf = csrf_of(&page);
    assert_eq!(browser.post("/console/keys/create", &[("tenant", tenant.as_str()), ("capability", "chat")]).await.status(), 403, "no CSRF token");

    let created = browser.post("/console/keys/create", &[("csrf", &csrf), ("tenant", &tenant), ("capability", "chat")]).await.text().await.unwrap();
    let secret = created.split("<p class=\"mono\">").nth(1).and_then(|rest| rest.split('<').next()).expect("the secret, shown once").to_owned();
    assert!(secret.starts_with("stw_"), "{secret}");
    let status = |key: String| {
        let http = app.http.clone();
        let url = format!("{}/v1/training/status", app.address);
        async move { http.get(url).bearer_auth(key).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(secret.clone()).await, 200, "the new key works");
    assert!(!browser.page("/console/keys").await.contains(&secret), "never shown again");

    let id = app.keys.list().await.unwrap().into_iter().find(|k| k.tenant == tenant).unwrap().id;
    // Its use is recorded in a task of its own, once a minute at most.
    let mut last_used = None;
    for _ in 0..50 {
        last_used = app.keys.list().await.unwrap().into_iter().find(|k| k.id == id).unwrap().last_used_at;
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_used = last_used.expect("the key's use recorded");
    assert!(browser.page("/console/keys").await.contains(&steward::db::rfc3339(last_used)), "the Keys page shows its last use");
    let revoked = browser.post("/console/keys/revoke", &[("csrf", &csrf), ("id", &id)]).await.text().await.unwrap();
    assert!(revoked.contains("revoked"), "{revoked}");
    assert_eq!(status(secret).await, 401, "revoked");

    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let mut auditor = Browser::new(&app);
    auditor.sign_in(&audit).await;
    assert_eq!(auditor.get("/console/keys").await.status(), 403, "keys are for ops");
}

#[tokio::test]
async fn a_policy_reader_sees_the_active_constitution_its_activations_and_what_changed() {
    let app = app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let admin = app.key(&tenant, &[Capability::PolicyAdmin]).await;
    let reader = app.key(&tenant, &[Capability::PolicyRead]).await;
    // A turn under the default, then the tenant's own document with one more phrase.
    let before = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 4 })).await;
    let previous = before.first("session")["constitution_hash"].as_str().unwrap().to_owned();
    let (document, _) = crate::constitution::candidate_with_phrase(&app, "a riddle about lanterns");
    let put = app.http.put(format!("{}/v1/policy/constitution", app.address)).bearer_auth(&admin).body(document).send().await.unwrap();
    assert_eq!(put.status(), 200);
    let activated: serde_json::Value = put.json().await.unwrap();
    let hash = activated["hash"].as_str().unwrap().to_owned();

    let mut browser = Browser::new(&app);
    browser.sign_in(&reader).await;
    assert_eq!(location(browser.get("/console").await.headers()), "/console/constitution");
    let page = browser.page("/console/constitution").await;
    assert!(page.contains(&hash) && page.contains("policy.activated") && page.contains("a riddle about lanterns"), "{page}");
    assert!(page.contains(&format!("<option value=\"{previous}\"")), "the default the tenant's turns were judged under can be compared");

    let diff = browser.page(&format!("/console/constitution/diff?from={previous}&to={hash}")).await;
    assert!(diff.contains("lines differ") && diff.contains("a riddle about lanterns"), "{diff}");
    let other = format!("sha256:{}", "b".repeat(64));
    assert_eq!(browser.get(&format!("/console/constitution/diff?from={other}&to={hash}")).await.status(), 404, "not a version of this tenant");
    assert_eq!(browser.get("/console/turns").await.status(), 403, "policy:read does not read the record");
}

#[tokio::test]
async fn a_policy_admin_dry_runs_a_candidate_activates_it_by_its_hash_and_the_next_turn_is_judged_under_it() {
    let app = app().await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let admin = app.key(&tenant, &[Capability::PolicyAdmin]).await;
    let greeted = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 4 })).await;
    let greeted_turn = greeted.first("session")["turn_id"].as_str().unwrap().to_owned();
    let (document, code) = crate::constitution::candidate_with_phrase(&app, "hello to me");

    let mut browser = Browser::new(&app);
    browser.sign_in(&admin).await;
    let csrf = csrf_of(&browser.page("/console/constitution").await);
    let tried = browser.post("/console/constitution/dry-run", &[("csrf", &csrf), ("document", &document), ("since", "1h")]).await;
    assert_eq!(tried.status(), 200);
    let tried = tried.text().await.unwrap();
    assert!(tried.contains("allowed → refused") && tried.contains(&greeted_turn), "{tried}");
    assert!(!tried.contains("/console/turns/") && tried.contains("needs the audit capability"), "a link only for a key that may open turns: {tried}");
    assert!(tried.contains(&code));
    let hash = tried.split("name=\"hash\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("the confirmation names the hash").to_owned();

    let wrong =
        browser.post("/console/constitution/activate", &[("csrf", &csrf), ("document", &document), ("hash", &format!("sha256:{}", "0".repeat(64)))]).await;
    assert!(wrong.text().await.unwrap().contains("nothing was activated"));
    let done = browser.post("/console/constitution/activate", &[("csrf", &csrf), ("document", &document), ("hash", &hash)]).await.text().await.unwrap();
    assert!(done.contains(&format!("Active for {tenant}")) && done.contains(&hash), "{done}");

    let next = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 4 })).await;
    assert_eq!(next.first("session")["constitution_hash"], hash.as_str(), "judged under the new hash");
    assert_eq!(next.first("done")["finish_reason"], "refused");
    let records = app.outbox(&app.settings.kafka.policy_topic).await;
    let mine = records.iter().find(|r| r["tenant"] == tenant.as_str() && r["type"] == "policy.activated").expect("recorded");
    assert_eq!((mine["via"].as_str(), mine["hash"].as_str()), (Some("console"), Some(hash.as_str())));
}

#[tokio::test]
async fn an_operator_sees_every_tenants_lock_and_active_constitution_but_no_document_text() {
    let app = app().await;
    let tenant = unique("tenant-");
    let admin = app.key(&tenant, &[Capability::TrainingAdmin]).await;
    let enabled = app.post("/v1/training/enable", Some(&admin), &json!({ "ttl_seconds": 600, "reason": "label a batch" })).await;
    assert_eq!(enabled.status(), 200);
    let ops = app.key(&unique("ops-"), &[Capability::Ops]).await;

    let mut browser = Browser::new(&app);
    browser.sign_in(&ops).await;
    let training = browser.page("/console/training").await;
    let row = training.split("<tr>").find(|row| row.contains(&tenant)).expect("the tenant's row");
    assert!(row.contains(">on<") && row.contains("data-countdown"), "{row}");
    assert!(!training.contains("action=\"/console/training/enable\""), "ops reads locks, it does not take them");
    let constitution = browser.page("/console/constitution").await;
    assert!(constitution.contains("Active per tenant") && constitution.contains(&tenant), "{constitution}");
    assert!(!constitution.contains("The document") && !constitution.contains("<textarea"), "no document text for ops");
}
