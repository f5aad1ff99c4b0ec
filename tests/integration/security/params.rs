//! Values that fill a route's `{param}` are untrusted: each lands as exactly one segment of the
//! declared route under `baseUrl`, or the job fails (`route`) with no request. And specs are read
//! as YAML 1.2, so a property named `n` is the string "n".

use serde_json::json;
use sp00ky_job_runner::job::validate::Routes;

use super::WAIT;
use crate::helpers::*;

/// Values that must never fill a route parameter.
const HOSTILE: &[&str] = &[
    ".\t.",
    "\t..",
    "..\t",
    ".\r\n.",
    ".\n.",
    ".\0.",
    ".\u{b}.",
    ".\u{c}.",
    "..",
    ".",
    "%2e",
    "%2e%2e",
    "%2E.",
    ".%2E",
    "%252e%252e",
    "..\\",
    "..%5c",
    "../../api-internal",
    "..%2Fapi-internal",
    "..%2fsummary",
    "．．",
    "\u{2024}\u{2024}",
    "",
    " ",
    "\u{200B}",
    "..;x",
    ";x",
    "%00",
    "a\u{7f}b",
    "\u{85}",
];

/// Odd but harmless values: each arrives as one encoded segment.
const ODD: &[&str] = &[
    "a;b",
    "a/b",
    "a\\b",
    "?x",
    "#x",
    "%41",
    "café",
    "-api-internal",
];

/// 30 hostile values against a `baseUrl` with a path of its own: the backend counts that no
/// request leaves `/api/threads/<one segment>/summary`; the harmless odd values arrive as one
/// encoded segment that decodes back to the value.
#[tokio::test]
async fn parameter_values_stay_one_segment_of_the_declared_route() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &format!("{}/api", backend.url)).await;

    let mut refused = Vec::new();
    for value in HOSTILE {
        let row = job("/threads/{id}/summary").payload(json!({"id": value}));
        refused.push(row.max_retries(0).insert(&store).await);
    }
    let mut accepted = Vec::new();
    for value in ODD {
        let row = job("/threads/{id}/summary").payload(json!({"id": value}));
        accepted.push(row.max_retries(0).insert(&store).await);
    }
    for (value, id) in HOSTILE.iter().zip(&refused) {
        let done = wait_final(&store, id, WAIT).await;
        assert_eq!(done["status"], "failed", "{value:?}: {done}");
        assert_eq!(done["errors"][0]["kind"], "route", "{value:?}: {done}");
        assert_eq!(done["retries"], 0, "{value:?}");
    }
    for (value, id) in ODD.iter().zip(&accepted) {
        assert_eq!(
            wait_final(&store, id, WAIT).await["status"],
            "success",
            "{value:?}"
        );
    }
    runner.stop().await;
    let requests = backend.requests();
    assert_eq!(requests.len(), ODD.len(), "{requests:?}");
    let mut arrived = arrived_parameters(&backend.requests());
    arrived.sort();
    let mut expected: Vec<String> = ODD.iter().map(|v| v.to_string()).collect();
    expected.sort();
    assert_eq!(arrived, expected);
}

/// Every YAML 1.1 boolean spelling as property names, `required` entries and enum values: the
/// spec loads (YAML 1.2 reads them as strings) and payloads validate with them.
#[test]
fn yaml_1_1_boolean_words_in_a_spec_are_plain_strings() {
    let words = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let properties: String = words
        .iter()
        .map(|w| format!("                {w}:\n                  type: string\n                  enum: [{w}, on, off]\n"))
        .collect();
    let spec = format!(
        "openapi: 3.0.3\ninfo: {{title: t, version: '1'}}\npaths:\n  /vote:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema:\n              type: object\n              required: [{}]\n              properties:\n{properties}      responses:\n        '200': {{description: ok}}\n",
        words.join(", ")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.yml");
    std::fs::write(&path, spec).unwrap();
    let routes = Routes::load(&path).expect("a YAML 1.2 spec with YAML 1.1 words loads");
    let base = url::Url::parse("http://127.0.0.1:9/").unwrap();

    let payload: serde_json::Map<String, serde_json::Value> =
        words.iter().map(|w| (w.to_string(), json!(w))).collect();
    routes
        .prepare(&base, "/vote", json!(payload))
        .expect("each word validates as its own enum value");
    let mut missing = payload.clone();
    missing.remove("n");
    let failure = routes.prepare(&base, "/vote", json!(missing)).unwrap_err();
    assert!(failure.reason.contains("\"n\""), "{}", failure.reason);
    let mut wrong = payload;
    wrong.insert("yes".into(), json!(true));
    let failure = routes.prepare(&base, "/vote", json!(wrong)).unwrap_err();
    assert!(failure.reason.contains("/yes"), "{}", failure.reason);
}

/// The parameter each request carried, decoded, after checking that its target is exactly
/// `/api/threads/<one segment>/summary`.
fn arrived_parameters(requests: &[Recorded]) -> Vec<String> {
    let mut arrived: Vec<String> = Vec::new();
    for request in requests {
        let segments: Vec<&str> = request.target.split('/').collect();
        assert_eq!(segments.len(), 5, "{}", request.target);
        assert_eq!(
            (segments[0], segments[1], segments[2], segments[4]),
            ("", "api", "threads", "summary"),
            "{}",
            request.target
        );
        let value = percent_encoding::percent_decode_str(segments[3])
            .decode_utf8()
            .unwrap();
        arrived.push(value.into_owned());
    }
    arrived
}
