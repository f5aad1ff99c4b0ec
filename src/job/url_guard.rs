//! Builds the URL of a declared route under a backend's `baseUrl`, and proves on the finished
//! URL that it is exactly that route (issue 11).
//!
//! A row is untrusted, and so are the payload values that fill a template's `{param}`s. A value
//! must land as exactly one literal segment of the route, or the job fails before any request.
//! Two layers make sure of that.
//!
//! The value is refused when it is, or could turn into under a common server-side reading, an
//! empty or a dot segment: control characters (which URL parsers strip, so `.\t.` became `..`),
//! `.` and `..` in any spelling (`%2e`, `.%2E`, Unicode look-alikes such as `．`), values with
//! nothing visible, and the same checks again after each percent-decoding, after splitting on `/`
//! and `\` and after cutting a `;` path parameter (`..;x` reads as `..` on some servers).
//!
//! The remaining values are percent-encoded as one segment and the URL is built; then the
//! finished URL is checked rather than the input: same scheme, host, port and credentials as
//! `baseUrl`, no query or fragment, and a path that is, segment by segment, `baseUrl`'s path
//! segments (its trailing slash ignored), then the route's literal segments and one segment per
//! parameter that percent-decodes back to exactly the value. `/api` is a segment, not a string
//! prefix, so `/api-internal` never passes for it.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::Value;
use url::Url;

/// One `/`-separated piece of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text of the template itself, sent as declared.
    Literal(String),
    /// `{name}`: filled from the payload field `name`.
    Param(String),
}

/// What RFC 3986 allows in no part of a URL's path or fragment: controls, space, `"`, `#`, `%`,
/// `<`, `>`, `[`, `\`, `]`, `^`, the backtick, `{`, `|` and `}`. A JSON pointer in a fragment
/// (`validate`) encodes these too.
pub(crate) const URL_UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// What a parameter value's segment encodes: everything but ASCII letters, digits, `-._~`, the
/// sub-delimiters other than `;` (`!$&'()*+,=`) and `:@`. Non-ASCII is always encoded, as UTF-8.
/// `;` is encoded because some servers cut a segment at `;` (path parameters).
const PARAM_SEGMENT: &AsciiSet = &URL_UNSAFE.add(b'/').add(b';').add(b'?');

/// What a literal segment of a template encodes: the set `url` uses when a segment is pushed
/// onto a special (http, https) URL, so declared routes are sent exactly as before.
const LITERAL_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// How many percent-decodings of a value are checked. A value that still changes after this
/// many is refused: no real identifier is encoded five times over.
const MAX_DECODINGS: usize = 4;

/// How much of an untrusted value an error message quotes.
const SHOWN_CHARS: usize = 200;

/// Builds the URL of the route `segments` under `base`, filling each [`Segment::Param`] from the
/// payload field of that name. `Err` is a readable reason, for a failure of kind `route`; no
/// request may be made then.
pub fn route_url(base: &Url, segments: &[Segment], payload: &Value) -> Result<Url, String> {
    let planned = plan(base, segments, payload)?;
    let mut url = base.clone();
    url.set_path(&planned_path(&planned));
    verify(base, &url, &planned)?;
    Ok(url)
}

/// The text a path parameter takes from the payload: a string as it is, a number or boolean as
/// JSON writes it. Null, objects, arrays and a missing field are refused.
pub fn param_text(payload: &Value, name: &str) -> Result<String, String> {
    match payload.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(Value::Bool(flag)) => Ok(flag.to_string()),
        Some(_) => Err(format!(
            "path parameter `{name}` must be a string, number or boolean in the payload"
        )),
        None => Err(format!(
            "path parameter `{name}` is missing from the payload"
        )),
    }
}

