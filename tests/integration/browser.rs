//! The dashboard in a real browser: Debian's headless Chromium, driven through chromedriver
//! (both installed by `.ci/test` when missing). Signs in, watches a job appear and fail live,
//! retries it from its page and sees it succeed. Screenshots of the overview and of the job page
//! land in the target directory (`target/tmp/dashboard-*.png`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fantoccini::wait::Wait;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use surrealdb::types::ToSql;

use crate::helpers::*;
use crate::ops::{ADMIN, prepared_runner, serve_ops};
use crate::processes::free_port;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the browser test needs Debian's chromium and chromium-driver: `bash .ci/test` installs them"
        );
        let port = free_port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_until(
            "chromedriver to answer",
            Duration::from_secs(20),
            || async { reqwest::get(&status).await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
        Driver { child, url }
    }

    /// A headless session with the flags Chromium needs on a closed network, as root.
    async fn session(&self, profile: &std::path::Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn wait(browser: &Client) -> Wait<'_> {
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .every(Duration::from_millis(50))
}

fn screenshot_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{name}.png"))
}

/// Signs in: a wrong token is refused with a message, the right one opens the overview, and the
/// token never enters the URL.
async fn sign_in(browser: &Client, url: &str) {
    browser.goto(&format!("{url}/")).await.unwrap();
    let token = wait(browser)
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    token.send_keys("not-the-token").await.unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait(browser)
        .for_element(Locator::XPath(
            "//*[@id='sign-in-error'][normalize-space(.) != '']",
        ))
        .await
        .unwrap();
    token.clear().await.unwrap();
    token.send_keys(ADMIN).await.unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait(browser)
        .for_element(Locator::Css(
            r#"#overview .backend-card[data-backend="api"]"#,
        ))
        .await
        .unwrap();
    assert!(
        browser
            .find(Locator::Id("overview"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    assert_eq!(
        browser
            .execute(
                "return location.href.includes(arguments[0])",
                vec![json!(ADMIN)]
            )
            .await
            .unwrap(),
        json!(false),
        "the token never enters the URL"
    );
}

/// The overview's failed count catches up by itself (one read per refresh, pushed to the page);
/// a screenshot of it goes to the target directory.
async fn see_it_on_the_overview(browser: &Client, url: &str) {
    let overview_shot = {
        browser.goto(&format!("{url}/#/")).await.unwrap();
        wait(browser)
            .for_element(Locator::XPath(
                r#"//*[@data-backend="api"]//*[@data-count="failed"][normalize-space(.)="1"]"#,
            ))
            .await
            .unwrap();
        browser.screenshot().await.unwrap()
    };
    std::fs::write(screenshot_path("overview"), overview_shot).unwrap();
}

/// The job's page shows its error; once the backend is back, Retry (confirmed) ends in success,
/// seen live; a screenshot of the page goes to the target directory.
async fn retry_from_its_page(browser: &Client, url: &str, id: &str, broken: &AtomicBool) {
    let encoded: String =
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string();
    browser
        .goto(&format!("{url}/#/job/{encoded}"))
        .await
        .unwrap();
    wait(browser)
        .for_element(Locator::Css("#job-status.status-failed"))
        .await
        .unwrap();
    let page = browser
        .find(Locator::Id("job"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("the backend is down"),
        "the error's reason is shown: {page}"
    );
    broken.store(false, Ordering::SeqCst);
    browser
        .find(Locator::Id("job-retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait(browser)
        .for_element(Locator::Css("dialog#confirm[open] #confirm-yes"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait(browser)
        .for_element(Locator::Css("#job-status.status-success"))
        .await
        .unwrap();
    std::fs::write(screenshot_path("job"), browser.screenshot().await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_watches_a_job_fail_live_and_retries_it_to_success() {
    let driver = Driver::start().await;
    let broken = Arc::new(AtomicBool::new(true));
    let answer = broken.clone();
    let backend = TestBackend::start(move |_, _| {
        if answer.load(Ordering::SeqCst) {
            Reply::status(500).body("the backend is down")
        } else {
            Reply::ok()
        }
    })
    .await;
    let (store, runner) = prepared_runner(&backend.url, "browser").await;
    let url = serve_ops(&store, &runner, Some(ADMIN)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path()).await;

    sign_in(&browser, &url).await;

    // The jobs page: a job appears and fails while the page is open, without a reload.
    browser.goto(&format!("{url}/#/jobs")).await.unwrap();
    wait(&browser)
        .for_element(Locator::Id("jobs-table"))
        .await
        .unwrap();
    wait(&browser)
        .for_element(Locator::Css("#live-state.live-on"))
        .await
        .unwrap();
    let id = job("/spookify")
        .payload(json!({"id": "watched"}))
        .max_retries(0)
        .insert(&store)
        .await
        .to_sql();
    let failed_row = format!(r#"#jobs-body tr[data-id="{id}"] .status-failed"#);
    wait(&browser)
        .for_element(Locator::Css(&failed_row))
        .await
        .unwrap();

    see_it_on_the_overview(&browser, &url).await;
    retry_from_its_page(&browser, &url, &id, &broken).await;
    assert_eq!(
        row(
            &store,
            &surrealdb::types::RecordId::parse_simple(&id).unwrap()
        )
        .await["status"],
        "success"
    );
    assert_eq!(backend.count(), 2, "one failed call, one retried call");

    browser.close().await.unwrap();
    let _ = stop.send(());
    task.await.unwrap();
}
