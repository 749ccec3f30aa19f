//! The console in a real browser: Debian's headless Chromium, driven over the
//! W3C WebDriver protocol through its `chromedriver`, against Steward on a
//! real socket. Screenshots of each page go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use steward::identity::Capability;

use crate::helpers::{manifest_dir, spawn_app_with, unique, Storage, TestApp};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A `chromedriver` of its own on a free port (killed with this value), and one headless Chromium session.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: String,
    _process: tokio::process::Child,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let binary = std::env::var("STEWARD_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let process = tokio::process::Command::new(&binary)
            .arg(format!("--port={port}"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} (chromium-driver; scripts/test.sh installs it): {e}"));
        let driver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{driver}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"] } } } });
        let answer: Value = http.post(format!("{driver}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {answer}")).to_owned();
        Self { http, session, driver, _process: process }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}/session/{}{path}", self.driver, self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self.call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css }))).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    /// What a script in the page returns.
    async fn script(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    async fn text(&self) -> String {
        self.script("return document.body.innerText").await.as_str().unwrap_or_default().to_owned()
    }

    /// The page's text once it contains `needle` (a click's navigation may
    /// still be under way when the click returns), or as it is after 10 s.
    async fn shows(&self, needle: &str) -> String {
        let mut text = String::new();
        for _ in 0..100 {
            text = self.text().await;
            if text.contains(needle) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        text
    }

    /// Fails unless the page comes to show `needle` (see [`Browser::shows`]).
    async fn expect(&self, needle: &str, why: &str) {
        let text = self.shows(needle).await;
        assert!(text.contains(needle), "{why}: {needle:?} not in the page:\n{text}");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let dir: PathBuf = manifest_dir().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.png")),
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_else(|| panic!("no screenshot: {png}"))).unwrap(),
        )
        .unwrap();
    }

    /// Clicks `css` and returns once the page it leads to has loaded: a
    /// click returns when the click is dispatched, and a navigation begun
    /// next (`go`) would cancel the form's post, cookie and all.
    async fn click_through(&self, css: &str) {
        self.script("window.steward_before_click = true").await;
        self.click(css).await;
        for _ in 0..100 {
            if self.script("return window.steward_before_click === undefined && document.readyState === 'complete'").await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("clicking {css} led to no new page within 10 s");
    }

    async fn sign_in(&self, app: &TestApp, key: &str) {
        self.go(&format!("{}/console", app.address)).await;
        self.type_into("#key", key).await;
        self.click_through("button[type=submit]").await;
    }
}

#[tokio::test]
async fn in_a_browser_an_auditor_signs_in_finds_a_streamed_turn_and_verifies_its_record() {
    let app = spawn_app_with(Storage::Sqlite, |_| {}).await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let audit = app.key(&tenant, &[Capability::Audit, Capability::Ops]).await;
    let sse = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 8 })).await;
    let turn_id = sse.first("session")["turn_id"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    browser.sign_in(&app, &audit).await;
    browser.expect("Turns, last hour", "signed in, on the overview").await;
    browser.screenshot("overview").await;
    browser.go(&format!("{}/console/turns", app.address)).await;
    browser.screenshot("turns").await;
    browser.click(&format!("a[href='/console/turns/{turn_id}']")).await;
    let page = browser.shows("turn.completed").await;
    assert!(page.contains("Say hello to me.") && page.contains("turn.completed"), "{page}");
    browser.screenshot("turn").await;
    browser.click("a.button").await;
    browser.expect("is intact.", "the record checked").await;
    browser.screenshot("verify").await;
}

