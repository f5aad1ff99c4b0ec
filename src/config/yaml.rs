//! YAML as the world writes it. OpenAPI documents and sp00ky.yml are YAML 1.2, whose core schema
//! knows only `true`/`false` (any case of the first letter, or all capitals) as booleans:
//! `n`, `y`, `yes`, `no`, `on` and `off` are strings. serde-saphyr follows YAML 1.1 by default,
//! which turned a spec property named `n` into `false`; `strict_booleans` switches that off.
//! Numbers written with `_` (`1_000`, a YAML 1.1 form) stay strings, as in YAML 1.2.

use serde_json::Value;

/// Parses YAML (so JSON too) into a JSON tree, resolving plain scalars by YAML 1.2's core schema.
pub fn parse(text: &str) -> Result<Value, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        underscored_numbers_as_strings: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What YAML 1.2's core schema (section 10.3.2) resolves a plain scalar to, as JSON; `None`
    /// for the floats JSON cannot hold (`.inf`, `.nan`).
    fn core_schema(text: &str) -> Option<Value> {
        let is = |pattern: &str| regex_lite_match(pattern, text);
        if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
            return Some(Value::Null);
        }
        if matches!(text, "true" | "True" | "TRUE") {
            return Some(json!(true));
        }
        if matches!(text, "false" | "False" | "FALSE") {
            return Some(json!(false));
        }
        if is("int") {
            return Some(json!(text.parse::<i64>().ok()?));
        }
        let radix = |prefix: &str, radix: u32| {
            let digits = text.strip_prefix(prefix)?;
            let valid = !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix));
            valid
                .then(|| i64::from_str_radix(digits, radix).ok())
                .flatten()
        };
        if let Some(number) = radix("0o", 8).or_else(|| radix("0x", 16)) {
            return Some(json!(number));
        }
        if is("float") {
            return Some(json!(text.parse::<f64>().ok()?));
        }
        if text
            .trim_start_matches(['+', '-'])
            .eq_ignore_ascii_case(".inf")
            || text.eq_ignore_ascii_case(".nan")
        {
            return None;
        }
        Some(json!(text))
    }

    /// The core schema's int (`[-+]?[0-9]+`) and float patterns, without a regex crate.
    fn regex_lite_match(kind: &str, text: &str) -> bool {
        let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match kind {
            "int" => digits(unsigned),
            _ => {
                let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
                    Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
                    None => (unsigned, None),
                };
                let mantissa_ok = match mantissa.split_once('.') {
                    Some(("", frac)) => digits(frac),
                    Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
                    None => digits(mantissa),
                };
                mantissa_ok && exponent.is_none_or(digits)
            }
        }
    }

    /// Equal as YAML 1.2 means them: numbers by value (`0777` is the integer 777).
    fn same(parsed: &Value, expected: &Value) -> bool {
        match (parsed, expected) {
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            _ => parsed == expected,
        }
    }

    #[test]
    fn yaml_1_1_booleans_are_strings_as_keys_and_values() {
        let words = [
            "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off",
            "Off", "OFF",
        ];
        for word in words {
            let doc = parse(&format!("{word}: {word}\nlist: [{word}]\n")).unwrap();
            assert_eq!(doc[word], json!(word), "{word} as a value");
            assert_eq!(doc["list"][0], json!(word), "{word} in a flow list");
        }
        let doc = parse("a: true\nb: False\nc: TRUE\n").unwrap();
        assert_eq!(doc, json!({"a": true, "b": false, "c": true}));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any plain scalar reads as YAML 1.2's core schema reads it. Scalars that YAML would
        /// not take as plain (indicators, `: `, ` #`) and `0b` binary (a YAML 1.1 form that
        /// serde-saphyr still reads as a number; no spec writes one) are left out.
        #[test]
        fn plain_scalars_resolve_as_yaml_1_2(text in "[A-Za-z0-9+._~-]{1,8}") {
            prop_assume!(!text.starts_with(['-', '.', '~']) || text.len() > 1 || text == "~");
            prop_assume!(!text.starts_with("0b") && !text.starts_with("-.") && !text.starts_with("--"));
            prop_assume!(!text.starts_with("- ") && text != "-");
            let parsed = parse(&format!("k: {text}\n"));
            let expected = core_schema(&text);
            match (parsed, expected) {
                (Ok(doc), Some(expected)) => prop_assert!(
                    same(&doc["k"], &expected),
                    "{text:?}: parsed {} but YAML 1.2 says {expected}", doc["k"]
                ),
                // Non-finite floats have no JSON form: refused, never silently changed.
                (Err(_), None) => {}
                (Ok(doc), None) => prop_assert!(doc["k"].is_null() || doc["k"].is_string(), "{text:?}: {}", doc["k"]),
                (Err(e), Some(expected)) => prop_assert!(false, "{text:?} ({expected}) refused: {e}"),
            }
        }
    }
}
