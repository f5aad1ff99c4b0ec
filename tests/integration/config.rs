//! Every configuration shape loads; every mistake is named by file, key and problem.

use std::path::Path;
use std::time::Duration;

use sp00ky_job_runner::config::{self, ConfigError, Origin};
use sp00ky_job_runner::job::retry::RetryPolicy;
use sp00ky_job_runner::job::validate::Routes;

use crate::helpers::fixture;

fn env(name: &str) -> Option<String> {
    match name {
        "TEST_BASE_URL" => Some("http://127.0.0.1:4000/api".into()),
        "TEST_TOKEN" => Some("from-env".into()),
        _ => None,
    }
}

fn load_text(text: &str) -> Result<config::Config, ConfigError> {
    config::from_yaml(
        text,
        Origin::File("sp00ky.yml".into()),
        &fixture(""),
        &env,
        RetryPolicy::default(),
    )
}

#[test]
fn current_shape_loads_only_backend_apps() {
    let config =
        config::load(&fixture("sp00ky-current.yml"), &env, RetryPolicy::default()).unwrap();
    assert_eq!(config.backends.len(), 1, "the frontend app is ignored");
    let api = &config.backends[0];
    assert_eq!(api.name, "api");
    assert_eq!(api.table, "job");
    assert_eq!(api.base_url.as_str(), "http://127.0.0.1:4000/api");
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(api.token.as_ref().unwrap()),
        "from-env"
    );
    assert_eq!(api.timeout, Duration::from_secs(5));
    assert!(api.timeout_overridable);
    assert_eq!(api.retry.base, Duration::from_millis(50));
    assert_eq!(
        api.spec.as_deref(),
        Some(fixture("./openapi.yml").as_path())
    );
    assert_eq!(config.database.namespace.as_deref(), Some("main"));
    assert_eq!(config.database.database.as_deref(), Some("example"));
}

#[test]
fn documented_shape_loads_and_skips_non_outbox_backends() {
    let config = config::load(
        &fixture("sp00ky-documented.yml"),
        &env,
        RetryPolicy::default(),
    )
    .unwrap();
    assert_eq!(config.backends.len(), 1, "`mailer` uses method rpc");
    let api = &config.backends[0];
    assert_eq!(api.table, "api_job");
    assert_eq!(api.base_url.as_str(), "http://127.0.0.1:3660/v1");
    assert_eq!(api.timeout, config::limits::TIMEOUT);
    assert!(!api.timeout_overridable);
}

/// A project laid out as the current Sp00ky CLI lays it out (tests/fixtures/sp00ky-project, in
/// the shape of Sp00ky's example project) loads with its spec, resolved relative to the file.
#[test]
fn sp00ky_project_layout_loads() {
    let config = config::load(
        &fixture("sp00ky-project/sp00ky.yml"),
        &|_| None,
        RetryPolicy::default(),
    )
    .unwrap();
    assert_eq!(
        config.backends.len(),
        1,
        "the frontend app is not a backend"
    );
    let worker = &config.backends[0];
    assert_eq!(
        (worker.name.as_str(), worker.table.as_str()),
        ("worker", "job")
    );
    let routes = Routes::load(worker.spec.as_ref().unwrap()).unwrap();
    assert_eq!(routes.describe(), ["POST /summarize (validated)"]);
}

#[test]
fn env_json_shape_loads() {
    let json = r#"[{"name":"api","table":"job","base_url":"http://localhost:3660","auth_token":"t0k","timeout":30,"timeout_overridable":true},
                  {"name":"billing","table":"billing_job","base_url":"https://billing.internal/v2","auth_token":"","timeout":10,"timeout_overridable":false}]"#;
    let config = config::from_env_json(json, &env, RetryPolicy::default()).unwrap();
    assert_eq!(config.backends.len(), 2);
    assert_eq!(config.backends[0].timeout, Duration::from_secs(30));
    assert!(config.backends[0].spec.is_none());
    assert!(
        config.backends[1].token.is_none(),
        "an empty token means no auth"
    );
    // The process environment is consulted through `load`, which prefers SPKY_JOB_CONFIG.
    let via_load = config::load(
        Path::new("/nonexistent/sp00ky.yml"),
        &|name| (name == "SPKY_JOB_CONFIG").then(|| json.to_string()),
        RetryPolicy::default(),
    )
    .unwrap();
    assert_eq!(via_load.backends.len(), 2);
    assert_eq!(via_load.origin, Origin::Env("SPKY_JOB_CONFIG"));
}

fn backend_yaml(fields: &str) -> String {
    format!("apps:\n  api:\n    type: backend\n{fields}")
}

const GOOD: &str = "    spec: ./openapi.yml\n    baseUrl: http://localhost:1\n    method:\n      type: outbox\n      table: job\n";

