//! Step 3 of a job's life: **validate** the row against its backend's OpenAPI spec and turn it
//! into a request that can only go where the spec allows.
//!
//! A spec becomes a [`Routes`] table when the configuration loads: for each declared path
//! template, its method and a compiled JSON Schema of its `application/json` request body. A
//! row's `path` must be one of those templates, letter for letter; anything else fails with kind
//! `route` before any request is made. Template parameters (`/threads/{id}`) are filled from the
//! payload field of the same name; [`url_guard`] refuses values that are or could be read as
//! dot or empty segments, encodes the rest as single segments under the backend's `baseUrl`, and
//! checks the finished URL segment by segment, so no value can add a segment, climb out with
//! `..`, or change the host.
//!
//! No maintained crate parses both OpenAPI 3.0 and 3.1 (`openapiv3` reads 3.0 only, `oas3` reads
//! 3.1 only), and the runner needs four fields of the document, so it reads them from the JSON
//! tree. Schemas are compiled with `jsonschema`: draft 2020-12 for 3.1 (its dialect), draft 4
//! for 3.0 with `nullable: true` rewritten to a `null` type. Local `$ref`s resolve against the
//! whole document, so recursive schemas work; remote references are not fetched.

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::Validator;
use reqwest::Method;
use serde_json::Value;
use url::Url;

use crate::job::failure::{Failure, FailureKind, excerpt};
use crate::job::url_guard::{self, Segment};

/// How much of an untrusted path an error message quotes.
const PATH_EXCERPT: usize = 200;

/// The methods the runner will call, in the order it prefers when a path declares several
/// (Sp00ky only generates `POST` routes).
const METHODS: [&str; 5] = ["post", "put", "patch", "delete", "get"];

/// A spec that cannot be used. Loading stops: a backend without a usable spec would fail every job.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct SpecError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// One callable route.
pub struct Route {
    pub method: Method,
    /// The template split on `/`: literal segments and `{param}` names.
    segments: Vec<Segment>,
    /// `None` when the operation declares no JSON request body.
    body_schema: Option<Validator>,
}

/// The routes of one backend; `None` inside [`Routes::Unchecked`] means the backend has no spec.
pub enum Routes {
    /// Paths the spec declares, by template.
    Spec(BTreeMap<String, Route>),
    /// No spec (`SPKY_JOB_CONFIG`): any plain absolute path, payload unvalidated.
    Unchecked,
}

/// What the call step needs: where to send what.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub body: Value,
}

