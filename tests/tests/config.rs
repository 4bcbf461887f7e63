//! Every binary answers `--help` with its usage and the variables it reads,
//! refuses flags it does not know, and refuses to start on a setting that
//! would wedge it, naming the variable and the rule. None of these runs
//! touches a database or the network: they end before.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sagaflow_tests::system::bin_dir;

/// Run `bin args` with `env`, killed if it is still running after 20 s
/// (a binary that starts working instead of refusing would hang here).
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_dir().expect("binaries built").join(bin));
    cmd.args(args)
        // Nothing reachable: a binary that tried to work would fail late,
        // not at once with the expected message.
        .env(
            "SAGAFLOW_ORCHESTRATOR_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
        .env("RUST_LOG", "error")
        // These tests are about other settings (security's own refusals
        // are tested with it).
        .env("SAGAFLOW_INSECURE", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawning");
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("waiting");
    drop(killer);
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_binary_answers_help_with_its_variables() {
    let cases: [(&str, &[&str], &[sagaflow_common::config::Var]); 3] = [
        ("sagaflow-orchestrator", &[], sagaflow_orchestrator_vars()),
        (
            "sagaflow-participant",
            &["payment"],
            sagaflow_participant_vars(),
        ),
        ("sagaflow-outbox-relay", &[], sagaflow_relay_vars()),
    ];
    for (bin, before, vars) in cases {
        for flag in ["--help", "-h"] {
            let args: Vec<&str> = before.iter().copied().chain([flag]).collect();
            let out = run(bin, &args, &[]);
            let stdout = text(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{bin} {flag}: {}",
                text(&out.stderr)
            );
            assert!(stdout.starts_with("usage: "), "{bin}: {stdout}");
            for v in vars.iter().chain(sagaflow_common::config::COMMON_VARS) {
                assert!(stdout.contains(v.name), "{bin} --help lacks {}", v.name);
            }
        }
    }
}

#[test]
fn unknown_flags_are_refused_before_anything_starts() {
    for (bin, args) in [
        ("sagaflow-orchestrator", vec!["--port=1"]),
        ("sagaflow-participant", vec!["order", "--verbose"]),
        ("sagaflow-outbox-relay", vec!["-x"]),
    ] {
        let out = run(bin, &args, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {stderr}");
        assert!(stderr.starts_with("unknown option"), "{bin}: {stderr}");
        assert!(stderr.contains("usage: "), "{bin}: {stderr}");
    }
}

/// A binary, its arguments, one setting, and the rule its refusal must say.
type Case<'a> = (&'a str, Vec<&'a str>, (&'a str, &'a str), &'a str);

#[test]
fn settings_that_would_wedge_or_overflow_are_refused_by_name() {
    let cases: Vec<Case> = vec![
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_CONSUMER_CONCURRENCY", "0"),
            "an integer within 1..=10000",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_MAX_CONCURRENT_SENDS", "0"),
            "an integer within 1..=100000",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_MAX_CONCURRENT_SENDS_PER_PARTICIPANT", "0"),
            "an integer within 1..=100000",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_MAX_QUEUED_SENDS", "-1"),
            "an integer within 1..=10000000",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_SUBSCRIBER_STREAMS", "0"),
            "an integer within 1..=64",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_TIMER_POLL_MS", "0"),
            "an integer within 10..=3600000",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_STEP_DEADLINE_MS", "3000"),
            "no longer read: step policies are set in the saga definition files",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_DEDUPE_RETENTION_SECS", "3600"),
            "at least SAGAFLOW_MESSAGE_RETENTION_SECS",
        ),
        (
            "sagaflow-orchestrator",
            vec![],
            ("SAGAFLOW_SUBSCRIPTION_ORDERING", "maybe"),
            "true or false",
        ),
        (
            "sagaflow-participant",
            vec!["order"],
            ("SAGAFLOW_DB_POOL_SIZE", "0"),
            "an integer within 1..=1000",
        ),
        (
            "sagaflow-participant",
            vec!["payment"],
            ("SAGAFLOW_INBOX_RETENTION_SECS", "1"),
            "an integer within 3600..=315360000",
        ),
        (
            "sagaflow-outbox-relay",
            vec![],
            ("SAGAFLOW_RELAY_MAX_IN_FLIGHT", "0"),
            "an integer within 1..=1000000",
        ),
        (
            "sagaflow-outbox-relay",
            vec![],
            ("SAGAFLOW_RELAY_POLL_INTERVAL_MS", "0"),
            "an integer within 1..=3600000",
        ),
    ];
    for (bin, args, (name, value), rule) in cases {
        let out = run(bin, &args, &[(name, value)]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{bin} started with {name}={value}");
        assert!(
            stderr.contains(&format!("{name}=")) && stderr.contains(rule),
            "{bin} with {name}={value} should name it and say {rule:?}: {stderr}"
        );
    }
}

/// The orchestrator refuses to start on a definitions directory with a
/// mistake in it, naming the file and the field (every kind of mistake is
/// checked by the parser's unit tests; these are the ones only a running
/// binary shows: its settings, the directory, several files).
#[test]
fn definitions_with_a_mistake_are_refused_naming_the_file_and_the_field() {
    let order = sagaflow_orchestrator::definitions::order::FILE;
    let extra = "type: shipment\nversion: 1\ninput_schema: true\nsteps:\n  - name: ship\n    participant: shipping\n    action: /ship.v1.Shipping/Ship\n    compensation: /ship.v1.Shipping/Recall\n";
    type Case<'a> = (Vec<(&'a str, String)>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("order.v1.yaml", order.to_owned()), ("shipment.v1.yaml", extra.to_owned())],
            vec![],
            "shipment.v1.yaml: steps[0].participant: no endpoint is configured for participant \"shipping\" (known: inventory, order, payment); set SAGAFLOW_PARTICIPANT_SHIPPING_URL".to_owned(),
        ),
        (
            vec![("order.v1.yaml", order.replace("/sagaflow.participant.v1.PaymentService/RefundPayment", "RefundPayment"))],
            vec![],
            "order.v1.yaml: steps[1].compensation: \"RefundPayment\" is not a gRPC method path".to_owned(),
        ),
        (
            vec![("order.v1.yaml", order.to_owned()), ("copy.yml", order.to_owned())],
            vec![],
            "order.v1.yaml: order version 1 is also defined by".to_owned(),
        ),
        (
            // A step after the pivot that is not declared forward-only.
            vec![("order.v1.yaml", format!("{order}\n  - name: notify_customer\n    participant: order\n    action: /sagaflow.participant.v1.OrderService/NotifyCustomer\n    compensation: none\n"))],
            vec![],
            "order.v1.yaml: steps[4].forward_only: it comes after approve_order, which cannot be undone (compensation: none), so it must be declared forward_only: true".to_owned(),
        ),
        (
            // A forward-only step with a compensation.
            vec![("order.v1.yaml", format!("{order}\n  - name: notify_customer\n    participant: order\n    action: /sagaflow.participant.v1.OrderService/NotifyCustomer\n    compensation: /sagaflow.participant.v1.OrderService/Unnotify\n    forward_only: true\n"))],
            vec![],
            "order.v1.yaml: steps[4].compensation: a forward-only step is never compensated".to_owned(),
        ),
        (
            vec![("notes.txt", "not a definition".to_owned())],
            vec![],
            "no definition files (*.yaml, *.yml) in it".to_owned(),
        ),
        (
            vec![("order.v1.yaml", order.replace("deadline: 10s", "deadline: 10 seconds"))],
            vec![],
            "order.v1.yaml: defaults.action.deadline: \"10 seconds\" is not a whole number and a unit".to_owned(),
        ),
        (
            // The alias and the generic name of one participant disagree.
            vec![("order.v1.yaml", order.to_owned())],
            vec![
                ("SAGAFLOW_ORDER_URL", "http://127.0.0.1:1"),
                ("SAGAFLOW_PARTICIPANT_ORDER_URL", "http://127.0.0.1:2"),
            ],
            "SAGAFLOW_PARTICIPANT_ORDER_URL=\"http://127.0.0.1:2\" and its alias SAGAFLOW_ORDER_URL=\"http://127.0.0.1:1\" disagree".to_owned(),
        ),
    ];
    for (files, env, want) in cases {
        let dir = std::env::temp_dir().join(format!("sf-defs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let dir_text = dir.display().to_string();
        let mut vars: Vec<(&str, &str)> = vec![("SAGAFLOW_DEFINITIONS_DIR", &dir_text)];
        vars.extend(env);
        let out = run("sagaflow-orchestrator", &[], &vars);
        let stderr = text(&out.stderr);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!out.status.success(), "started with {files:?}");
        assert!(stderr.contains(&want), "want {want:?} in: {stderr}");
    }
    // No such directory.
    let out = run(
        "sagaflow-orchestrator",
        &[],
        &[(
            "SAGAFLOW_DEFINITIONS_DIR",
            "/nonexistent/sagaflow-definitions",
        )],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("SAGAFLOW_DEFINITIONS_DIR=/nonexistent/sagaflow-definitions: cannot read it"),
        "{}",
        text(&out.stderr)
    );
}

