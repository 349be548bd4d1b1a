//! The real binary as Twilio's REST API: `tally simulate --serve-api` serves the operations
//! list, operations by id and the resources lists of every kind over its ground truth, behind
//! HTTP Basic auth, with a share of 429s, and counts what it served at `/stats`; `--verify`
//! checks a real tally against that truth.

mod support;

use base64::Engine;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use support::process::Tally;
use support::{http, scratch, TOKEN};
use tally::comms_api::{
    family, parse_resource_page, NextPage, OperationBody, OperationPage, ResourceSummary,
};
use tally::event::Kind;

const USER: &str = "ACsimulated";
const PASSWORD: &str = "simulated-api-secret";

/// A `tally simulate --serve-api` child, killed (by its id) when dropped.
struct Served {
    child: Child,
    port: u16,
    /// Each operation's line of the expected state: id → status.
    expected: BTreeMap<String, String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the simulator serving only, read its `api:` line and its expected operations.
fn serve(extra: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "simulate",
            "--serve-api",
            "127.0.0.1:0",
            "--serve-for",
            "60s",
        ])
        .args(["--api-username", USER, "--api-password", PASSWORD])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tally simulate starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("more output").expect("UTF-8 stdout");
    let port = next()
        .strip_prefix("api: http://127.0.0.1:")
        .expect("the api: line first")
        .parse()
        .expect("a port");
    let summary = next();
    let count: usize = summary
        .strip_prefix("expected: ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not the expected: line: {summary}"));
    let expected = (0..count)
        .map(|_| {
            let line = next();
            let mut words = line.split_whitespace();
            let id = words.next().expect("id").to_owned();
            (id, words.next().expect("status").to_owned())
        })
        .collect();
    Served {
        child,
        port,
        expected,
    }
}

/// What the test asked, per endpoint label and status, to compare with `/stats`.
type Asked = BTreeMap<String, BTreeMap<String, u64>>;

fn auth() -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    format!("Basic {token}")
}

/// GET with credentials, again at once after a 429 (which must carry Retry-After: 1).
fn get(s: &Served, path: &str, label: &str, asked: &mut Asked) -> http::RawResp {
    let auth = auth();
    loop {
        let r = http::request(s.port, "GET", path, &[("authorization", &auth)], b"");
        *asked
            .entry(label.to_owned())
            .or_default()
            .entry(r.status.to_string())
            .or_default() += 1;
        if r.status != 429 {
            return r;
        }
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    }
}

/// The path and query of an absolute `next` URL this API gave.
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("absolute http URL");
    rest[rest.find('/').expect("a path")..].to_owned()
}

/// Every operation of `kind`, two to a page.
fn all_operations(s: &Served, kind: Kind, asked: &mut Asked) -> (Vec<OperationBody>, usize) {
    let base = format!("/v1/{}/Operations?pageSize=2", family(kind));
    let label = format!("GET /v1/{}/Operations", family(kind));
    let (mut path, mut out, mut pages) = (base.clone(), Vec::new(), 0);
    loop {
        let r = get(s, &path, &label, asked);
        assert_eq!(r.status, 200, "{}", r.text());
        let page: OperationPage = serde_json::from_slice(&r.body).expect("an operations page");
        pages += 1;
        let p = &page.pagination;
        if kind == Kind::Emails {
            assert!(p.next.is_none() && p.page_size == Some(2), "{p:?}");
        } else {
            assert!(p.next_page_token.is_none() && p.self_.is_some(), "{p:?}");
        }
        out.extend(page.operations.iter().cloned());
        match page.pagination.next_page() {
            None => return (out, pages),
            Some(NextPage::Url(url)) => path = path_of(&url),
            Some(NextPage::Token(t)) => path = format!("{base}&pageToken={t}"),
        }
    }
}

/// Every resource of an operation, three to a page, with an optional status filter.
fn all_resources(
    s: &Served,
    kind: Kind,
    op: &str,
    status: &str,
    asked: &mut Asked,
) -> Vec<ResourceSummary> {
    let base = format!(
        "/v1/{}?operationId={op}&pageSize=3&status={status}",
        family(kind)
    );
    let label = format!("GET /v1/{}", family(kind));
    let (mut path, mut out) = (base.clone(), Vec::new());
    loop {
        let r = get(s, &path, &label, asked);
        assert_eq!(r.status, 200, "{}", r.text());
        let page = parse_resource_page(kind, &r.body).expect("a resources page");
        out.extend(page.items);
        match page.next {
            None => return out,
            Some(NextPage::Url(url)) => path = path_of(&url),
            Some(NextPage::Token(t)) => path = format!("{base}&pageToken={t}"),
        }
    }
}