/// Whether `value` may fill a path parameter; `Err` says why not ("it ...").
///
/// Refused: an empty value, a control character, a value that is (or has, between `/` or `\`)
/// a dot segment in any spelling, a value with nothing visible, and a value that becomes one of
/// these when percent-decoded up to `MAX_DECODINGS` (4) times, or whose decoding is not UTF-8.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("it is empty".to_string());
    }
    let mut layer = value.to_owned();
    for decodings in 0..=MAX_DECODINGS {
        let when = if decodings == 0 {
            ""
        } else {
            " once percent-decoded"
        };
        check_layer(&layer).map_err(|why| format!("{why}{when}"))?;
        let Ok(decoded) = percent_decode_str(&layer).decode_utf8() else {
            return Err("it percent-decodes to bytes that are not UTF-8".to_string());
        };
        if decoded == layer.as_str() {
            return Ok(());
        }
        layer = decoded.into_owned();
    }
    Err(format!(
        "it is percent-encoded more than {MAX_DECODINGS} times over"
    ))
}

/// The checks of [`check_value`] on one reading of the value.
fn check_layer(layer: &str) -> Result<(), String> {
    if let Some(c) = layer.chars().find(|c| c.is_control()) {
        return Err(format!("it contains the control character {c:?}"));
    }
    let mut all_blank = true;
    let whole = !layer.contains(['/', '\\']);
    for piece in layer.split(['/', '\\']) {
        // Some servers cut a segment at `;` (`..;x` is read as `..`).
        let head = piece.split_once(';').map_or(piece, |(head, _)| head);
        let mut visible = head
            .chars()
            .filter(|&c| !c.is_whitespace() && !is_ignorable(c))
            .peekable();
        if visible.peek().is_none() {
            continue;
        }
        all_blank = false;
        if visible.all(is_dot_like) {
            return Err(if whole {
                "it would be read as a `.` or `..` path segment".to_string()
            } else {
                "it has a `.` or `..` segment between `/` or `\\`, which a server that decodes \
                 `%2F` would resolve"
                    .to_string()
            });
        }
    }
    if all_blank {
        return Err(
            "it has no visible character, so it would be an empty path segment".to_string(),
        );
    }
    Ok(())
}

/// `.` and the characters that Unicode compatibility normalisation (NFKC) or IDNA mapping
/// (UTS 46) turn into nothing but dots: one dot leader, two dot leader, ellipsis, ideographic
/// full stop, vertical ellipsis and two dot leader, small full stop, full-width full stop,
/// half-width ideographic full stop.
fn is_dot_like(c: char) -> bool {
    matches!(
        c,
        '.' | '\u{3002}'
            | '\u{FE19}'
            | '\u{FE30}'
            | '\u{FE52}'
            | '\u{FF0E}'
            | '\u{FF61}'
            | '\u{2024}'..='\u{2026}'
    )
}

/// Unicode's Default_Ignorable_Code_Point: characters with no visible form, which some software
/// drops (`.\u{200B}.` could be read as `..`).
fn is_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{AD}'
            | '\u{34F}'
            | '\u{61C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// One segment the finished path must have, in order.
#[derive(Debug)]
enum Planned<'a> {
    /// A segment of `baseUrl`'s path, as `url` serialises it.
    Base(&'a str),
    /// A literal segment of the route and its encoding.
    Literal { text: &'a str, encoded: String },
    /// A parameter, its value and the value's encoding.
    Param {
        name: &'a str,
        value: String,
        encoded: String,
    },
}

impl Planned<'_> {
    fn encoded(&self) -> &str {
        match self {
            Planned::Base(segment) => segment,
            Planned::Literal { encoded, .. } | Planned::Param { encoded, .. } => encoded.as_str(),
        }
    }
}