fn sagaflow_orchestrator_vars() -> &'static [sagaflow_common::config::Var] {
    sagaflow_orchestrator::config::VARS
}

fn sagaflow_participant_vars() -> &'static [sagaflow_common::config::Var] {
    sagaflow_participants::config::VARS
}

fn sagaflow_relay_vars() -> &'static [sagaflow_common::config::Var] {
    outbox_relay::config::VARS
}

/// Run by hand against a fresh server, the orchestrator creates its own
/// database (as the participants do) and migrates it, before it looks for
/// Pub/Sub (unreachable here, so it goes no further).
#[tokio::test]
async fn the_orchestrator_creates_its_own_database() -> anyhow::Result<()> {
    let name = format!("sf_created_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let mut child = Command::new(bin_dir()?.join("sagaflow-orchestrator"))
        .env("SAGAFLOW_ORCHESTRATOR_DATABASE_URL", &url)
        .env("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
        .env("SAGAFLOW_INSECURE", "true")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let migrated = sagaflow_tests::wait_for(
        "the orchestrator to create and migrate its database",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let Ok(c) = sagaflow_common::db::connect(&url).await else {
                    return Ok(None);
                };
                let n: i64 = c
                    .query_one("SELECT count(*) FROM sagaflow_migrations", &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                Ok((n > 0).then_some(n))
            }
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let admin = sagaflow_common::db::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    migrated?;
    Ok(())
}

/// The settings page documents every variable the binaries read.
#[test]
fn every_variable_is_documented() {
    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/settings.md");
    let page = std::fs::read_to_string(&page).expect("docs/settings.md");
    let missing: Vec<&str> = sagaflow_common::config::COMMON_VARS
        .iter()
        .chain(sagaflow_orchestrator_vars())
        .chain(sagaflow_participant_vars())
        .chain(sagaflow_participant_kit::config::SHARED_VARS)
        .chain(sagaflow_relay_vars())
        .map(|v| v.name)
        .filter(|name| !page.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "docs/settings.md lacks {missing:?}");
}
