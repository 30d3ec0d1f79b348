//! Server labels and the selectors that match them.
//!
//! A label is `key=value` (keys `[a-z0-9_.\-/]{1,63}`, values up to 255 characters without
//! `,` `=` `!`, control characters or surrounding spaces). A selector is a comma-separated
//! list of terms, every one of which must hold: `key=value`, `key!=value` (absent or another
//! value), `key` (has the key) and `!key` (has it not), written without spaces around them
//! ([`SELECTOR_PATTERN`] says it exactly). The same string filters `GET /servers?labels=`
//! and picks a run's targets.

use std::collections::BTreeMap;
use std::fmt;

use super::FieldError;

/// A server's labels: key → value, in key order.
pub type Labels = BTreeMap<String, String>;

/// Most labels one server carries.
pub const MAX_LABELS: usize = 64;

/// A selector, as the OpenAPI document states it (what [`Selector::parse`] accepts).
pub const SELECTOR_PATTERN: &str = "^(!?[a-z0-9_./-]{1,63}|[a-z0-9_./-]{1,63}!?=([^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]([^,=!\\u0000-\\u001f\\u007f-\\u009f]{0,253}[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f])?)?)(,(!?[a-z0-9_./-]{1,63}|[a-z0-9_./-]{1,63}!?=([^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]([^,=!\\u0000-\\u001f\\u007f-\\u009f]{0,253}[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f])?)?))*$";

/// Whether `key` is a label key: 1 to 63 of `a-z 0-9 _ . - /`.
pub fn valid_label_key(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-/".contains(&b))
}

/// Whether `value` is a label value: at most 255 characters, none a comma, `=`, `!` or a
/// control character (so every label can be written in a selector).
pub fn valid_label_value(value: &str) -> bool {
    value.chars().count() <= 255
        && !value
            .chars()
            .any(|c| c.is_control() || matches!(c, ',' | '=' | '!'))
        && value.trim() == value
}

/// Check a server's labels; a 422 names `labels` and the offending key.
pub fn validate_labels(labels: &Labels) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(FieldError::new(
            "labels",
            format!("has {} entries; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        if !valid_label_key(key) {
            return Err(FieldError::new(
                "labels",
                format!("key {key:?} is not 1-63 of a-z, 0-9, _ . - /"),
            ));
        }
        if !valid_label_value(value) {
            return Err(FieldError::new(
                "labels",
                format!(
                    "the value of {key:?} is longer than 255 characters, or holds a comma, \
                     '=', '!', a control character or surrounding spaces"
                ),
            ));
        }
    }
    Ok(())
}

/// The schema of `labels`: an object of label values, its names label keys.
pub fn labels_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    use utoipa::openapi::{RefOr, Schema};
    let edge = "[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]";
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            "^(|{edge}|{edge}[^,=!\\u0000-\\u001f\\u007f-\\u009f]{{0,253}}{edge})$"
        )))
        .build();
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z0-9_./-]{1,63}$"))
        .build();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Labels: keys 1-63 of `a-z 0-9 _ . - /`, values up to 255 characters without `,` `=` `!` or surrounding spaces.",
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
            value,
        )))))
        .property_names(Some(key))
        .max_properties(Some(MAX_LABELS))
        .build()
}

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// `key=value`.
    Is(String, String),
    /// `key!=value`: the key is absent or has another value.
    IsNot(String, String),
    /// `key`: the key is present.
    Has(String),
    /// `!key`: the key is absent.
    HasNot(String),
}

/// A parsed selector: every term must hold. Displays in its canonical string form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Term>);

