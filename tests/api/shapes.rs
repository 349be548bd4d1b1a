//! The query API answers in Twilio's own shapes: for each kind, the operation, the list, one
//! resource fetched by id, and the errors list are checked against tests/fixtures/twilio/
//! (Twilio's sample responses: their keys, nesting and order, values of our own) key for key and
//! in order, with tally's extras only after Twilio's fields (docs/contract.md, "The query API").

use crate::support::{
    app::{spawn_app, spawn_app_with, TestApp},
    cloudevent::CloudEvent,
    ordered::Ordered,
};
use serde_json::Value;

/// Twilio's sample of `name` (`messages-operation`, `emails-list`, …).
fn fixture(name: &str) -> Ordered {
    let path = format!(
        "{}/tests/fixtures/twilio/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    Ordered::parse(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// How a response may differ from Twilio's sample.
struct Rules {
    /// tally's extra keys allowed after Twilio's at a path (`.messages[]`, `.stats`), in the
    /// order they must come.
    extras: Vec<(String, Vec<&'static str>)>,
    /// Paths where tally shows `null` for an object Twilio fills (what tally never learns).
    unknown: Vec<String>,
}

impl Rules {
    fn extras_at(&self, path: &str) -> &[&'static str] {
        self.extras
            .iter()
            .find(|(p, _)| p == path)
            .map_or(&[], |(_, e)| e.as_slice())
    }
}

/// Compare `got` with Twilio's `want` from `path` down; every difference goes into `diffs`.
fn compare(path: &str, want: &Ordered, got: &Ordered, rules: &Rules, diffs: &mut Vec<String>) {
    match (want, got) {
        (Ordered::Object(w), Ordered::Object(g)) => {
            let want_keys = want.keys();
            let got_keys = got.keys();
            let (twilios, after) = got_keys.split_at(want_keys.len().min(got_keys.len()));
            if twilios != want_keys.as_slice() {
                diffs.push(format!(
                    "{path}: keys {got_keys:?}, Twilio's are {want_keys:?}"
                ));
                return;
            }
            let allowed = rules.extras_at(path);
            let in_order: Vec<&str> = allowed
                .iter()
                .copied()
                .filter(|k| after.contains(k))
                .collect();
            if after != in_order.as_slice() {
                diffs.push(format!(
                    "{path}: after Twilio's keys come {after:?}; only {allowed:?} may, in that order"
                ));
            }
            for (k, wv) in w {
                // Tags are the sender's own keys: a map, not a shape.
                if k == "tags" {
                    continue;
                }
                let gv = &g.iter().find(|(gk, _)| gk == k).expect("checked above").1;
                compare(&format!("{path}.{k}"), wv, gv, rules, diffs);
            }
        }
        (Ordered::Array(w), Ordered::Array(g)) => match (w.first(), g.is_empty()) {
            (Some(_), true) => diffs.push(format!("{path}: empty, Twilio's has items")),
            (Some(first), false) => {
                for item in g {
                    compare(&format!("{path}[]"), first, item, rules, diffs);
                }
            }
            (None, _) => {}
        },
        (Ordered::Object(_), Ordered::Null) if rules.unknown.iter().any(|u| u == path) => {}
        // A leaf tally does not know (or Twilio's sample leaves empty) may be null.
        (w, Ordered::Null) if !matches!(w, Ordered::Object(_) | Ordered::Array(_)) => {}
        (Ordered::Null, g) if !matches!(g, Ordered::Object(_) | Ordered::Array(_)) => {}
        (w, g) if w.type_name() == g.type_name() => {}
        (w, g) => diffs.push(format!(
            "{path}: a {}, Twilio's is a {}",
            g.type_name(),
            w.type_name()
        )),
    }
}

fn assert_shape(what: &str, want: &Ordered, got: &Ordered, rules: &Rules) {
    let mut diffs = vec![];
    compare("", want, got, rules, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what} differs from Twilio's shape:\n  {}\ngot: {got:?}",
        diffs.join("\n  ")
    );
}

async fn get_ordered(app: &TestApp, path: &str) -> Ordered {
    let resp = app.get(path).await;
    assert_eq!(resp.status.as_u16(), 200, "{path}: {}", resp.text());
    Ordered::parse(&resp.body)
}

/// One kind's check: what to seed and where tally's extras go.
struct Kind {
    family: &'static str,
    /// The list key, as in Twilio's sample.
    items: &'static str,
    fixture: &'static str,
    op: &'static str,
    /// A resource to fetch by id, and one that failed (for the errors list).
    one: String,
    failed: String,
    events: Vec<Value>,
    item_extras: Vec<&'static str>,
    stats_extras: Vec<&'static str>,
    /// Objects of Twilio's items that tally shows as `null`.
    unknown: Vec<&'static str>,
}

async fn check_kind(k: Kind) {
    // Arrange
    let app = spawn_app().await;
    app.apply_batch(&k.events).await;
    let with_attempts: Vec<&'static str> =
        k.item_extras.iter().copied().chain(["attempts"]).collect();
    let item_path = |p: &str| format!(".{}[]{p}", k.items);
    let rules_for = |root: &str, extras: &[&'static str]| Rules {
        extras: vec![
            (root.to_owned(), extras.to_vec()),
            (".stats".into(), k.stats_extras.clone()),
            (".operations[].stats".into(), k.stats_extras.clone()),
        ],
        unknown: k.unknown.iter().map(|u| format!("{root}.{u}")).collect(),
    };
    let operation = fixture(&format!("{}-operation", k.fixture));
    let list = fixture(&format!("{}-list", k.fixture));
    let Some(Ordered::Array(items)) = list.get(k.items) else {
        panic!("the fixture lists {}", k.items)
    };
    let item = items[0].clone();
    let pagination = list.get("pagination").expect("pagination").clone();
    let operations = Ordered::Object(vec![
        ("operations".into(), Ordered::Array(vec![operation.clone()])),
        ("pagination".into(), pagination.clone()),
    ]);
    let errors = Ordered::Object(vec![
        ("errors".into(), Ordered::Array(vec![item.clone()])),
        ("pagination".into(), pagination),
    ]);

    // Act
    let got_operation = get_ordered(&app, &format!("/v1/{}/Operations/{}", k.family, k.op)).await;
    let got_operations = get_ordered(&app, &format!("/v1/{}/Operations", k.family)).await;
    let got_list = get_ordered(&app, &format!("/v1/{}?operationId={}", k.family, k.op)).await;
    let got_one = get_ordered(&app, &format!("/v1/{}/{}", k.family, k.one)).await;
    let got_errors = get_ordered(
        &app,
        &format!("/v1/{}/Operations/{}/Errors", k.family, k.op),
    )
    .await;

    // Assert
    let no_extras = Rules {
        extras: vec![(".stats".into(), k.stats_extras.clone())],
        unknown: vec![],
    };
    assert_shape("the operation", &operation, &got_operation, &no_extras);
    assert_shape(
        "the operations list",
        &operations,
        &got_operations,
        &rules_for(".operations[]", &[]),
    );
    assert_shape(
        "the list",
        &list,
        &got_list,
        &rules_for(&item_path(""), &k.item_extras),
    );
    assert_shape(
        "one fetched by id",
        &item,
        &got_one,
        &rules_for("", &with_attempts),
    );
    assert_shape(
        "the errors list",
        &errors,
        &got_errors,
        &rules_for(".errors[]", &with_attempts),
    );
    // The extras are there where they are promised.
    for key in ["attemptCount", "channel", "attempts"] {
        assert!(
            got_one.get(key).is_some(),
            "{key} on a fetch by id: {got_one:?}"
        );
    }
    let Some(Ordered::Array(errs)) = got_errors.get("errors") else {
        panic!("errors: {got_errors:?}")
    };
    assert!(
        errs.iter()
            .any(|e| e.get("id") == Some(&Ordered::String(k.failed.clone()))),
        "{} is among the errors: {got_errors:?}",
        k.failed
    );
    assert!(
        errs.iter().any(|e| e.get("errorCode").is_some()),
        "errorCode on the errors: {got_errors:?}"
    );
}

const ITEM_EXTRAS: [&str; 4] = ["operationId", "channel", "errorCode", "attemptCount"];

#[actix_web::test]
async fn messages_answer_in_twilios_shape_with_extras_after() {
    let op = "comms_operation_01j0shapes0messages0000001";
    let id = |n: u32| format!("comms_message_01j0shapes0messages00000{n:02}");
    let events = vec![
        CloudEvent::message("delivered", op, &id(1), "SMshape1").json(),
        CloudEvent::message("failed", op, &id(2), "SMshape2r")
            .from("rcs:agent", "RCS")
            .error_code(63016)
            .json(),
        CloudEvent::message("sent", op, &id(2), "SMshape2s").json(),
        CloudEvent::message("queued", op, &id(3), "SMshape3").json(),
        CloudEvent::message("failed", op, &id(4), "SMshape4")
            .error_code(30003)
            .json(),
    ];
    check_kind(Kind {
        family: "Messages",
        items: "messages",
        fixture: "messages",
        op,
        one: id(2),
        failed: id(4),
        events,
        item_extras: ITEM_EXTRAS.to_vec(),
        stats_extras: vec![],
        unknown: vec!["from"],
    })
    .await;
}

#[actix_web::test]
async fn emails_answer_in_twilios_shape_with_extras_after() {
    let op = "comms_operation_01j0shapes0emails000000001";
    let id = |n: u32| format!("comms_email_01j0shapes0emails00000000{n:02}");
    let events = vec![
        CloudEvent::email("opened", op, &id(1), "ada@example.org").json(),
        CloudEvent::email("delivered", op, &id(2), "bob@example.org").json(),
        CloudEvent::email("failed", op, &id(3), "eve@example.org")
            .error_code(30010)
            .json(),
    ];
    check_kind(Kind {
        family: "Emails",
        items: "data",
        fixture: "emails",
        op,
        one: id(1),
        failed: id(3),
        events,
        // `operationId` is one of Twilio's own fields for an Email.
        item_extras: vec!["channel", "errorCode", "attemptCount"],
        stats_extras: vec!["recipients", "attempts"],
        unknown: vec!["from", "content"],
    })
    .await;
}

#[actix_web::test]
async fn push_notifications_answer_in_twilios_shape_with_extras_after() {
    let op = "comms_operation_01j0shapes0push00000000001";
    let id = |n: u32| format!("comms_notification_01j0shapes0push0000000{n:02}");
    let events = vec![
        CloudEvent::push("sent", op, &id(1)).json(),
        CloudEvent::push("failed", op, &id(2))
            .error_code(30040)
            .json(),
    ];
    check_kind(Kind {
        family: "PushNotifications",
        items: "notifications",
        fixture: "push",
        op,
        one: id(1),
        failed: id(2),
        events,
        item_extras: ITEM_EXTRAS.to_vec(),
        stats_extras: vec!["unaddressable", "scheduled", "canceled"],
        unknown: vec![],
    })
    .await;
}

/// Seed one message operation of three messages and list it by pages of one.
async fn first_page(app: &TestApp) -> Value {
    let op = "comms_operation_01j0shapes0paging000000001";
    let events: Vec<Value> = (1..=3)
        .map(|n| {
            let id = format!("comms_message_01j0shapes0paging0000000{n:02}");
            CloudEvent::message("sent", op, &id, &format!("SMpage{n}")).json()
        })
        .collect();
    app.apply_batch(&events).await;
    let resp = app
        .get(&format!("/v1/Messages?operationId={op}&pageSize=1"))
        .await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    resp.json()
}

#[actix_web::test]
async fn page_urls_are_absolute_on_the_request_host_or_the_public_url() {
    // Arrange: callbacks to the second app would be signed over its public URL, so it is
    // asked for an empty list, which still says where it is (`self`).
    let plain = spawn_app().await;
    let public =
        spawn_app_with(&[("TALLY_HTTP__PUBLIC_URL", "https://tally.example.com/base/")]).await;

    // Act
    let on_host = first_page(&plain).await;
    let on_public = public
        .get("/v1/Messages/Operations?pageSize=1")
        .await
        .json();

    // Assert
    let p = &on_host["pagination"];
    let next = p["next"].as_str().expect("a next page");
    let base = &plain.address;
    assert!(next.starts_with(&format!("{base}/v1/Messages?")), "{p}");
    assert!(next.contains("pageToken="), "{p}");
    let this = p["self"].as_str().expect("self");
    assert!(this.starts_with(&format!("{base}/v1/Messages?")), "{p}");
    assert_eq!(
        on_public["pagination"]["self"],
        "https://tally.example.com/base/v1/Messages/Operations?pageSize=1",
        "{on_public}"
    );
    // The next URL works as given.
    let path = next.strip_prefix(base.as_str()).expect("on this host");
    let second = plain.get(path).await.json();
    assert_eq!(second["messages"].as_array().map(Vec::len), Some(1));
    assert_ne!(second["messages"][0]["id"], on_host["messages"][0]["id"]);
}