#[tokio::test]
async fn in_a_browser_hostile_stored_text_runs_nothing() {
    let app = spawn_app_with(Storage::Sqlite, |_| {}).await;
    let tenant = unique("tenant-");
    let audit = app.key(&tenant, &[Capability::Audit]).await;
    let hostile = format!(
        "<script>window.ran = 1; document.title = 'owned'</script><img src=x onerror=\"window.ran = 2\"><a id=js href=\"javascript:window.ran=3\">link</a>{}",
        // The megabyte is the HTTP test's (console.rs); here, what the browser does with the markup.
        "A".repeat(64 << 10)
    );
    let turn = crate::console::stored_turn(&tenant, &hostile, "<svg onload=\"window.ran = 4\"></svg>");
    app.store.record(&turn).await.unwrap();

    let browser = Browser::start().await;
    browser.sign_in(&app, &audit).await;
    browser.go(&format!("{}/console/turns/{}", app.address, turn.turn_id)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(browser.script("return window.ran === undefined").await, json!(true), "no stored script ran");
    assert_eq!(browser.script("return document.title").await, json!("Turn · Steward"));
    assert_eq!(browser.script("return document.querySelectorAll('main img, main svg, main script, main a#js').length").await, json!(0), "markup stayed text");
    browser.expect("<script>window.ran = 1;", "shown as text").await;
    browser.screenshot("hostile-text").await;
}

#[tokio::test]
async fn in_a_browser_a_chat_key_is_turned_away_at_sign_in() {
    let app = spawn_app_with(Storage::Sqlite, |_| {}).await;
    let chat = app.key(&unique("tenant-"), &[Capability::Chat]).await;
    let browser = Browser::start().await;
    browser.sign_in(&app, &chat).await;
    browser.expect("This key opens no page of the console", "refused at sign-in").await;
    browser.go(&format!("{}/console/turns", app.address)).await;
    assert_eq!(browser.script("return location.pathname").await, json!("/console/sign-in"), "not signed in");
}

#[tokio::test]
async fn in_a_browser_a_training_admin_enables_and_disables_training() {
    let app = spawn_app_with(Storage::Sqlite, |_| {}).await;
    let tenant = unique("tenant-");
    let admin = app.key(&tenant, &[Capability::TrainingAdmin]).await;
    let browser = Browser::start().await;
    browser.sign_in(&app, &admin).await;
    browser.expect("Training mode is off", "on the training page").await;
    browser.type_into("form[action='/console/training/enable'] input[name=reason]", "label a batch").await;
    browser.click("form[action='/console/training/enable'] button").await;
    // The token is read once the page after the click is there.
    browser.expect("Training mode is on", "enabled").await;
    let token = browser.script("return document.querySelector('div.card p.mono').textContent").await.as_str().unwrap().to_owned();
    let left = || async { browser.script("return Number(document.querySelector('[data-countdown]').textContent)").await.as_i64().unwrap() };
    let before = left().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(left().await < before, "the expiry counts down");
    browser.screenshot("training").await;
    browser.type_into("form[action='/console/training/disable'] input[name=lock_token]", &token).await;
    browser.click("form[action='/console/training/disable'] button").await;
    browser.expect("Training mode is off.", "disabled").await;
}

#[tokio::test]
async fn in_a_browser_a_policy_admin_dry_runs_and_activates_a_candidate_and_the_next_turn_is_judged_under_it() {
    let app = spawn_app_with(Storage::Sqlite, |_| {}).await;
    let tenant = unique("tenant-");
    let chat = app.key(&tenant, &[Capability::Chat]).await;
    let admin = app.key(&tenant, &[Capability::PolicyAdmin]).await;
    app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 4 })).await;
    let (document, _) = crate::constitution::candidate_with_phrase(&app, "hello to me");

    let browser = Browser::start().await;
    browser.sign_in(&app, &admin).await;
    browser.expect("Try a candidate", "on the constitution page").await;
    // The candidate is uploaded as a file, which the page reads into its form, then submitted by the button.
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), &document).unwrap();
    browser.type_into("input[type=file][data-load-into=document]", &file.path().display().to_string()).await;
    let mut loaded = Value::Null;
    for _ in 0..50 {
        loaded = browser.script("return document.querySelector('textarea[name=document]').value").await;
        if loaded == document.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(loaded, document.as_str(), "the file's text is in the form");
    browser.click("form[action='/console/constitution/dry-run'] button").await;
    let report = browser.shows("allowed → refused").await;
    assert!(report.contains("allowed → refused"), "{report}");
    browser.screenshot("dry-run").await;
    browser.click("form[action='/console/constitution/activate'] button").await;
    let activated = browser.shows(&format!("Active for {tenant}")).await;
    assert!(activated.contains(&format!("Active for {tenant}")), "{activated}");
    let hash = activated
        .split("Active for ")
        .nth(1)
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .trim_end_matches('.')
        .to_owned();

    let next = app.chat(&chat, &json!({ "message": "Say hello to me.", "max_tokens": 4 })).await;
    assert_eq!(next.first("session")["constitution_hash"], hash.as_str(), "judged under the activated hash");
    assert_eq!(next.first("done")["finish_reason"], "refused");
}