impl Routes {
    /// Reads and compiles the spec at `path`.
    pub fn load(path: &Path) -> Result<Routes, SpecError> {
        let file = path.display().to_string();
        let err = |key: &str, message: String| SpecError {
            file: file.clone(),
            key: key.to_string(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("(file)", format!("cannot read the OpenAPI spec: {e}")))?;
        let doc: Value = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| {
                err(
                    &format!("line {}, column {}", e.line(), e.column()),
                    format!("not valid JSON: {e}"),
                )
            })?
        } else {
            crate::config::yaml::parse(&text)
                .map_err(|e| err("(syntax)", format!("not valid YAML: {e}")))?
        };
        Routes::from_document(doc).map_err(|(key, message)| err(&key, message))
    }

    /// Builds the table from a parsed document; errors are `(key, message)`.
    pub fn from_document(doc: Value) -> Result<Routes, (String, String)> {
        let version = doc.get("openapi").and_then(Value::as_str).ok_or_else(|| {
            (
                "openapi".to_string(),
                "missing: expected an OpenAPI 3.0 or 3.1 document".to_string(),
            )
        })?;
        let is_31 = if version.starts_with("3.1") {
            true
        } else if version.starts_with("3.0") {
            false
        } else {
            return Err((
                "openapi".into(),
                format!("version {version:?} is not supported; expected 3.0.x or 3.1.x"),
            ));
        };
        let paths = match doc.get("paths") {
            Some(Value::Object(paths)) => paths.clone(),
            None | Some(Value::Null) => Default::default(),
            Some(_) => return Err(("paths".into(), "expected a mapping of paths".into())),
        };
        // Schemas are compiled against the whole document, so `#/components/...` resolves.
        let mut schema_root = doc.clone();
        if !is_31 {
            rewrite_nullable(&mut schema_root);
        }
        let mut routes = BTreeMap::new();
        for (template, item) in &paths {
            let key = format!("paths.{template}");
            let item = resolve(&doc, item).map_err(|m| (key.clone(), m))?;
            let Some((method_name, operation)) =
                METHODS.iter().find_map(|m| item.get(*m).map(|op| (*m, op)))
            else {
                continue;
            };
            let segments = parse_template(template).map_err(|m| (key.clone(), m))?;
            let op_key = format!("{key}.{method_name}");
            let operation = resolve(&doc, operation).map_err(|m| (op_key.clone(), m))?;
            let body_schema = match operation.get("requestBody") {
                None => None,
                Some(body) => {
                    let body_key = format!("{op_key}.requestBody");
                    let pointer = body_pointer(
                        &doc,
                        body,
                        &format!("/paths/{}/{method_name}/requestBody", escape(template)),
                    )
                    .map_err(|m| (body_key.clone(), m))?;
                    match pointer {
                        None => None,
                        Some(pointer) => Some(
                            compile(&schema_root, &pointer, is_31).map_err(|m| (body_key, m))?,
                        ),
                    }
                }
            };
            let method = Method::from_bytes(method_name.to_ascii_uppercase().as_bytes())
                .expect("listed methods are valid");
            routes.insert(
                template.clone(),
                Route {
                    method,
                    segments,
                    body_schema,
                },
            );
        }
        Ok(Routes::Spec(routes))
    }

    /// The declared templates, for `check` to print.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Routes::Spec(routes) => routes
                .iter()
                .map(|(template, route)| {
                    let schema = if route.body_schema.is_some() {
                        "validated"
                    } else {
                        "no body schema"
                    };
                    format!("{} {template} ({schema})", route.method)
                })
                .collect(),
            Routes::Unchecked => vec!["(no spec: any plain path, payload not validated)".into()],
        }
    }

    /// Checks `path` and `payload` and builds the request under `base`. Every failure is
    /// permanent: the same row would fail the same way again.
    pub fn prepare(&self, base: &Url, path: &str, payload: Value) -> Result<Request, Failure> {
        match self {
            Routes::Spec(routes) => {
                let route = routes.get(path).ok_or_else(|| {
                    Failure::new(
                        FailureKind::Route,
                        format!(
                            "path {:?} is not a route of the backend's OpenAPI spec",
                            excerpt(path, PATH_EXCERPT)
                        ),
                    )
                })?;
                if let Some(schema) = &route.body_schema {
                    check_payload(schema, path, &payload)?;
                }
                // A missing or ill-typed parameter is the payload's fault (`validation`); a value
                // that cannot be one segment of the route is a `route` failure.
                for segment in &route.segments {
                    if let Segment::Param(name) = segment {
                        url_guard::param_text(&payload, name)
                            .map_err(|reason| Failure::new(FailureKind::Validation, reason))?;
                    }
                }
                Ok(Request {
                    method: route.method.clone(),
                    url: route_url(base, &route.segments, &payload)?,
                    body: payload,
                })
            }
            Routes::Unchecked => {
                let segments: Vec<Segment> = plain_path_segments(path)?
                    .into_iter()
                    .map(Segment::Literal)
                    .collect();
                Ok(Request {
                    method: Method::POST,
                    url: route_url(base, &segments, &Value::Null)?,
                    body: payload,
                })
            }
        }
    }
}

/// The most validation messages one failure quotes, and the most characters of each: a
/// message quotes the offending value, which is untrusted and may be huge.
const MAX_MESSAGES: usize = 10;
const MESSAGE_EXCERPT: usize = 200;

/// Validates `payload` against the route's request schema; the failure quotes a bounded number
/// of bounded, escaped messages.
fn check_payload(schema: &Validator, path: &str, payload: &Value) -> Result<(), Failure> {
    let mut messages = Vec::new();
    let mut more = false;
    // Stops at the first message past the limit: counting them all could take as long as the
    // payload is big.
    for error in schema.iter_errors(payload) {
        if messages.len() == MAX_MESSAGES {
            more = true;
            break;
        }
        let at = error.instance_path().to_string();
        let text = if at.is_empty() {
            error.to_string()
        } else {
            format!("{at}: {error}")
        };
        messages.push(excerpt(&text, MESSAGE_EXCERPT));
    }
    if messages.is_empty() {
        return Ok(());
    }
    if more {
        messages.push("and more".into());
    }
    Err(Failure::new(
        FailureKind::Validation,
        format!(
            "payload does not match the request schema of {path}: {}",
            messages.join("; ")
        ),
    ))
}

