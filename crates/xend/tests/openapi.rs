//! `docs/openapi.json` against what xend really serves: the router's routes and
//! methods, the error codes of `src/error.rs`, and real replies of a running xend
//! checked key by key against the documented schemas.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::Duration;

use serde_json::Value;

const DOC: &str = include_str!("../../../docs/openapi.json");
const ROUTER: &str = include_str!("../src/api/mod.rs");
const ERRORS: &str = include_str!("../src/error.rs");

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("docs/openapi.json is JSON")
}

/// Every `.route("PATH", ...)` of the router with the methods its handler chain
/// serves (`get(..)`, `.post(..)`, `axum::routing::delete(..)`, ...).
fn router_routes() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut rest = ROUTER;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let open = rest.find('"').expect("route path literal");
        let close = open + 1 + rest[open + 1..].find('"').expect("end of path literal");
        let path = rest[open + 1..close].to_string();
        // The handler chain: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let mut end = rest.len();
        for (k, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let chain = &rest[close + 1..end];
        let mut methods = BTreeSet::new();
        for m in METHODS {
            let pat = format!("{m}(");
            let mut from = 0;
            while let Some(j) = chain[from..].find(&pat) {
                let at = from + j;
                let before = chain[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    methods.insert(m.to_string());
                }
                from = at + pat.len();
            }
        }
        assert!(!methods.is_empty(), "no method found for route {path}");
        out.insert(path, methods);
        rest = &rest[end..];
    }
    assert!(out.len() > 10, "parsed too few routes: {out:?}");
    out
}

fn documented_routes(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(p, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (p.clone(), methods)
        })
        .collect()
}

#[test]
fn every_route_of_the_router_is_documented_with_its_methods() {
    let served = router_routes();
    let documented = documented_routes(&doc());
    assert_eq!(
        served, documented,
        "docs/openapi.json's paths differ from the router's routes (left: served, right: documented)"
    );
}

/// `(status, code)` of every error xend's source can produce with a literal code.
fn source_error_codes() -> BTreeSet<(u16, String)> {
    let status = |name: &str| -> u16 {
        match name {
            "BAD_REQUEST" => 400,
            "UNAUTHORIZED" => 401,
            "NOT_FOUND" => 404,
            "METHOD_NOT_ALLOWED" => 405,
            "CONFLICT" => 409,
            "UNPROCESSABLE_ENTITY" => 422,
            "INTERNAL_SERVER_ERROR" => 500,
            "SERVICE_UNAVAILABLE" => 503,
            "GATEWAY_TIMEOUT" => 504,
            "INSUFFICIENT_STORAGE" => 507,
            "PAYLOAD_TOO_LARGE" => 413,
            "UNSUPPORTED_MEDIA_TYPE" => 415,
            other => panic!("add StatusCode::{other} to this test's table"),
        }
    };
    let mut out = BTreeSet::new();
    for src in [ERRORS, ROUTER] {
        let flat: String = src.split_whitespace().collect::<Vec<_>>().join(" ");
        for piece in flat.split("StatusCode::").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            let after = piece[name.len()..].trim_start();
            // `StatusCode::X, "code"` (a constructor) or `StatusCode::X => "code"` (a
            // match arm of the fallback codes).
            let Some(lit) = after
                .strip_prefix(", \"")
                .or_else(|| after.strip_prefix("=> \""))
            else {
                continue;
            };
            let code = lit.split('"').next().expect("code literal");
            out.insert((status(&name), code.to_string()));
        }
        // The fallback for statuses no arm names (any status: documented nowhere).
        if let Some(rest) = flat.split("_ => \"").nth(1) {
            if let Some(code) = rest.split('"').next() {
                out.insert((0, code.to_string()));
            }
        }
    }
    out
}

fn documented_codes(doc: &Value) -> BTreeSet<String> {
    doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .expect("ErrorBody.code enum")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect()
}