#[test]
fn serve_api_answers_every_endpoint_of_every_kind_as_twilio_does() {
    // Arrange
    let s = serve(&[
        "--operations",
        "12",
        "--recipients",
        "7",
        "--kinds",
        "messages,emails,push",
        "--cancel",
        "0.3",
        "--scheduled",
        "0.2",
        "--api-429",
        "0.25",
        "--seed",
        "5",
    ]);
    let mut asked = Asked::new();

    // Act + Assert: every operation of every kind, paged, as the simulator printed it.
    let mut seen = BTreeMap::new();
    for kind in Kind::ALL {
        let (ops, pages) = all_operations(&s, kind, &mut asked);
        assert!(pages > 1 || ops.len() <= 2, "{kind:?}: {pages} pages");
        for op in ops {
            let one = get(
                &s,
                &format!("/v1/{}/Operations/{}", family(kind), op.id),
                &format!("GET /v1/{}/Operations/{{id}}", family(kind)),
                &mut asked,
            );
            let body: OperationBody = serde_json::from_slice(&one.body).expect("an operation");
            assert_eq!(body, op, "the list and the operation agree");
            let resources = all_resources(&s, kind, &op.id, "", &mut asked);
            let st = op.stats;
            assert_eq!(resources.len() as u64, st.total.expect("total"));
            let count = |w: &str| resources.iter().filter(|r| r.status == w).count() as u64;
            assert_eq!(Some(count("CANCELED")), st.canceled, "{op:?}");
            assert_eq!(Some(count("DELIVERED")), st.delivered, "{op:?}");
            assert_eq!(Some(count("SCHEDULED")), st.scheduled, "{op:?}");
            let filtered = all_resources(&s, kind, &op.id, "canceled,DELIVERED", &mut asked);
            assert!(filtered
                .iter()
                .all(|r| r.status == "CANCELED" || r.status == "DELIVERED"));
            assert_eq!(
                filtered.len() as u64,
                count("CANCELED") + count("DELIVERED")
            );
            seen.insert(op.id.clone(), op.status.clone().expect("status"));
        }
    }
    assert_eq!(seen, s.expected);
    assert!(seen.values().any(|v| v == "SCHEDULED"), "{seen:?}");

    // Without or with wrong credentials: 401, counted.
    let op = seen.keys().next().expect("an operation").clone();
    for headers in [vec![], vec![("authorization", "Basic dXNlcjp3cm9uZw==")]] {
        let r = http::request(s.port, "GET", "/v1/Messages/Operations", &headers, b"");
        assert_eq!(r.status, 401, "{}", r.text());
        *asked
            .entry("GET /v1/Messages/Operations".into())
            .or_default()
            .entry("401".into())
            .or_default() += 1;
    }
    // A bad filter: 400 naming it.
    let bad = get(
        &s,
        &format!("/v1/Emails?operationId={op}&status=READ"),
        "GET /v1/Emails",
        &mut asked,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("READ"), "{}", bad.text());

    // /stats counts exactly what was asked, and about a quarter of it was throttled.
    let stats = http::request(s.port, "GET", "/stats", &[], b"").json();
    let served: Asked = serde_json::from_value(stats["endpoints"].clone()).expect("endpoints");
    assert_eq!(served, asked);
    let total: u64 = asked.values().flat_map(|m| m.values()).sum();
    let throttled: u64 = asked.values().filter_map(|m| m.get("429")).sum();
    assert_eq!(stats["total"], total);
    let share = throttled as f64 / total as f64;
    assert!((0.15..0.35).contains(&share), "{throttled} of {total}");
}

#[test]
fn verify_checks_a_real_tally_against_twilios_view_and_waits_as_asked() {
    // Arrange
    let dir = scratch("simulate-verify");
    let tally = Tally::launch(&dir).start();
    let simulate = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["simulate", "--target", &tally.base(), "--token", TOKEN])
            .args(["--operations", "6", "--recipients", "5", "--quiet"])
            .args(["--kinds", "messages,emails", "--verify"])
            .args(extra)
            .output()
            .expect("tally simulate runs")
    };

    // Act
    let all = simulate(&["--seed", "3"]);
    let lossy = simulate(&[
        "--seed",
        "4",
        "--silent-kinds",
        "emails",
        "--drop",
        "0.5",
        "--verify-within",
        "1s",
    ]);

    // Assert: every callback sent, tally agrees; emails silent and messages lost, it cannot
    // (no reconciler here), and the simulator says so after reading more than once.
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(all.status.success(), "{}", text(&all));
    assert!(text(&all).contains("verify: 6 operations match, 0 differ (1 rounds)"));
    assert_eq!(lossy.status.code(), Some(1), "{}", text(&lossy));
    let out = text(&lossy);
    assert!(out.contains("HTTP 404"), "silent emails: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("  comms_operation_") && l.contains(": expected ")),
        "lost message callbacks show as differing stats: {out}"
    );
    assert!(out.contains("operations agree after"), "progress: {out}");
    assert!(!out.contains("(1 rounds)"), "read again: {out}");
}