/// Configuration mistakes in a backend's keys: `(sp00ky.yml text, the key the error names,
/// what it says)`.
fn backend_error_cases() -> Vec<(String, &'static str, &'static str)> {
    vec![
        (
            backend_yaml(
                "    spec: ./openapi.yml\n    method:\n      type: outbox\n      table: job\n",
            ),
            "apps.api.baseUrl",
            "is required",
        ),
        (
            backend_yaml(
                "    spec: ./openapi.yml\n    baseUrl: not a url\n    method:\n      type: outbox\n      table: job\n",
            ),
            "apps.api.baseUrl",
            "is not a URL",
        ),
        (
            backend_yaml(
                "    spec: ./openapi.yml\n    baseUrl: ftp://x/\n    method:\n      type: outbox\n      table: job\n",
            ),
            "apps.api.baseUrl",
            "http:// or https://",
        ),
        (
            backend_yaml(
                "    spec: ./openapi.yml\n    baseUrl: ${NOT_SET_ANYWHERE}\n    method:\n      type: outbox\n      table: job\n",
            ),
            "apps.api.baseUrl",
            "NOT_SET_ANYWHERE is not set",
        ),
        (
            backend_yaml(
                "    spec: ./openapi.yml\n    baseUrl: http://x\n    method:\n      type: outbox\n      table: job; DELETE x\n",
            ),
            "apps.api.method.table",
            "letters, digits and underscores",
        ),
        (
            backend_yaml(&format!("{GOOD}    deploy:\n      timeout: 0\n")),
            "apps.api.deploy.timeout",
            "between 1 and 3600",
        ),
        (
            backend_yaml(&format!("{GOOD}    deploy:\n      timeout: 9999\n")),
            "apps.api.deploy.timeout",
            "between 1 and 3600",
        ),
        (
            backend_yaml(&format!(
                "{GOOD}    deploy:\n      timeoutOverridable: maybe\n"
            )),
            "apps.api.deploy.timeoutOverridable",
            "true or false",
        ),
        (
            backend_yaml(&format!("{GOOD}    auth:\n      type: token\n")),
            "apps.api.auth.token",
            "is required",
        ),
        (
            backend_yaml(&format!("{GOOD}    auth:\n      type: oauth\n")),
            "apps.api.auth.type",
            "unknown auth type",
        ),
        (
            backend_yaml(
                "    baseUrl: http://x\n    method:\n      type: outbox\n      table: job\n",
            ),
            "apps.api.spec",
            "is required",
        ),
    ]
}

/// Mistakes in the file's shape, and values outside their ranges.
fn shape_and_range_error_cases() -> Vec<(String, &'static str, &'static str)> {
    vec![
        ("apps: [1, 2]\n".into(), "apps", "expected a mapping"),
        (
            "- just\n- a list\n".into(),
            "(top level)",
            "expected a mapping",
        ),
        (
            format!("{}  other:\n    type: backend\n{GOOD}", backend_yaml(GOOD)),
            "other",
            "already drained by backend `api`",
        ),
        (
            backend_yaml(&format!(
                "{GOOD}    retry:\n      maxDelayMs: 99999999999999\n"
            )),
            "apps.api.retry.maxDelayMs",
            "outside the allowed range",
        ),
        (
            backend_yaml(&format!("{GOOD}    limits:\n      payloadBytes: 10\n")),
            "apps.api.limits.payloadBytes",
            "outside the allowed range 1024 to",
        ),
        (
            backend_yaml(&format!("{GOOD}    limits:\n      maxRetries: 5000\n")),
            "apps.api.limits.maxRetries",
            "outside the allowed range 0 to 1000",
        ),
        (
            backend_yaml(&format!(
                "{GOOD}    auth:\n      type: token\n      token: \"s3cret-token\\n\"\n"
            )),
            "apps.api.auth.token",
            "character 13 of 13 is a control character (a stray newline?)",
        ),
        (
            backend_yaml(&format!(
                "{GOOD}    limits:\n      perUser:\n        pending: 0\n"
            )),
            "apps.api.limits.perUser.pending",
            "outside the allowed range 1 to",
        ),
        (
            backend_yaml(&format!(
                "{GOOD}    limits:\n      perUser:\n        pendng: 5\n"
            )),
            "apps.api.limits.perUser.pendng",
            "unknown key; perUser takes `pending`",
        ),
        (
            backend_yaml(&format!("{GOOD}    limits:\n      payloadByte: 2048\n")),
            "apps.api.limits.payloadByte",
            "unknown key; limits takes",
        ),
        (
            backend_yaml(&format!(
                "{GOOD}    schedules:\n      - name: s\n        schedule: rate(99999999999999 days)\n        path: /spookify\n"
            )),
            "apps.api.schedules[0].schedule",
            "at most 366 days",
        ),
    ]
}

/// Each mistake names the file, the key and what is wrong.
#[test]
fn config_errors_name_file_key_and_problem() {
    let mut cases = backend_error_cases();
    cases.extend(shape_and_range_error_cases());
    for (text, key, message) in cases {
        let err = load_text(&text).expect_err(&text);
        assert_eq!(err.origin, Origin::File("sp00ky.yml".into()), "{text}");
        assert_eq!(err.key, key, "{text}\n=> {err}");
        assert!(err.message.contains(message), "{text}\n=> {err}");
        assert!(
            err.to_string().starts_with(&format!("sp00ky.yml: {key}: ")),
            "{err}"
        );
    }
}