#[test]
fn error_codes_of_the_source_are_documented_with_their_statuses() {
    let doc = doc();
    let source = source_error_codes();
    assert!(source.len() >= 12, "parsed too few error codes: {source:?}");
    let source_codes: BTreeSet<String> = source.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        source_codes,
        documented_codes(&doc),
        "ErrorBody.code's enum differs from the codes of src/error.rs and src/api/mod.rs"
    );
    // Each operation's error responses name codes that xend gives with that status.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let st: u16 = status.parse().expect("numeric status");
                let codes = resp.get("x-error-codes");
                if st < 400 {
                    assert!(codes.is_none(), "{method} {path} {status} has error codes");
                    continue;
                }
                let codes = codes
                    .and_then(Value::as_array)
                    .unwrap_or_else(|| panic!("{method} {path} {status}: no x-error-codes"));
                assert!(!codes.is_empty(), "{method} {path} {status}: empty");
                for c in codes {
                    let c = c.as_str().unwrap().to_string();
                    assert!(
                        source.contains(&(st, c.clone())),
                        "{method} {path}: xend never answers {status} with code {c}"
                    );
                }
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorReply",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, v: &Value, at: &str) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let ptr = r.strip_prefix('#').expect("local $ref");
                    assert!(doc.pointer(ptr).is_some(), "{at}: {r} does not resolve");
                }
                for (k, x) in m {
                    walk(doc, x, &format!("{at}/{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(doc, x, at)),
            _ => {}
        }
    }
    let d = doc();
    walk(&d, &d, "");
}

// ------------------------------------------------------------------ schema checker

/// Checks `value` against `schema`: every key of every object is a documented
/// property (or the schema allows extra ones), every required key is present, nulls
/// only where nullable, and types and enums match. Problems go into `errs`.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
            Some(target) => check(doc, target, value, at, errs),
            None => errs.push(format!("{at}: unresolved {r}")),
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_is = |want: &str| ty == Some(want);
    match value {
        Value::Null => {
            if schema.get("nullable") != Some(&Value::Bool(true)) {
                errs.push(format!("{at}: null, but the schema is not nullable"));
            }
        }
        Value::Bool(_) => {
            if !type_is("boolean") {
                errs.push(format!("{at}: a boolean, documented as {ty:?}"));
            }
        }
        Value::Number(n) => {
            let ok = match ty {
                Some("number") => true,
                Some("integer") => n.is_u64() || n.is_i64(),
                _ => false,
            };
            if !ok {
                errs.push(format!("{at}: the number {n}, documented as {ty:?}"));
            }
        }
        Value::String(s) => {
            if !type_is("string") {
                errs.push(format!("{at}: a string, documented as {ty:?}"));
            } else if let Some(e) = schema.get("enum").and_then(Value::as_array) {
                if !e.iter().any(|x| x.as_str() == Some(s)) {
                    errs.push(format!("{at}: {s:?} is not in the documented enum"));
                }
            }
        }
        Value::Array(items) => {
            if !type_is("array") {
                errs.push(format!("{at}: an array, documented as {ty:?}"));
                return;
            }
            for (i, x) in items.iter().enumerate() {
                check(doc, &schema["items"], x, &format!("{at}[{i}]"), errs);
            }
        }
        Value::Object(m) => {
            if !type_is("object") {
                errs.push(format!("{at}: an object, documented as {ty:?}"));
                return;
            }
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap_or_default();
                if !m.contains_key(req) {
                    errs.push(format!("{at}: required key {req:?} is missing"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema
                .get("additionalProperties")
                .filter(|a| **a != Value::Bool(false));
            for (k, x) in m {
                let here = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => check(doc, s, x, &here, errs),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(s)) => check(doc, s, x, &here, errs),
                    (None, None) => errs.push(format!("{here}: key not documented")),
                }
            }
        }
    }
}

/// The documented reply schema of `method path` with `status` (and its error codes).
fn reply_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let resp = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, which is not documented"
    );
    &resp["content"]["application/json"]["schema"]
}

/// Asserts that a real reply matches what the document says for it; for an error
/// reply, also that its code is one the operation lists for that status.
fn assert_documented(doc: &Value, method: &str, path: &str, (status, body): &(u16, Value)) {
    let schema = reply_schema(doc, method, path, *status);
    let mut errs = Vec::new();
    check(
        doc,
        schema,
        body,
        &format!("{method} {path} {status}"),
        &mut errs,
    );
    assert!(
        errs.is_empty(),
        "reply does not match the document:\n{}\n{body:#}",
        errs.join("\n")
    );
    if *status >= 400 {
        let code = &body["error"]["code"];
        let listed = &doc["paths"][path][method]["responses"][status.to_string()]["x-error-codes"];
        assert!(
            listed.as_array().is_some_and(|l| l.contains(code)),
            "{method} {path} {status}: code {code} is not in its x-error-codes {listed}"
        );
    }
}

