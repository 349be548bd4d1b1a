//! `[privacy] keep_recipient_addresses = false`: recipient addresses are dropped at ingest, so
//! neither the journal, the snapshots, memory nor the query API ever hold them.

use crate::support::{
    app::{spawn_app_with, TestApp},
    cloudevent::{CloudEvent, PHONE},
    scratch,
};
use std::path::Path;

const OP: &str = "comms_operation_01hprivacy0000000000000001";
const MSG: &str = "comms_message_01hprivacy00000000000000001";
const FORM_MSG: &str = "comms_message_01hprivacy00000000000000002";
const EMAIL_OP: &str = "comms_operation_01hprivacy0000000000000002";
const EMAIL: &str = "comms_email_01hprivacy000000000000000001";
const ADDRESS: &str = "jane.doe@example.com";

async fn spawn(dir: &Path, keep: bool) -> TestApp {
    spawn_app_with(&[
        ("TALLY_STORAGE__DIR", dir.to_str().expect("UTF-8 path")),
        (
            "TALLY_PRIVACY__KEEP_RECIPIENT_ADDRESSES",
            if keep { "true" } else { "false" },
        ),
    ])
    .await
}

/// Callbacks that carry a phone number and an e-mail address, by both routes.
async fn send_addresses(app: &TestApp) {
    app.apply_batch(&[
        CloudEvent::message("delivered", OP, MSG, "SM1").json(),
        CloudEvent::email("delivered", EMAIL_OP, EMAIL, ADDRESS).json(),
    ])
    .await;
    let resp = app
        .post_form(
            &[("operationId", OP), ("messageId", FORM_MSG)],
            &crate::support::cloudevent::sms_params("SM2", "sent"),
        )
        .await;
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
}

async fn addresses_shown(app: &TestApp) -> Vec<serde_json::Value> {
    vec![
        app.resource_json("Messages", MSG).await["to"][0]["address"].clone(),
        app.resource_json("Messages", FORM_MSG).await["to"][0]["address"].clone(),
        app.resource_json("Emails", EMAIL).await["to"]["address"].clone(),
    ]
}

/// Every byte tally wrote under `dir`, for a search.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                all.extend(std::fs::read(&path).expect("readable file"));
            }
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[actix_web::test]
async fn with_addresses_off_the_query_api_shows_null_and_the_journal_holds_none() {
    // Arrange
    let dir = scratch("privacy-off");
    let app = spawn(&dir, false).await;

    // Act
    send_addresses(&app).await;
    let shown = addresses_shown(&app).await;
    app.stop().await.expect("stops");
    let on_disk = files_under(&dir);
    let again = spawn(&dir, false).await;
    let after_restart = addresses_shown(&again).await;

    // Assert
    assert_eq!(shown, vec![serde_json::Value::Null; 3]);
    assert!(!on_disk.is_empty(), "the journal was written");
    assert!(contains(&on_disk, MSG), "the journal holds the events");
    for needle in [PHONE, "15558675310", ADDRESS, "jane.doe"] {
        assert!(!contains(&on_disk, needle), "{needle} is on disk");
    }
    assert_eq!(after_restart, vec![serde_json::Value::Null; 3]);
}

#[actix_web::test]
async fn switching_addresses_off_drops_those_already_journaled_as_they_are_replayed() {
    // Arrange: written while addresses were kept.
    let dir = scratch("privacy-switch");
    let app = spawn(&dir, true).await;
    send_addresses(&app).await;
    let kept = addresses_shown(&app).await;
    app.stop().await.expect("stops");

    // Act
    let app = spawn(&dir, false).await;
    let after = addresses_shown(&app).await;

    // Assert
    assert_eq!(
        kept,
        vec![
            serde_json::json!(PHONE),
            serde_json::json!(PHONE),
            serde_json::json!(ADDRESS)
        ]
    );
    assert_eq!(after, vec![serde_json::Value::Null; 3]);
}
