//! Checks ktrace's JSON records against the tables of `docs/json.md`: every
//! field a record has is documented with a matching type, and every field
//! documented as "always" is there.

use std::collections::HashMap;

use serde_json::Value;

const DOC: &str = include_str!("../../../../docs/json.md");

/// One documented field.
#[derive(Debug)]
struct Field {
    ty: String,
    always: bool,
}

/// Record name (`## name`) → field name → field.
fn records() -> HashMap<String, HashMap<String, Field>> {
    let mut out: HashMap<String, HashMap<String, Field>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in DOC.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            current = Some(h.trim().to_string());
            continue;
        }
        let Some(rec) = &current else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| field | type | present | meaning |" → ["", field, type, present, meaning, ""]
        if cells.len() < 6 || cells[1] == "field" || cells[1].starts_with("---") {
            continue;
        }
        out.entry(rec.clone())
            .or_default()
            .insert(cells[1].to_string(), Field { ty: cells[2].to_string(), always: cells[3] == "always" });
    }
    out
}

/// Panics, saying where, unless `value` matches the record `name` of docs/json.md.
pub fn check(name: &str, value: &Value) {
    let all = records();
    check_in(&all, name, value, name);
}

fn check_in(all: &HashMap<String, HashMap<String, Field>>, name: &str, value: &Value, at: &str) {
    let fields = all.get(name).unwrap_or_else(|| panic!("docs/json.md has no record `{name}`"));
    let obj = value.as_object().unwrap_or_else(|| panic!("{at}: not an object: {value}"));
    for (key, v) in obj {
        let f = fields.get(key).unwrap_or_else(|| panic!("{at}.{key} is not documented in docs/json.md ({v})"));
        check_type(all, &f.ty, v, &format!("{at}.{key}"));
    }
    for (key, f) in fields {
        assert!(!f.always || obj.contains_key(key), "{at}.{key} is documented as always present but missing: {value}");
    }
}

fn check_type(all: &HashMap<String, HashMap<String, Field>>, ty: &str, v: &Value, at: &str) {
    if let Some(inner) = ty.strip_suffix('?') {
        if v.is_null() {
            return;
        }
        return check_type(all, inner, v, at);
    }
    if let Some(inner) = ty.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let items = v.as_array().unwrap_or_else(|| panic!("{at}: expected an array, got {v}"));
        for (i, item) in items.iter().enumerate() {
            check_type(all, inner, item, &format!("{at}[{i}]"));
        }
        return;
    }
    if let Some(rec) = ty.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        return check_in(all, rec, v, at);
    }
    let ok = match ty {
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "any" => true,
        "address" => v.as_str().is_some_and(|s| {
            s.strip_prefix("0x")
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
        }),
        other => panic!("docs/json.md uses an unknown type `{other}` at {at}"),
    };
    assert!(ok, "{at}: expected {ty}, got {v}");
}

#[test]
fn the_document_parses() {
    let all = records();
    for name in ["hit", "backtrace", "frame", "source", "task", "cpu_backtrace", "info", "cpu_state"] {
        assert!(all.contains_key(name), "{name}");
    }
    assert!(all["hit"]["pc"].always && all["hit"]["pc"].ty == "address");
    assert!(!all["hit"]["backtrace"].always);
    check("layout_type", &serde_json::json!({"type": "task_struct", "size": 9792}));
    let bad = std::panic::catch_unwind(|| check("layout_type", &serde_json::json!({"type": "x", "size": "0x10"})));
    assert!(bad.is_err(), "a string where an integer is documented must fail");
    let bad = std::panic::catch_unwind(|| check("source", &serde_json::json!({"function": null})));
    assert!(bad.is_err(), "missing fields must fail");
}