impl Selector {
    /// Parse `role=web,env!=prod,canary,!retired`; `field` names the 422 on a bad term.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let mut terms = Vec::new();
        for part in raw.split(',') {
            let bad = |why: &str| FieldError::new(field, format!("term {part:?} {why}"));
            let key = |k: &str| {
                valid_label_key(k)
                    .then(|| k.to_string())
                    .ok_or_else(|| bad("has a key that is not 1-63 of a-z, 0-9, _ . - /"))
            };
            let value = |v: &str| {
                valid_label_value(v)
                    .then(|| v.to_string())
                    .ok_or_else(|| bad("has a value a label cannot have"))
            };
            if part.is_empty() {
                return Err(FieldError::new(
                    field,
                    "is empty, or has an empty term (write key=value, key!=value, key or !key)",
                ));
            }
            let term = if let Some((k, v)) = part.split_once("!=") {
                Term::IsNot(key(k)?, value(v)?)
            } else if let Some((k, v)) = part.split_once('=') {
                Term::Is(key(k)?, value(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Term::HasNot(key(k)?)
            } else {
                Term::Has(key(part)?)
            };
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    /// A selector no server matches (`unreadable,!unreadable`): what a stored scope that no
    /// longer parses becomes, so that it reaches nothing rather than everything.
    pub fn nothing() -> Self {
        let key = "unreadable".to_string();
        Selector(vec![Term::Has(key.clone()), Term::HasNot(key)])
    }

    /// Whether a server with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|term| match term {
            Term::Is(k, v) => labels.get(k) == Some(v),
            Term::IsNot(k, v) => labels.get(k) != Some(v),
            Term::Has(k) => labels.contains_key(k),
            Term::HasNot(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match term {
                Term::Is(k, v) => write!(f, "{k}={v}")?,
                Term::IsNot(k, v) => write!(f, "{k}!={v}")?,
                Term::Has(k) => f.write_str(k)?,
                Term::HasNot(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_matches_no_server_whatever_its_labels() {
        let nothing = Selector::nothing();
        let with = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for labels in [
            with(&[]),
            with(&[("unreadable", "x")]),
            with(&[("env", "prod")]),
        ] {
            assert!(!nothing.matches(&labels), "{labels:?}");
        }
    }

    #[test]
    fn every_term_form_matches_as_documented() {
        let web_prod = labels(&[("role", "web"), ("env", "prod")]);
        let web_dev = labels(&[("role", "web"), ("env", "dev"), ("canary", "")]);
        let db = labels(&[("role", "db")]);
        let pick = |s: &str| {
            let sel = Selector::parse("selector", s).unwrap();
            [&web_prod, &web_dev, &db].map(|l| sel.matches(l))
        };
        assert_eq!(pick("role=web"), [true, true, false]);
        assert_eq!(pick("role=web,env=prod"), [true, false, false]);
        assert_eq!(pick("env!=prod"), [false, true, true]);
        assert_eq!(pick("env"), [true, true, false]);
        assert_eq!(pick("!env"), [false, false, true]);
        assert_eq!(pick("canary"), [false, true, false]);
        assert_eq!(pick("role=web,!canary"), [true, false, false]);
    }

    #[test]
    fn a_bad_selector_names_the_field_and_the_term() {
        for raw in [
            "",
            "role=web,",
            "Role=web",
            "role=a=b",
            "!",
            "=web",
            "k!=v,x y",
            " role=web",
            "role= web",
            "role=web ,x",
        ] {
            let err = Selector::parse("targets.selector", raw).unwrap_err();
            assert_eq!(err.field, "targets.selector", "{raw:?}");
        }
        let err = Selector::parse("labels", "role=web,BAD").unwrap_err();
        assert!(err.message.contains("\"BAD\""), "{}", err.message);
    }

    #[test]
    fn selectors_print_canonically() {
        let sel = Selector::parse("s", "role=web,env!=prod,x,!y,k=a b").unwrap();
        assert_eq!(sel.to_string(), "role=web,env!=prod,x,!y,k=a b");
        assert_eq!(Selector::parse("s", &sel.to_string()).unwrap(), sel);
    }

    #[test]
    fn label_keys_and_values_are_checked() {
        assert!(validate_labels(&labels(&[("role", "web"), ("k8s.io/zone", "a-1")])).is_ok());
        for bad in [
            labels(&[("Role", "web")]),
            labels(&[("", "web")]),
            labels(&[("role", "a,b")]),
            labels(&[("role", " web")]),
            labels(&[(&"k".repeat(64), "v")]),
            labels(&[("role", &"v".repeat(256))]),
        ] {
            assert_eq!(
                validate_labels(&bad).unwrap_err().field,
                "labels",
                "{bad:?}"
            );
        }
    }
}