/// Follows a local `$ref` (`#/...`) once; other references are refused.
fn resolve<'d>(doc: &'d Value, value: &'d Value) -> Result<&'d Value, String> {
    match value.get("$ref").and_then(Value::as_str) {
        None => Ok(value),
        Some(reference) => {
            let pointer = reference.strip_prefix('#').ok_or_else(|| {
                format!("only local references (#/...) are supported, got {reference:?}")
            })?;
            doc.pointer(pointer)
                .ok_or_else(|| format!("reference {reference:?} points at nothing"))
        }
    }
}

/// The JSON pointer of the `application/json` schema of a request body, following a `$ref`d
/// request body. `None` when the body has no JSON content.
fn body_pointer(doc: &Value, body: &Value, own_pointer: &str) -> Result<Option<String>, String> {
    let (body, pointer) = match body.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let target = resolve(doc, body)?;
            (target, reference.trim_start_matches('#').to_string())
        }
        None => (body, own_pointer.to_string()),
    };
    let Some(content) = body.get("content").and_then(Value::as_object) else {
        return Ok(None);
    };
    let media = content
        .keys()
        .find(|k| k.as_str() == "application/json")
        .or_else(|| content.keys().find(|k| k.starts_with("application/json")));
    Ok(match media {
        Some(media) if content[media].get("schema").is_some() => {
            Some(format!("{pointer}/content/{}/schema", escape(media)))
        }
        _ => None,
    })
}

fn compile(root: &Value, pointer: &str, is_31: bool) -> Result<Validator, String> {
    let mut schema = root.clone();
    let Value::Object(map) = &mut schema else {
        return Err("the document is not a mapping".into());
    };
    // The pointer becomes a URI fragment: characters like `{` of `/threads/{id}` must be encoded.
    let fragment =
        percent_encoding::utf8_percent_encode(pointer, crate::job::url_guard::URL_UNSAFE);
    map.insert("$ref".into(), Value::String(format!("#{fragment}")));
    // Keywords of the OpenAPI document itself would otherwise be read as schema keywords.
    for key in ["$schema", "$id", "id"] {
        map.remove(key);
    }
    let built = if is_31 {
        jsonschema::draft202012::new(&schema)
    } else {
        jsonschema::draft4::new(&schema)
    };
    built.map_err(|e| format!("the request schema does not compile: {e}"))
}

/// OpenAPI 3.0's `nullable: true` is not JSON Schema; rewrite it as a `null` type.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                match map.get_mut("type") {
                    Some(Value::String(t)) => {
                        let t = t.clone();
                        map.insert("type".into(), serde_json::json!([t, "null"]));
                    }
                    Some(Value::Array(types)) if !types.contains(&Value::from("null")) => {
                        types.push(Value::from("null"));
                    }
                    _ => {}
                }
            }
            map.values_mut().for_each(rewrite_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

/// JSON pointer escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| format!("path template {template:?} must start with /"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/')
        .map(|part| {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!(
                        "path template {template:?} has a malformed parameter {part:?}"
                    ));
                }
                Ok(Segment::Param(name.to_string()))
            } else if part.contains(['{', '}']) {
                Err(format!(
                    "path template {template:?}: a parameter must be a whole segment, got {part:?}"
                ))
            } else {
                Ok(Segment::Literal(part.to_string()))
            }
        })
        .collect()
}