#[test]
fn the_checker_finds_undocumented_and_missing_keys() {
    let d = doc();
    let schema = serde_json::json!({"$ref": "#/components/schemas/UptimeReply"});
    let mut errs = Vec::new();
    check(
        &d,
        &schema,
        &serde_json::json!({"name": "a", "domid": 1, "uptime_s": null}),
        "ok",
        &mut errs,
    );
    assert!(errs.is_empty(), "{errs:?}");
    check(
        &d,
        &schema,
        &serde_json::json!({"name": "a", "domid": 1, "uptime_s": 1.0, "extra": 1}),
        "extra",
        &mut errs,
    );
    check(
        &d,
        &schema,
        &serde_json::json!({"name": "a", "uptime_s": 1.0}),
        "missing",
        &mut errs,
    );
    check(
        &d,
        &schema,
        &serde_json::json!({"name": null, "domid": 1, "uptime_s": 1.0}),
        "null",
        &mut errs,
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
}

// ------------------------------------------------------------------ real replies

#[test]
fn replies_of_a_running_xend_match_the_document() {
    let d = doc();
    let env = Env::start("openapi");
    // The served document is this file.
    let (s, served) = env.get("/openapi.json");
    assert_eq!(s, 200);
    assert_eq!(served, d, "/openapi.json serves docs/openapi.json");

    assert_documented(&d, "get", "/health", &env.get("/health"));
    assert_documented(&d, "get", "/info", &env.get("/info"));
    // Domain-0 is listed first and readable by id and by name.
    let list = env.get("/domains");
    assert_documented(&d, "get", "/domains", &list);
    assert_eq!(list.1[0]["domid"], 0);
    for id in ["0", "Domain-0"] {
        let r = env.get(&format!("/domains/{id}"));
        assert_eq!(r.1["name"], "Domain-0");
        assert_documented(&d, "get", "/domains/{id}", &r);
        assert_documented(
            &d,
            "get",
            "/domains/{id}/uptime",
            &env.get(&format!("/domains/{id}/uptime")),
        );
    }
    // Errors.
    assert_documented(&d, "get", "/domains/{id}", &env.get("/domains/nosuch"));
    let r = env.delete("/domains/0");
    assert_eq!((r.0, r.1["error"]["code"].as_str()), (409, Some("domain0")));
    assert_documented(&d, "delete", "/domains/{id}", &r);
    assert_documented(
        &d,
        "post",
        "/domains/{id}/pause",
        &env.post("/domains/Domain-0/pause", ""),
    );
    let r = env.post("/domains", r#"{"cfg": "x"}"#);
    assert_eq!(r.0, 400, "{}", r.1);
    assert_documented(&d, "post", "/domains", &r);
    let r = env.post("/domains", r#"{"config": "name = 'x'\nmemory = 7"}"#);
    assert_eq!(r.0, 422, "{}", r.1);
    assert_documented(&d, "post", "/domains", &r);
    let r = env.post("/domains", r#"{"spec": {"name": "Domain-0"}}"#);
    assert_eq!(r.0, 409, "{}", r.1);
    assert_documented(&d, "post", "/domains", &r);
    let r = env.post("/domains/Domain-0/shutdown?wait=nope", "");
    assert_eq!(r.0, 400, "{}", r.1);
    assert_documented(&d, "post", "/domains/{id}/shutdown", &r);
    // A managed domain: its reply, and its halted entry in the list.
    let r = env.post(
        "/managed",
        r#"{"config": "name = 'kept'\ndisk = ['file:/x.img,xvda,w']\nvif = ['bridge=br0']"}"#,
    );
    assert_eq!(r.0, 201, "{}", r.1);
    assert_documented(&d, "post", "/managed", &r);
    let list = env.get("/domains");
    assert_documented(&d, "get", "/domains", &list);
    assert!(list
        .1
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["state"] == "halted"));
    assert_documented(&d, "get", "/domains/{id}", &env.get("/domains/kept"));
    assert_documented(
        &d,
        "post",
        "/managed",
        &env.post("/managed", r#"{"spec": {"name": "kept"}}"#),
    );
    assert_documented(
        &d,
        "delete",
        "/managed/{name}",
        &env.delete("/managed/nosuch"),
    );
    assert_eq!(env.delete("/managed/kept").0, 204);

    if !kvm_available("replies_of_a_running_xend_match_the_document (domain part)") {
        return;
    }
    // The event stream, opened before the domain is created.
    let events_agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut events = events_agent.get(env.url("/events")).call().unwrap();
    assert_eq!(events.status().as_u16(), 200);

    let r = env.post(
        "/domains",
        r#"{"config": "name = 'doc'\nmemory = 64\nvcpus = 1\nmaxvcpus = 2\ncolour = 'red'", "paused": true}"#,
    );
    assert_eq!(r.0, 201, "{}", r.1);
    assert_documented(&d, "post", "/domains", &r);
    assert_eq!(r.1["domain"]["state"], "paused");
    assert!(!r.1["warnings"].as_array().unwrap().is_empty());
    let list = env.get("/domains");
    assert_documented(&d, "get", "/domains", &list);
    assert_eq!(list.1.as_array().unwrap().len(), 2);
    assert_documented(&d, "get", "/domains/{id}", &env.get("/domains/doc"));
    assert_documented(
        &d,
        "post",
        "/domains/{id}/pause",
        &env.post("/domains/doc/pause", ""),
    );
    assert_documented(
        &d,
        "post",
        "/domains/{id}/unpause",
        &env.post("/domains/doc/unpause", ""),
    );
    assert_documented(
        &d,
        "post",
        "/domains/{id}/vcpus",
        &env.post("/domains/doc/vcpus", r#"{"count": 9}"#),
    );
    assert_documented(
        &d,
        "post",
        "/domains/{id}/rename",
        &env.post("/domains/doc/rename", r#"{"name": "doc2"}"#),
    );
    assert_documented(
        &d,
        "get",
        "/domains/{id}/uptime",
        &env.get("/domains/doc2/uptime"),
    );
    // Disks: hot-plug (and its refusals), the list, removal.
    let img = env.dir.join("doc.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let body = serde_json::json!({ "disk": format!("file:{},xvdb,w", img.display()) });
    let r = env.post("/domains/doc2/disks", &body.to_string());
    assert_eq!(r.0, 201, "{}", r.1);
    assert_documented(&d, "post", "/domains/{id}/disks", &r);
    let r = env.post("/domains/doc2/disks", &body.to_string());
    assert_eq!(r.0, 409, "{}", r.1);
    assert_documented(&d, "post", "/domains/{id}/disks", &r);
    let r = env.post("/domains/doc2/disks", r#"{"disk": "nonsense"}"#);
    assert_eq!(r.0, 422, "{}", r.1);
    assert_documented(&d, "post", "/domains/{id}/disks", &r);
    let r = env.get("/domains/doc2/disks");
    assert_eq!(r.1.as_array().map(Vec::len), Some(1), "{}", r.1);
    assert_documented(&d, "get", "/domains/{id}/disks", &r);
    let r = env.delete("/domains/doc2/disks/xvdb?wait=0");
    assert_eq!(r.0, 200, "{}", r.1);
    assert_documented(&d, "delete", "/domains/{id}/disks/{dev}", &r);
    let r = env.delete("/domains/doc2/disks/xvdb");
    assert_eq!(r.0, 404, "{}", r.1);
    assert_documented(&d, "delete", "/domains/{id}/disks/{dev}", &r);
    let r = env.post("/domains", r#"{"config": "name = 'doc2'"}"#);
    assert_eq!(r.0, 409, "{}", r.1);
    assert_documented(&d, "post", "/domains", &r);
    assert_documented(&d, "get", "/info", &env.get("/info"));

    // The first event's data is a documented DomainEvent.
    let event_schema = &d["paths"]["/events"]["get"]["responses"]["200"]["x-event-data"];
    let mut lines = std::io::BufReader::new(events.body_mut().as_reader()).lines();
    let data = loop {
        let line = lines
            .next()
            .expect("an event before the stream ends")
            .unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            break serde_json::from_str::<Value>(data.trim()).unwrap();
        }
    };
    let mut errs = Vec::new();
    check(&d, event_schema, &data, "event", &mut errs);
    assert!(errs.is_empty(), "{}\n{data:#}", errs.join("\n"));
}
