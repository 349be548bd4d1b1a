//! `tally simulate` against a real tally: shuffled, duplicated reports through both doors must
//! leave every operation exactly as the simulator's own model says.

use crate::support::app::spawn_app;
use std::rc::Rc;
use tally::event::Kind;
use tally::simulate::client::{self, ClientConfig};
use tally::simulate::{Config, Mix, Scenario};

fn client_config(address: &str, token: &str) -> ClientConfig {
    ClientConfig {
        target: address.to_owned(),
        public_url: None,
        token: token.to_owned(),
        rate: None,
        duration: None,
        concurrency: 8,
        threads: 2,
        max_tries: 1,
        api_user: None,
        progress: false,
    }
}

fn scenario(mix: Mix, seed: u64) -> Scenario {
    Scenario::generate(&Config {
        operations: 24,
        recipients: 25,
        duplicates: 0.25,
        shuffle: true,
        mix,
        kinds: vec![Kind::Messages, Kind::Emails, Kind::PushNotifications],
        seed,
        ..Config::default()
    })
}

#[actix_web::test]
async fn a_shuffled_duplicated_simulation_through_both_doors_verifies() {
    // Arrange
    let app = spawn_app().await;
    let cfg = client_config(&app.address, &app.token);
    let scenario = scenario(Mix::Both, 7);

    // Act
    let outcome = client::run(&scenario, 20, &cfg, true).await;

    // Assert
    let run = &outcome.run;
    assert!(run.complete, "{run:?}");
    assert_eq!((run.errors, run.acked), (0, run.requests), "{run:?}");
    assert_eq!(run.received, run.events_sent, "{run:?}");
    assert_eq!(run.rejected, 0, "{run:?}");
    assert!(
        run.noop > 0,
        "duplicates must reach tally as no-ops: {run:?}"
    );
    let verify = outcome.verify.expect("verified");
    assert_eq!(verify.mismatched, 0, "{:?}", verify.details);
    assert_eq!(verify.matched, 24);
}

#[actix_web::test]
async fn classic_callbacks_linked_only_once_are_held_then_linked() {
    // Arrange: every message attempt comes as form callbacks, some without their query links.
    let app = spawn_app().await;
    let cfg = client_config(&app.address, &app.token);
    let scenario = scenario(Mix::Status, 8);

    // Act
    let outcome = client::run(&scenario, 20, &cfg, true).await;

    // Assert
    assert_eq!(outcome.run.errors, 0, "{:?}", outcome.run);
    let verify = outcome.verify.expect("verified");
    assert_eq!(verify.mismatched, 0, "{:?}", verify.details);
    let scrape = app.metrics().await;
    assert_eq!(
        scrape.sum("tally_held_attempts", &[]),
        0.0,
        "every held attempt was linked"
    );
}

#[actix_web::test]
async fn verify_reports_operations_tally_never_saw() {
    // Arrange: nothing is sent, so every expected operation is missing.
    let app = spawn_app().await;
    let cfg = client_config(&app.address, &app.token);
    let scenario = scenario(Mix::Events, 9);

    // Act
    let report = client::verify(Rc::new(scenario.expected()), &cfg).await;

    // Assert
    assert_eq!((report.matched, report.mismatched), (0, 24));
    assert!(
        report.details[0].1[0].contains("404"),
        "{:?}",
        report.details
    );
}

#[test]
fn the_simulators_debug_output_shows_no_token_or_api_credentials() {
    let mut cfg = client_config("http://127.0.0.1:9", "secret-auth-token-xyz");
    cfg.api_user = Some("ops:secret-password-xyz".into());
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("secret-auth-token-xyz"), "{shown}");
    assert!(!shown.contains("secret-password-xyz"), "{shown}");
}