/// The segments of the URL to build: `base`'s, then the route's with its parameters filled.
fn plan<'a>(
    base: &'a Url,
    segments: &'a [Segment],
    payload: &Value,
) -> Result<Vec<Planned<'a>>, String> {
    let Some(base_segments) = base.path_segments() else {
        return Err("the backend's baseUrl cannot take a path".to_string());
    };
    let mut planned: Vec<Planned<'a>> = base_segments.map(Planned::Base).collect();
    // A trailing slash on baseUrl is ignored: `/api/` is the same base as `/api`, and `/` is no
    // base path at all.
    if matches!(planned.last(), Some(Planned::Base(""))) {
        planned.pop();
    }
    for segment in segments {
        match segment {
            Segment::Literal(text) => {
                if matches!(text.as_str(), "." | "..") || text.chars().any(char::is_control) {
                    return Err(format!(
                        "the route segment {} cannot be sent as a path segment",
                        shown(text)
                    ));
                }
                planned.push(Planned::Literal {
                    text: text.as_str(),
                    encoded: utf8_percent_encode(text, LITERAL_SEGMENT).to_string(),
                });
            }
            Segment::Param(name) => {
                let value = param_text(payload, name)?;
                if let Err(why) = check_value(&value) {
                    return Err(format!(
                        "path parameter `{name}` = {} is refused: {why}",
                        shown(&value)
                    ));
                }
                let encoded = utf8_percent_encode(&value, PARAM_SEGMENT).to_string();
                planned.push(Planned::Param {
                    name: name.as_str(),
                    value,
                    encoded,
                });
            }
        }
    }
    Ok(planned)
}

