//! Templates: a saved run request with typed parameters, and the check of the values a
//! launch gives.
//!
//! Values reach the remote command only as environment variables, `JOBEXEC_PARAM_<NAME>`
//! (the name upper-cased), never pasted into the command text: a value such as
//! `x; rm -rf /` arrives as those bytes and runs nothing. Secret parameters take no default
//! (nothing secret is stored in a template) and their values travel apart from the job's
//! other fields (sealed at rest, never shown back).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{FieldError, RunRequest, valid_env_name};

named_enum! {
    /// What a parameter takes.
    pub enum ParamType ("parameter type") {
        /// Any text (optionally matching `pattern`).
        String = "string",
        /// A whole number.
        Integer = "integer",
        /// `true` or `false`.
        Boolean = "boolean",
        /// One of `choices`.
        Choice = "choice",
    }
}

/// One parameter of a template.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ParamDef {
    /// `[A-Za-z_][A-Za-z0-9_]*`, unique in the template (ignoring case): the command sees it
    /// as `JOBEXEC_PARAM_<NAME>`.
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    pub name: String,
    /// `string`, `integer`, `boolean` or `choice`.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// A launch must give it (unless it has a default).
    #[serde(default)]
    pub required: bool,
    /// The value when a launch does not give one (of the parameter's type; none for a
    /// secret parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub default: Option<Value>,
    /// `choice`: the values allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// `string`: a regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub pattern: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Sealed at rest and never shown back.
    #[serde(default)]
    pub secret: bool,
}

/// `POST /templates`, `PUT /templates/{name_or_id}`: a run request with a name and
/// parameters. An update replaces the whole definition.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct TemplateRequest {
    /// Unique name: 1 to 128 of letters, digits, `-`, `_`, `.`; what launches name.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: Option<String>,
    /// What it is for.
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// The typed parameters a launch gives (as `JOBEXEC_PARAM_<NAME>`).
    pub parameters: Option<Vec<ParamDef>>,
    /// The run: the job fields, `targets` and `strategy`, as `POST /runs` takes them.
    #[serde(flatten)]
    pub run: RunRequest,
}

/// Whether `name` is a template's name (it goes in paths).
pub fn valid_template_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Most parameters a template has.
pub const MAX_PARAMS: usize = 64;

impl ParamDef {
    /// The environment variable the command sees it as.
    pub fn env_name(&self) -> String {
        format!("JOBEXEC_PARAM_{}", self.name.to_ascii_uppercase())
    }

    fn regex(&self) -> Option<regex::Regex> {
        let p = self.pattern.as_deref()?;
        regex::Regex::new(&format!("^(?:{p})$")).ok()
    }

    /// `value` as the text the command gets, or why it is refused (the 422 names
    /// `parameters.<name>`).
    fn check(&self, value: &Value) -> Result<String, FieldError> {
        let field = format!("parameters.{}", self.name);
        // A secret's value is never quoted back.
        let refuse = |why: String| {
            let why = if self.secret {
                format!(
                    "the value is refused (a {}{})",
                    self.kind,
                    self.pattern
                        .as_ref()
                        .map_or(String::new(), |p| format!(" matching {p:?}"))
                )
            } else {
                why
            };
            Err(FieldError::new(field.clone(), why))
        };
        let text = match (self.kind, value) {
            (ParamType::String | ParamType::Choice, Value::String(s)) => s.clone(),
            (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            (ParamType::Integer, Value::Number(n))
                if n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15) =>
            {
                format!("{}", n.as_f64().unwrap_or_default() as i64)
            }
            (ParamType::Boolean, Value::Bool(b)) => b.to_string(),
            (kind, other) => return refuse(format!("{other} is not a {kind}")),
        };
        if text.contains('\0') {
            return refuse("must not contain NUL bytes".into());
        }
        if let Some(choices) = &self.choices
            && self.kind == ParamType::Choice
            && !choices.contains(&text)
        {
            let list = choices.join(", ");
            return refuse(format!("{text:?} is not one of the choices ({list})"));
        }
        if let Some(re) = self.regex()
            && !re.is_match(&text)
        {
            let pattern = self.pattern.as_deref().unwrap_or_default();
            return refuse(format!("does not match the pattern {pattern:?}"));
        }
        Ok(text)
    }
}