#[test]
fn yaml_syntax_errors_give_line_and_column() {
    let err = load_text("apps:\n  api:\n    type: backend\n   baseUrl: [unclosed\n").unwrap_err();
    assert!(err.key.starts_with("line "), "{err}");
    assert!(err.key.contains("column"), "{err}");
    assert!(err.message.contains("YAML syntax error"), "{err}");
}

#[test]
fn env_json_errors_name_the_variable_and_entry() {
    let err = config::from_env_json("{not json", &env, RetryPolicy::default()).unwrap_err();
    assert_eq!(err.origin, Origin::Env("SPKY_JOB_CONFIG"));
    assert!(err.key.starts_with("line 1"), "{err}");
    let err = config::from_env_json(
        r#"[{"name":"a","table":"job"}]"#,
        &env,
        RetryPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err.key, "[0].base_url");
    assert_eq!(
        err.to_string(),
        "environment variable SPKY_JOB_CONFIG: [0].base_url: is required"
    );
}

#[test]
fn missing_file_is_named() {
    let err = config::load(
        Path::new("/nonexistent/sp00ky.yml"),
        &|_| None,
        RetryPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err.origin, Origin::File("/nonexistent/sp00ky.yml".into()));
    assert!(err.message.contains("cannot read"), "{err}");
}

#[test]
fn spec_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.yml");
    std::fs::write(&path, "openapi: 2.0\npaths: {}\n").unwrap();
    let err = Routes::load(&path).err().expect("2.0 is refused");
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(err.key, "openapi");
}

/// The current CLI writes a docker form's `port` as a string as often as a number.
#[test]
fn a_docker_port_may_be_a_string_or_a_number() {
    for port in ["\"8080\"", "8080"] {
        let text = backend_yaml(&format!(
            "{GOOD}    dev:\n      type: docker\n      file: ./Dockerfile\n      port: {port}\n"
        ));
        let config = load_text(&text).unwrap();
        let dev = config.backends[0].dev.as_ref().unwrap();
        match &dev.command {
            config::DevCommand::Docker { port, .. } => assert_eq!(*port, Some(8080)),
            other => panic!("{other:?}"),
        }
        assert_eq!(dev.label, "app.api.dev");
    }
}

#[test]
fn retention_is_off_unless_set_and_its_durations_are_checked() {
    let base = "apps:\n  api:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: http://127.0.0.1:4000\n    method:\n      type: outbox\n      table: job\n";
    let off = load_text(base).unwrap();
    assert!(!off.backends[0].retention.is_on());
    let on = load_text(&format!(
        "{base}    retention:\n      success: 7d\n      failed: 30d\n"
    ))
    .unwrap();
    assert_eq!(
        on.backends[0].retention,
        config::Retention {
            success: Some(Duration::from_secs(7 * 86_400)),
            failed: Some(Duration::from_secs(30 * 86_400)),
        }
    );
    for (block, key, expected) in [
        (
            "success: soon",
            "apps.api.retention.success",
            "not a duration",
        ),
        (
            "success: 10s",
            "apps.api.retention.success",
            "outside the allowed range",
        ),
        ("pending: 7d", "apps.api.retention.pending", "unknown key"),
    ] {
        let err = load_text(&format!("{base}    retention:\n      {block}\n")).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn per_backend_concurrency_and_rate_limits_are_read_and_checked() {
    let base = "apps:\n  api:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: http://127.0.0.1:4000\n    method:\n      type: outbox\n      table: job\n";
    let plain = load_text(base).unwrap();
    assert_eq!(
        (plain.backends[0].concurrency, plain.backends[0].rate_limit),
        (None, None)
    );
    let set = load_text(&format!("{base}    concurrency: 4\n    rateLimit: 10/s\n")).unwrap();
    assert_eq!(set.backends[0].concurrency, Some(4));
    assert_eq!(
        set.backends[0].rate_limit,
        Some(config::RateLimit {
            calls: 10,
            per: Duration::from_secs(1)
        })
    );
    let per_minute = load_text(&format!("{base}    rateLimit: 600/m\n")).unwrap();
    assert_eq!(
        per_minute.backends[0].rate_limit.unwrap().per,
        Duration::from_secs(60)
    );
    for (line, key, expected) in [
        (
            "concurrency: 0",
            "apps.api.concurrency",
            "outside the allowed range",
        ),
        (
            "rateLimit: 10/fortnight",
            "apps.api.rateLimit",
            "unknown unit",
        ),
        ("rateLimit: 0/s", "apps.api.rateLimit", "not a rate"),
        ("rateLimit: lots", "apps.api.rateLimit", "not a rate"),
    ] {
        let err = load_text(&format!("{base}    {line}\n")).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(err.to_string().contains(expected), "{line}: {err}");
    }
}