/// The path made of the planned segments.
fn planned_path(planned: &[Planned<'_>]) -> String {
    if planned.is_empty() {
        return "/".to_string();
    }
    let mut path = String::new();
    for segment in planned {
        path.push('/');
        path.push_str(segment.encoded());
    }
    path
}

/// Checks the finished `url` against `base` and the plan: the decision is taken on what will be
/// sent, not on the input.
fn verify(base: &Url, url: &Url, planned: &[Planned<'_>]) -> Result<(), String> {
    let leaves = |why: String| {
        format!(
            "the built URL {} is not the route under the backend's baseUrl: {why}",
            shown(url.as_str())
        )
    };
    if url.scheme() != base.scheme()
        || url.username() != base.username()
        || url.password() != base.password()
        || url.host_str() != base.host_str()
        || url.port() != base.port()
    {
        return Err(leaves(
            "its scheme, host, port or credentials differ from the baseUrl's".to_string(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(leaves("it has a query or a fragment".to_string()));
    }
    let expected_path = planned_path(planned);
    if url.path() != expected_path {
        return Err(leaves(format!("its path is not {}", shown(&expected_path))));
    }
    let Some(actual) = url.path_segments() else {
        return Err(leaves("it has no path segments".to_string()));
    };
    let mut actual: Vec<&str> = actual.collect();
    if planned.is_empty() && actual == [""] {
        actual.clear();
    }
    if actual.len() != planned.len() {
        return Err(leaves(format!(
            "it has {} path segments instead of {}",
            actual.len(),
            planned.len()
        )));
    }
    for (&got, want) in actual.iter().zip(planned) {
        match want {
            Planned::Base(segment) => {
                if got != *segment {
                    return Err(leaves(format!(
                        "segment {} stands where the baseUrl has {segment:?}",
                        shown(got)
                    )));
                }
            }
            Planned::Literal { text, encoded } => {
                if got != encoded.as_str() {
                    return Err(leaves(format!(
                        "segment {} stands where the route has {text:?}",
                        shown(got)
                    )));
                }
            }
            Planned::Param {
                name,
                value,
                encoded,
            } => {
                let round_trips = percent_decode_str(got)
                    .decode_utf8()
                    .is_ok_and(|decoded| decoded == value.as_str());
                if got != encoded.as_str() || got.is_empty() || is_dot_segment(got) || !round_trips
                {
                    return Err(leaves(format!(
                        "segment {} is not exactly the value of path parameter `{name}`",
                        shown(got)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The spellings of `.` and `..` that URL parsers resolve.
fn is_dot_segment(segment: &str) -> bool {
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e"
    )
}

/// A bounded, escaped quotation of untrusted text: control characters appear as escapes, so the
/// message stays on one line.
fn shown(value: &str) -> String {
    format!("\"{}\"", crate::job::failure::excerpt(value, SHOWN_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "http://127.0.0.1:9/api";

    pub(super) fn route() -> Vec<Segment> {
        vec![
            Segment::Literal("threads".to_string()),
            Segment::Param("id".to_string()),
            Segment::Literal("summary".to_string()),
        ]
    }

    fn base() -> Url {
        Url::parse(BASE).unwrap()
    }

    fn build(value: Value) -> Result<Url, String> {
        route_url(&base(), &route(), &json!({ "id": value }))
    }

    fn build_str(value: &str) -> Result<Url, String> {
        build(Value::from(value))
    }

    /// Values that must never fill `{id}`: each is, or may be read somewhere as, an empty
    /// segment, a dot segment or more than one segment.
    const REFUSED: &[&str] = &[
        "",
        ".",
        "..",
        "...",
        // Dot segments hidden behind characters a URL parser strips.
        ".\t.",
        "\t..",
        "..\t",
        ".\r.",
        ".\n.",
        "\r\n..",
        // Other control characters, C0 and C1.
        ".\0.",
        "\0",
        ".\u{b}.",
        ".\u{c}.",
        ".\u{7f}.",
        ".\u{85}.",
        "a\u{9c}b",
        "a\r\nHost: evil.example",
        // Percent-encoded dots, once or more.
        "%2e",
        "%2E",
        "%2E%2e",
        "%2e%2E",
        ".%2E",
        ".%2e",
        "%2e.",
        "%252e%252E",
        "%25252e",
        // Climbing out through `/` or `\`, plain or encoded.
        "../api-internal",
        "..%2Fapi-internal",
        "%2e%2e%2fapi-internal",
        "..\\",
        "..\\admin",
        "..%5c",
        "a/../../x",
        "a\\..\\..\\x",
        "/..",
        // Only separators: empty segments once decoded or merged.
        "/",
        "//",
        "\\",
        // Unicode look-alikes of dots.
        "．",
        "．．",
        "\u{2024}\u{2024}",
        "\u{2025}",
        "\u{2026}",
        "\u{FE52}",
        "\u{FE30}",
        "。",
        "\u{FF61}\u{FF61}",
        // Nothing visible.
        " ",
        "   ",
        "\u{a0}",
        "\u{3000}",
        "\u{200B}",
        "\u{FEFF}",
        ".\u{200B}.",
        "\u{AD}..",
        ". .",
        " .. ",
        // `;` path parameters.
        "..;",
        "..;jsessionid=x",
        ";",
        ";x",
        "..%3Bx",
        // Encoded controls and bytes that are not UTF-8 (`%c0%ae` is an overlong `.`).
        "%00",
        "%09",
        "%0d%0aHost:%20evil.example",
        "%c0%ae%c0%ae",
        "%ff",
    ];

    #[test]
    fn hostile_values_are_refused_with_a_readable_reason() {
        for value in REFUSED {
            let why = match build_str(value) {
                Ok(url) => panic!("{value:?} was accepted as {url}"),
                Err(why) => why,
            };
            assert!(why.contains("`id`"), "{value:?}: {why}");
            assert!(!why.chars().any(char::is_control), "{value:?}: {why:?}");
        }
    }

    /// Values that are odd but harmless: each lands, encoded, as exactly one segment.
    const ACCEPTED: &[(&str, &str)] = &[
        ("t1", "t1"),
        ("a;b", "a%3Bb"),
        ("a;..", "a%3B.."),
        ("a/b", "a%2Fb"),
        ("a/b?c#d", "a%2Fb%3Fc%23d"),
        ("a\\b", "a%5Cb"),
        ("a b", "a%20b"),
        (" a ", "%20a%20"),
        ("?x", "%3Fx"),
        ("#x", "%23x"),
        ("%", "%25"),
        ("100%", "100%25"),
        ("%41", "%2541"),
        ("a%2Fb", "a%252Fb"),
        ("café", "caf%C3%A9"),
        ("a．b", "a%EF%BC%8Eb"),
        ("..a", "..a"),
        ("a..", "a.."),
        (".a", ".a"),
        ("v1.2.3", "v1.2.3"),
        ("@evil.example", "@evil.example"),
        ("http://evil.example/", "http:%2F%2Fevil.example%2F"),
        ("a[0]^|`{}", "a%5B0%5D%5E%7C%60%7B%7D"),
        ("<b>\"q\"", "%3Cb%3E%22q%22"),
        ("x:y@z!$&'()*+,=~-_", "x:y@z!$&'()*+,=~-_"),
    ];

    #[test]
    fn odd_values_are_encoded_as_one_segment() {
        for (value, encoded) in ACCEPTED {
            let url = build_str(value).unwrap_or_else(|why| panic!("{value:?}: {why}"));
            assert_eq!(
                url.as_str(),
                format!("{BASE}/threads/{encoded}/summary"),
                "{value:?}"
            );
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 4, "{value:?}");
            let decoded = percent_decode_str(segments[2]).decode_utf8().unwrap();
            assert_eq!(decoded, *value);
            assert_eq!(Url::parse(url.as_str()).unwrap(), url, "{value:?}");
        }
    }

    #[test]
    fn numbers_and_booleans_fill_parameters_and_other_json_does_not() {
        for (value, text) in [
            (json!(42), "42"),
            (json!(-7), "-7"),
            (json!(1.5), "1.5"),
            (json!(true), "true"),
            (json!(false), "false"),
        ] {
            let url = build(value).unwrap();
            assert_eq!(url.as_str(), format!("{BASE}/threads/{text}/summary"));
        }
        for value in [
            json!(null),
            json!({}),
            json!({"a": 1}),
            json!([]),
            json!(["x"]),
        ] {
            let why = build(value.clone()).unwrap_err();
            assert!(why.contains("string, number or boolean"), "{value}: {why}");
        }
        let why = route_url(&base(), &route(), &json!({"other": "x"})).unwrap_err();
        assert!(why.contains("missing"), "{why}");
        let why = route_url(&base(), &route(), &json!("x")).unwrap_err();
        assert!(why.contains("missing"), "{why}");
    }

    #[test]
    fn the_base_path_is_kept_whatever_its_trailing_slash() {
        for (base, url) in [
            ("http://127.0.0.1:9", "http://127.0.0.1:9/threads/x/summary"),
            (
                "http://127.0.0.1:9/",
                "http://127.0.0.1:9/threads/x/summary",
            ),
            (
                "http://127.0.0.1:9/api",
                "http://127.0.0.1:9/api/threads/x/summary",
            ),
            (
                "http://127.0.0.1:9/api/",
                "http://127.0.0.1:9/api/threads/x/summary",
            ),
            (
                "http://127.0.0.1:9/a/b/",
                "http://127.0.0.1:9/a/b/threads/x/summary",
            ),
            (
                "https://example.com/a%20b/",
                "https://example.com/a%20b/threads/x/summary",
            ),
        ] {
            let base = Url::parse(base).unwrap();
            let built = route_url(&base, &route(), &json!({"id": "x"})).unwrap();
            assert_eq!(built.as_str(), url);
        }
    }

    #[test]
    fn literal_routes_keep_their_old_encoding() {
        let literals = |parts: &[&str]| -> Vec<Segment> {
            parts
                .iter()
                .map(|part| Segment::Literal((*part).to_string()))
                .collect()
        };
        let cases: [(&[&str], &str); 5] = [
            (&[], "http://127.0.0.1:9/api"),
            (&["spookify"], "http://127.0.0.1:9/api/spookify"),
            (&["spookify", ""], "http://127.0.0.1:9/api/spookify/"),
            (&["a;b", "c d"], "http://127.0.0.1:9/api/a;b/c%20d"),
            (&["x%y"], "http://127.0.0.1:9/api/x%25y"),
        ];
        for (parts, url) in cases {
            let built = route_url(&base(), &literals(parts), &Value::Null).unwrap();
            assert_eq!(built.as_str(), url, "{parts:?}");
        }
        let root = Url::parse("http://127.0.0.1:9").unwrap();
        let built = route_url(&root, &[], &Value::Null).unwrap();
        assert_eq!(built.as_str(), "http://127.0.0.1:9/");
        for parts in [&[".."][..], &["."], &["a", "..", "b"], &["a\tb"]] {
            assert!(
                route_url(&base(), &literals(parts), &Value::Null).is_err(),
                "{parts:?}"
            );
        }
    }

    /// Templates with several parameters, each fed every hostile value: nothing is built.
    #[test]
    fn no_template_shape_lets_a_hostile_value_through() {
        let param = |name: &str| Segment::Param(name.to_string());
        let literal = |text: &str| Segment::Literal(text.to_string());
        let templates = [
            vec![param("a")],
            vec![param("a"), param("b")],
            vec![literal("p"), param("a")],
            vec![param("a"), literal("summary")],
        ];
        for template in &templates {
            for value in REFUSED {
                let payload = json!({"a": value, "b": "ok"});
                assert!(route_url(&base(), template, &payload).is_err(), "{value:?}");
                let payload = json!({"a": "ok", "b": value});
                let built = route_url(&base(), template, &payload);
                let uses_b = template.contains(&param("b"));
                assert_eq!(built.is_err(), uses_b, "{value:?}: {built:?}");
            }
        }
    }

    #[test]
    fn deeply_encoded_values_are_refused() {
        let mut dots = "..".to_string();
        let mut letter = "a".to_string();
        for _ in 0..6 {
            dots = dots.replace('%', "%25").replace('.', "%2e");
            letter = letter.replace('%', "%25").replace('a', "%61");
            assert!(build_str(&dots).is_err(), "{dots}");
        }
        // Four encodings deep is still checked and accepted; more is refused.
        let mut four = "a".to_string();
        for _ in 0..4 {
            four = four.replace('%', "%25").replace('a', "%61");
        }
        assert!(build_str(&four).is_ok(), "{four}");
        assert!(build_str(&letter).is_err(), "{letter}");
    }

    /// The final check alone refuses URLs that are not the planned route, including the string
    /// prefix trap (`/api-internal` for `/api`).
    #[test]
    fn the_finished_url_is_checked_segment_by_segment() {
        let base = base();
        let segments = route();
        let payload = json!({"id": "x"});
        let planned = plan(&base, &segments, &payload).unwrap();
        let good = Url::parse("http://127.0.0.1:9/api/threads/x/summary").unwrap();
        verify(&base, &good, &planned).unwrap();
        for bad in [
            "http://127.0.0.1:9/api-internal/threads/x/summary",
            "http://127.0.0.1:9/api//threads/x/summary",
            "http://127.0.0.1:9/threads/x/summary",
            "http://127.0.0.1:9/api/threads/x/y/summary",
            "http://127.0.0.1:9/api/threads/y/summary",
            "http://127.0.0.1:9/api/threads/x/summary/",
            "http://127.0.0.1:9/api/threads/x%2F/summary",
            "http://127.0.0.1:9/api/threads/x/summary?y=1",
            "http://127.0.0.1:9/api/threads/x/summary#y",
            "http://127.0.0.1:10/api/threads/x/summary",
            "http://127.0.0.2:9/api/threads/x/summary",
            "https://127.0.0.1:9/api/threads/x/summary",
            "http://user@127.0.0.1:9/api/threads/x/summary",
            "http://user:pw@127.0.0.1:9/api/threads/x/summary",
        ] {
            let url = Url::parse(bad).unwrap();
            assert!(verify(&base, &url, &planned).is_err(), "{bad}");
        }
    }

    /// `http://127.0.0.1:9` with `base_segments` as its path, and its text.
    fn test_base(base_segments: &[String], trailing_slash: bool) -> Result<(Url, String), String> {
        let mut text = "http://127.0.0.1:9".to_string();
        for segment in base_segments {
            text.push('/');
            text.push_str(segment);
        }
        if trailing_slash {
            text.push('/');
        }
        let base = Url::parse(&text).map_err(|e| format!("{text}: {e}"))?;
        let expected = format!("/{}", base_segments.join("/"));
        let base_path = base.path().strip_suffix('/').unwrap_or(base.path());
        if base_path != expected.trim_end_matches('/') {
            return Err(format!("test setup: {text} parses to path {}", base.path()));
        }
        Ok((base, text))
    }

    /// The property the proptest module checks: a value either is
    /// refused with a readable reason, or lands as exactly one segment of the route under the
    /// base, decoding back to itself.
    pub(super) fn check_property(
        base_segments: &[String],
        trailing_slash: bool,
        value: &str,
    ) -> Result<(), String> {
        let (base, text) = test_base(base_segments, trailing_slash)?;
        let n = base_segments.len();

        let plain = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_~".contains(c));
        let url = match route_url(&base, &route(), &json!({ "id": value })) {
            Err(why) => {
                if plain {
                    return Err(format!("plain value {value:?} refused: {why}"));
                }
                if why.chars().any(char::is_control) || !why.contains("`id`") {
                    return Err(format!("unreadable reason {why:?}"));
                }
                return Ok(());
            }
            Ok(url) => url,
        };
        if value.chars().any(char::is_control) {
            return Err(format!(
                "{value:?} has a control character and was accepted"
            ));
        }
        if url.scheme() != "http"
            || url.host_str() != Some("127.0.0.1")
            || url.port() != Some(9)
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(format!("{value:?} gave {url}: not the base's origin"));
        }
        let segments: Vec<&str> = url
            .path_segments()
            .ok_or_else(|| format!("{url} has no path"))?
            .collect();
        if segments.len() != n + 3
            || segments[..n]
                .iter()
                .zip(base_segments)
                .any(|(got, want)| *got != want.as_str())
            || segments[n] != "threads"
            || segments[n + 2] != "summary"
        {
            return Err(format!("{value:?} gave {url}: not the route under {text}"));
        }
        let param = segments[n + 1];
        let decoded = percent_decode_str(param)
            .decode_utf8()
            .map_err(|e| format!("{url}: {e}"))?;
        if decoded != value || param.is_empty() || is_dot_segment(param) {
            return Err(format!("{value:?} gave segment {param:?} in {url}"));
        }
        if !param
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@%".contains(&b))
        {
            return Err(format!("{value:?} gave the unencoded segment {param:?}"));
        }
        if plain && param != value {
            return Err(format!("plain value {value:?} was encoded as {param:?}"));
        }
        match Url::parse(url.as_str()) {
            Ok(again) if again == url => Ok(()),
            other => Err(format!("{url} does not parse back to itself: {other:?}")),
        }
    }
}

/// Property tests; they need `proptest` as a dev-dependency.
#[cfg(test)]
mod proptests {
    use super::tests::check_property;
    use proptest::prelude::*;

    const DANGEROUS: &[char] = &[
        '.', '/', '\\', '%', '2', 'e', 'E', '\t', '\n', '\r', '\0', '?', '#', ';', '．', 'a',
    ];

    fn dangerous_value() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(DANGEROUS), 0..8)
            .prop_map(|chars| chars.into_iter().collect::<String>())
    }

    /// Any characters, controls included (`any::<String>()` draws no control characters).
    fn any_chars() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..12)
            .prop_map(|chars| chars.into_iter().collect::<String>())
    }

    /// 0 to 3 base path segments that `Url::parse` keeps as they are, and whether the base ends
    /// with a slash.
    fn base_path() -> impl Strategy<Value = (Vec<String>, bool)> {
        (
            prop::collection::vec("[a-z0-9][a-z0-9._~-]{0,3}|x%2Fy|a%20b|a;b|%41|@", 0..4),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_strings_stay_one_segment(
            (segments, slash) in base_path(),
            value in any::<String>()
        ) {
            let checked = check_property(&segments, slash, &value);
            prop_assert!(checked.is_ok(), "{checked:?}");
        }

        #[test]
        fn arbitrary_chars_stay_one_segment(
            (segments, slash) in base_path(),
            value in any_chars()
        ) {
            let checked = check_property(&segments, slash, &value);
            prop_assert!(checked.is_ok(), "{checked:?}");
        }

        #[test]
        fn dangerous_strings_stay_one_segment(
            (segments, slash) in base_path(),
            value in dangerous_value()
        ) {
            let checked = check_property(&segments, slash, &value);
            prop_assert!(checked.is_ok(), "{checked:?}");
        }
    }
}