/// Splits a path of a backend without spec, refusing anything but a plain absolute path.
fn plain_path_segments(path: &str) -> Result<Vec<String>, Failure> {
    let refuse = |why: &str| {
        Err(Failure::new(
            FailureKind::Route,
            format!("path {:?} is refused: {why}", excerpt(path, PATH_EXCERPT)),
        ))
    };
    let Some(rest) = path.strip_prefix('/') else {
        return refuse("it must start with /");
    };
    if rest.starts_with('/') {
        return refuse("it must not start with //");
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:/".contains(*c)))
    {
        return refuse(&format!(
            "character {c:?} is not allowed (no %, @, \\, ?, #, spaces or controls)"
        ));
    }
    let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
    if segments.iter().any(|s| s == "." || s == "..") {
        return refuse("it must not contain . or .. segments");
    }
    if segments.len() > 1 && segments[..segments.len() - 1].iter().any(String::is_empty) {
        return refuse("it must not contain empty segments");
    }
    // What some servers read as `..` or as an empty segment: `..;x` (a `;` path parameter).
    for segment in segments.iter().filter(|s| !s.is_empty()) {
        if let Err(why) = url_guard::check_value(segment) {
            return refuse(&format!("segment {segment:?} is refused: {why}"));
        }
    }
    Ok(segments)
}

/// The URL of `segments` under `base`, or a `route` failure: see [`url_guard::route_url`].
fn route_url(base: &Url, segments: &[Segment], payload: &Value) -> Result<Url, Failure> {
    url_guard::route_url(base, segments, payload)
        .map_err(|reason| Failure::new(FailureKind::Route, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Routes {
        Routes::from_document(json!({
            "openapi": "3.0.3",
            "paths": {
                "/spookify": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Spook"}}}}}},
                "/threads/{id}/summary": {"post": {"requestBody": {"$ref": "#/components/requestBodies/Summary"}}},
                "/ping": {"get": {}}
            },
            "components": {
                "schemas": {"Spook": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "note": {"type": "string", "nullable": true}}}},
                "requestBodies": {"Summary": {"content": {"application/json": {"schema": {"type": "object", "required": ["id"]}}}}}
            }
        }))
        .map_err(|e| e.1)
        .unwrap()
    }

    fn base() -> Url {
        Url::parse("http://127.0.0.1:9/api/").unwrap()
    }

    #[test]
    fn builds_declared_routes_under_the_base_path() {
        let request = spec()
            .prepare(&base(), "/spookify", json!({"id": "t1", "note": null}))
            .unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.url.as_str(), "http://127.0.0.1:9/api/spookify");
        let ping = spec().prepare(&base(), "/ping", json!(null)).unwrap();
        assert_eq!(ping.method, Method::GET);
    }

    #[test]
    fn fills_templates_with_encoded_values() {
        let request = spec()
            .prepare(&base(), "/threads/{id}/summary", json!({"id": "a/b?c#d;e"}))
            .unwrap();
        assert_eq!(
            request.url.as_str(),
            "http://127.0.0.1:9/api/threads/a%2Fb%3Fc%23d%3Be/summary"
        );
        // Issue 11: values that are, or could be read as, dot or empty segments.
        for id in ["..", ".\t.", "%2e%2e", "a/../b", "．．", " ", "..;x"] {
            let err = spec()
                .prepare(&base(), "/threads/{id}/summary", json!({"id": id}))
                .unwrap_err();
            assert_eq!(err.kind, FailureKind::Route, "{id:?}");
        }
        for payload in [json!({"id": null}), json!({"id": ["x"]})] {
            let err = spec()
                .prepare(&base(), "/threads/{id}/summary", payload)
                .unwrap_err();
            assert_eq!(err.kind, FailureKind::Validation);
        }
    }

    #[test]
    fn validation_lists_every_problem() {
        let err = spec()
            .prepare(&base(), "/spookify", json!({"note": 5}))
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Validation);
        assert!(
            err.reason.contains("\"id\" is a required property"),
            "{}",
            err.reason
        );
        assert!(err.reason.contains("/note"), "{}", err.reason);
    }

    #[test]
    fn undeclared_paths_are_routes_errors() {
        for path in ["/spookify/", "/threads/x/summary", "spookify", "/SPOOKIFY"] {
            let err = spec()
                .prepare(&base(), path, json!({"id": "x"}))
                .unwrap_err();
            assert_eq!(err.kind, FailureKind::Route, "{path}");
        }
    }

    #[test]
    fn unchecked_paths_must_be_plain() {
        let routes = Routes::Unchecked;
        assert_eq!(
            routes
                .prepare(&base(), "/a/b-c_d", json!({}))
                .unwrap()
                .url
                .as_str(),
            "http://127.0.0.1:9/api/a/b-c_d"
        );
        for path in [
            "@evil.example/x",
            "/@evil.example/x",
            "//evil.example/x",
            "/../admin",
            "/a/./b",
            "http://evil.example/",
            "/%2e%2e/admin",
            "/a\\b",
            "/a\r\nHost: evil",
            "/a?b=1",
            "/a#b",
            "/..;/admin",
            "/a/..;x/b",
            "/;x",
            "/a//b",
            "",
        ] {
            let err = routes.prepare(&base(), path, json!({})).unwrap_err();
            assert_eq!(err.kind, FailureKind::Route, "{path:?}");
        }
    }

    #[test]
    fn refuses_unsupported_versions_and_remote_refs() {
        assert!(Routes::from_document(json!({"openapi": "2.0", "paths": {}})).is_err());
        assert!(Routes::from_document(json!({"swagger": "2.0"})).is_err());
        let remote = json!({"openapi": "3.1.0", "paths": {"/x": {"post": {"requestBody": {"$ref": "http://evil.example/body"}}}}});
        assert!(Routes::from_document(remote).is_err());
    }
}