/// Check a template's parameter definitions; the 422 names `parameters`.
pub fn validate_params(defs: &[ParamDef]) -> Result<(), FieldError> {
    let bad = |why: String| Err(FieldError::new("parameters", why));
    if defs.len() > MAX_PARAMS {
        return bad(format!("has {} entries; at most {MAX_PARAMS}", defs.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for d in defs {
        let name = &d.name;
        if !valid_env_name(name) || name.len() > 64 {
            return bad(format!(
                "{name:?} is not a name ([A-Za-z_][A-Za-z0-9_]*, at most 64)"
            ));
        }
        if !seen.insert(name.to_ascii_uppercase()) {
            return bad(format!("{name:?} is defined twice (names ignore case)"));
        }
        if d.kind == ParamType::Choice && d.choices.as_ref().is_none_or(Vec::is_empty) {
            return bad(format!("{name:?} is a choice without choices"));
        }
        if d.kind != ParamType::Choice && d.choices.is_some() {
            return bad(format!("{name:?} has choices but is not a choice"));
        }
        if let Some(p) = &d.pattern {
            if d.kind != ParamType::String {
                return bad(format!("{name:?} has a pattern but is not a string"));
            }
            if p.chars().count() > 1024 || d.regex().is_none() {
                return bad(format!(
                    "the pattern of {name:?} is not a regular expression"
                ));
            }
        }
        if d.description
            .as_ref()
            .is_some_and(|t| t.chars().count() > 1024)
        {
            return bad(format!(
                "the description of {name:?} is longer than 1024 characters"
            ));
        }
        if let Some(default) = &d.default {
            if d.secret {
                return bad(format!(
                    "{name:?} is secret: it takes no default (give it at launch)"
                ));
            }
            if let Err(e) = d.check(default) {
                return bad(format!("the default of {name:?}: {}", e.message));
            }
        }
    }
    Ok(())
}

/// The values of a launch, checked: environment variables, the plain ones apart from the
/// secret ones, and the plain values as given (what the run records).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Launch {
    /// `JOBEXEC_PARAM_<NAME>` → value, for the parameters that are not secret.
    pub env: BTreeMap<String, String>,
    /// `JOBEXEC_PARAM_<NAME>` → value, for the secret parameters.
    pub secret_env: BTreeMap<String, String>,
    /// Name → value as given or defaulted, for the parameters that are not secret.
    pub values: BTreeMap<String, Value>,
}

/// Check a launch's values against the definitions: every value known and of its type,
/// every required parameter given (or defaulted). The 422 names `parameters.<name>`.
pub fn check_launch(
    defs: &[ParamDef],
    given: &BTreeMap<String, Value>,
) -> Result<Launch, FieldError> {
    if let Some(unknown) = given.keys().find(|k| !defs.iter().any(|d| &d.name == *k)) {
        return Err(FieldError::new(
            format!("parameters.{unknown}"),
            "the template has no such parameter",
        ));
    }
    let mut launch = Launch::default();
    for d in defs {
        let value = match given.get(&d.name).filter(|v| !v.is_null()) {
            Some(v) => v,
            None => match &d.default {
                Some(v) => v,
                None if d.required => {
                    return Err(FieldError::new(
                        format!("parameters.{}", d.name),
                        "is required",
                    ));
                }
                None => continue,
            },
        };
        let text = d.check(value)?;
        if d.secret {
            launch.secret_env.insert(d.env_name(), text);
        } else {
            launch.env.insert(d.env_name(), text);
            launch.values.insert(d.name.clone(), value.clone());
        }
    }
    Ok(launch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defs() -> Vec<ParamDef> {
        serde_json::from_value(json!([
            {"name": "version", "type": "string", "required": true, "pattern": "v[0-9]+(\\.[0-9]+)*"},
            {"name": "count", "type": "integer", "default": 2},
            {"name": "dry_run", "type": "boolean", "default": false},
            {"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": true},
            {"name": "note", "type": "string"},
            {"name": "token", "type": "string", "secret": true, "required": true},
        ]))
        .unwrap()
    }

    fn given(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_launch_gives_environment_variables_and_keeps_secrets_apart() {
        validate_params(&defs()).unwrap();
        let l = check_launch(
            &defs(),
            &given(
                json!({"version": "v1.2", "env": "prod", "token": "s3cret", "note": "x; rm -rf /"}),
            ),
        )
        .unwrap();
        assert_eq!(l.env["JOBEXEC_PARAM_VERSION"], "v1.2");
        assert_eq!(l.env["JOBEXEC_PARAM_COUNT"], "2");
        assert_eq!(l.env["JOBEXEC_PARAM_DRY_RUN"], "false");
        assert_eq!(l.env["JOBEXEC_PARAM_ENV"], "prod");
        assert_eq!(l.env["JOBEXEC_PARAM_NOTE"], "x; rm -rf /");
        assert_eq!(l.secret_env["JOBEXEC_PARAM_TOKEN"], "s3cret");
        assert!(!l.env.contains_key("JOBEXEC_PARAM_TOKEN"));
        assert!(!l.values.contains_key("token"));
        assert_eq!(l.values["count"], json!(2));
    }

    #[test]
    fn every_refusal_names_the_parameter() {
        let base = json!({"version": "v1", "env": "prod", "token": "t"});
        let with = |k: &str, v: Value| {
            let mut g = given(base.clone());
            g.insert(k.into(), v);
            g
        };
        let without = |k: &str| {
            let mut g = given(base.clone());
            g.remove(k);
            g
        };
        let cases = [
            (without("version"), "parameters.version"),
            (without("token"), "parameters.token"),
            (with("version", json!("1.2")), "parameters.version"),
            (with("version", json!(12)), "parameters.version"),
            (with("count", json!("2")), "parameters.count"),
            (with("count", json!(1.5)), "parameters.count"),
            (with("dry_run", json!("yes")), "parameters.dry_run"),
            (with("env", json!("dev")), "parameters.env"),
            (with("nope", json!(1)), "parameters.nope"),
            (with("note", json!("a\u{0}b")), "parameters.note"),
        ];
        for (g, field) in cases {
            let err = check_launch(&defs(), &g).unwrap_err();
            assert_eq!(err.field, field, "{g:?}: {err}");
        }
        // A whole number written as a float is an integer.
        let l = check_launch(&defs(), &with("count", json!(3.0))).unwrap();
        assert_eq!(l.env["JOBEXEC_PARAM_COUNT"], "3");
        // A refused secret is not quoted back.
        let err = check_launch(&defs(), &with("token", json!(["hunter2"]))).unwrap_err();
        assert!(!err.message.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_definitions_are_refused() {
        let bad = [
            json!([{"name": "1x", "type": "string"}]),
            json!([{"name": "a", "type": "string"}, {"name": "A", "type": "integer"}]),
            json!([{"name": "c", "type": "choice"}]),
            json!([{"name": "c", "type": "string", "choices": ["a"]}]),
            json!([{"name": "p", "type": "string", "pattern": "("}]),
            json!([{"name": "p", "type": "integer", "pattern": "1"}]),
            json!([{"name": "s", "type": "string", "secret": true, "default": "x"}]),
            json!([{"name": "d", "type": "integer", "default": "two"}]),
            json!([{"name": "d", "type": "choice", "choices": ["a"], "default": "b"}]),
        ];
        for defs in bad {
            let defs: Vec<ParamDef> = serde_json::from_value(defs.clone()).unwrap();
            assert_eq!(
                validate_params(&defs).unwrap_err().field,
                "parameters",
                "{defs:?}"
            );
        }
    }
}
