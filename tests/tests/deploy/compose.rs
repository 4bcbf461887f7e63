//! compose.yaml: the services that run the Sagaflow image, checked against
//! the binaries, the image and the certificates make-certs.sh makes.

use std::collections::{BTreeMap, BTreeSet};

use sagaflow_participants::Kind;
use serde_json::Value;

use super::code::{self, Certs};
use super::{image, root, text_at, yaml_documents};

/// The services beside Sagaflow's own that compose.yaml keeps.
const SUPPORT: [&str; 4] = ["certs", "postgres", "pubsub", "jaeger"];

/// Where the certificates volume is mounted in every service.
const CERTS_MOUNT: &str = "/certs";

/// A service's `environment`, values as strings.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(env) = service.get("environment").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_the_binaries_as_they_are() {
    let text = std::fs::read_to_string(root().join("compose.yaml")).expect("compose.yaml");
    let doc = yaml_documents(&text)
        .into_iter()
        .next()
        .expect("a document");
    let services = doc["services"].as_object().expect("services");
    let image = image::runtime();
    let certs = Certs::make();
    let mut problems = Vec::new();

    for s in SUPPORT {
        if !services.contains_key(s) {
            problems.push(format!("compose.yaml lost the {s} service"));
        }
    }
    // Built from the top-level Dockerfile, under one tag every service runs.
    let built: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .collect();
    let tag = match built.as_slice() {
        [(name, s)] => {
            if text_at(s, "/build/context").as_deref() != Some(".")
                || text_at(s, "/build/dockerfile").as_deref() != Some("Dockerfile")
            {
                problems.push(format!("{name}: build is not ./Dockerfile: {}", s["build"]));
            }
            text_at(s, "/image").expect("the built service names its image")
        }
        _ => panic!("compose.yaml should build the image in one service"),
    };

    // The Sagaflow services by the command they run.
    let mut running: BTreeMap<String, (String, code::Binary, BTreeMap<String, String>)> =
        BTreeMap::new();
    for (name, s) in services {
        if text_at(s, "/image").as_deref() != Some(tag.as_str()) {
            continue;
        }
        let command = strings(&s["command"]);
        let binary = match code::binary(&command) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        if !image.binaries.contains(&binary.name) {
            problems.push(format!("{name}: the image has no {}", binary.name));
        }
        let env = environment(s);
        for var in env.keys() {
            if !binary.reads(var) {
                problems.push(format!("{name}: {} does not read {var}", command.join(" ")));
            }
        }
        // Listening where other containers and the health check reach it.
        let http_port = match env.get(&binary.http_var).and_then(|a| code::host_port(a)) {
            Some((host, port)) if host == "0.0.0.0" => Some(port),
            other => {
                problems.push(format!(
                    "{name}: {} is {other:?}, not 0.0.0.0:PORT",
                    binary.http_var
                ));
                None
            }
        };
        if let Some(grpc) = &binary.grpc_var
            && !env.get(grpc).is_some_and(|a| a.starts_with("0.0.0.0:"))
        {
            problems.push(format!("{name}: {grpc} does not listen on 0.0.0.0"));
        }
        // The health check: readiness on the HTTP port, with a tool the
        // image has.
        let test = strings(&s["healthcheck"]["test"]);
        let url = http_port.map(|p| format!("http://127.0.0.1:{p}{}", code::READY_PATH));
        match test.as_slice() {
            [cmd, tool, .., last]
                if cmd == "CMD" && Some(last) == url.as_ref() && image.packages.contains(tool) => {}
            _ => problems.push(format!(
                "{name}: healthcheck {test:?} is not [CMD, <a tool in the image>, ..., {url:?}]"
            )),
        }
        // Certificate and token paths: files make-certs.sh makes, in the
        // mounted directory.
        let mounted = s["volumes"].as_array().is_some_and(|v| {
            v.iter()
                .any(|m| text_at(m, "/target").as_deref() == Some(CERTS_MOUNT))
        });
        for (var, value) in &env {
            if let Some(file) = value.strip_prefix(&format!("{CERTS_MOUNT}/"))
                && (!mounted || !certs.has(file))
            {
                problems.push(format!(
                    "{name}: {var}={value}: make-certs.sh makes no {file} there"
                ));
            }
        }
        running.insert(name.clone(), (command.join(" "), binary, env));
    }
    // Every participant the code has (both saga types'), under its own
    // name, beside the orchestrator and the relay.
    let mut wanted = vec![
        (
            "orchestrator".to_owned(),
            "sagaflow-orchestrator".to_owned(),
        ),
        (
            "outbox-relay".to_owned(),
            "sagaflow-outbox-relay".to_owned(),
        ),
    ];
    for kind in Kind::ALL {
        wanted.push((
            kind.name().to_owned(),
            format!("sagaflow-participant {kind}"),
        ));
    }
    for (name, command) in &wanted {
        if running.get(name).map(|r| &r.0) != Some(command) {
            problems.push(format!(
                "compose.yaml has no service {name} running `{command}`"
            ));
        }
    }

    // The orchestrator: its ports published, its participants where they
    // listen, under names their certificates carry, and a client
    // certificate with the name they pin.
    if let Some((_, binary, env)) = running.get("orchestrator") {
        let published = strings(&services["orchestrator"]["ports"]);
        for var in [Some(&binary.http_var), binary.grpc_var.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some((_, port)) = env.get(var).and_then(|a| code::host_port(a))
                && !published.contains(&format!("{port}:{port}"))
            {
                problems.push(format!(
                    "orchestrator: {var}'s port {port} is not published"
                ));
            }
        }
        let client_cert = env
            .get("SAGAFLOW_CLIENT_CERT")
            .and_then(|p| p.strip_prefix("/certs/"))
            .map(|f| certs.dns_names(f))
            .unwrap_or_default();
        let urls = code::participant_urls(env);
        // The saga definitions it runs: in the image, every one the code
        // ships, each participant they name with a URL.
        let (definition_problems, named) = image::check_definitions(
            &image,
            env.get("SAGAFLOW_DEFINITIONS_DIR").map(String::as_str),
            &urls.keys().cloned().collect(),
        );
        // Every participant is called by some saga it runs (once the
        // definitions load at all).
        let loaded = definition_problems.is_empty();
        problems.extend(
            definition_problems
                .into_iter()
                .map(|p| format!("orchestrator: {p}")),
        );
        for kind in Kind::ALL {
            if loaded && !named.contains(kind.name()) {
                problems.push(format!(
                    "orchestrator: no saga it runs calls the {kind} participant"
                ));
            }
        }
        let waits_for = &services["orchestrator"]["depends_on"];
        for (key, (url_var, url)) in &urls {
            let Some((host, port)) = code::host_port(url) else {
                problems.push(format!("orchestrator: {url_var}={url:?} has no host:port"));
                continue;
            };
            let Some((command, participant, penv)) = running.get(&host) else {
                problems.push(format!("orchestrator: {url_var} names no service {host}"));
                continue;
            };
            let upper = key.to_ascii_uppercase();
            let listen = participant.grpc_var.as_ref().and_then(|v| penv.get(v));
            if *command != format!("sagaflow-participant {key}") {
                problems.push(format!(
                    "orchestrator: {url_var} leads to {host}, which runs `{command}`, not the {key} participant"
                ));
            } else if listen.and_then(|a| code::host_port(a)).map(|hp| hp.1) != Some(port)
                || participant.grpc_var.as_deref() != Some(&format!("SAGAFLOW_{upper}_LISTEN"))
            {
                problems.push(format!(
                    "orchestrator: {url_var} is not where {host} listens"
                ));
            }
            if text_at(waits_for, &format!("/{host}/condition")).as_deref()
                != Some("service_healthy")
            {
                problems.push(format!(
                    "orchestrator: does not wait for {host} to be healthy"
                ));
            }
            let cert = penv
                .get("SAGAFLOW_TLS_CERT")
                .and_then(|p| p.strip_prefix("/certs/"));
            if !cert.is_some_and(|f| certs.dns_names(f).contains(&host)) {
                problems.push(format!("{host}: its certificate does not name {host}"));
            }
            let pinned = penv
                .get("SAGAFLOW_ALLOWED_CLIENT")
                .cloned()
                .unwrap_or_default();
            if !client_cert.contains(&pinned) {
                problems.push(format!("{host} pins {pinned:?}: the orchestrator's client certificate names {client_cert:?}"));
            }
        }
    }

    // Each participant on a database of its own, made by
    // create-databases.sql, whose outbox the relay publishes: an event left
    // in an outbox no relay reads never reaches the orchestrator, and its
    // saga waits out its deadlines.
    let created: BTreeSet<String> =
        std::fs::read_to_string(root().join("tests/compose/create-databases.sql"))
            .expect("create-databases.sql")
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("CREATE DATABASE ")
                    .map(|d| d.trim_end_matches(';').trim().to_owned())
            })
            .collect();
    let relayed: BTreeSet<&str> = running
        .get("outbox-relay")
        .and_then(|(_, _, env)| env.get("SAGAFLOW_RELAY_DATABASE_URLS"))
        .map(|urls| urls.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut databases: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, (command, _, env)) in &running {
        for (var, value) in env {
            if !var.ends_with("_DATABASE_URL") {
                continue;
            }
            let database = value.rsplit('/').next().unwrap_or_default();
            if !created.contains(database) {
                problems.push(format!(
                    "{name}: {var}: create-databases.sql does not create {database}"
                ));
            }
            if !command.starts_with("sagaflow-participant ") {
                continue;
            }
            if let Some(other) = databases.insert(value, name) {
                problems.push(format!("{name} and {other} share the database {value}"));
            }
            if !relayed.contains(value.as_str()) {
                problems.push(format!(
                    "outbox-relay: SAGAFLOW_RELAY_DATABASE_URLS lacks {name}'s database {value}: \
                     its events would never be published"
                ));
            }
        }
    }
    for url in &relayed {
        if !databases.contains_key(url) {
            problems.push(format!(
                "outbox-relay: SAGAFLOW_RELAY_DATABASE_URLS has {url}, no participant's database"
            ));
        }
    }

    // Postgres, the emulator and Jaeger where the services look for them.
    for (name, (_, _, env)) in &running {
        for (var, value) in env {
            let addresses: Vec<&str> = match var.as_str() {
                "PUBSUB_EMULATOR_HOST" | "OTEL_EXPORTER_OTLP_ENDPOINT" => vec![value],
                v if v.ends_with("_DATABASE_URL") || v.ends_with("_DATABASE_URLS") => {
                    value.split(',').collect()
                }
                _ => Vec::new(),
            };
            for address in addresses {
                match code::host_port(address) {
                    Some((host, _)) if services.contains_key(&host) => {}
                    other => problems.push(format!("{name}: {var}: {other:?} is no service")),
                }
            }
        }
    }
    let emulator_project = services["pubsub"]["command"]
        .as_str()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("--project="))
        })
        .map(str::to_owned);
    for (name, (_, _, env)) in &running {
        if env.get("SAGAFLOW_PUBSUB_PROJECT") != emulator_project.as_ref() {
            problems.push(format!(
                "{name}: SAGAFLOW_PUBSUB_PROJECT is not the emulator's project"
            ));
        }
    }
    // Every wait for health waits on a service that has a health check.
    for (name, s) in services {
        for (dep, condition) in s["depends_on"].as_object().into_iter().flatten() {
            if text_at(condition, "/condition").as_deref() == Some("service_healthy")
                && services
                    .get(dep)
                    .is_none_or(|d| d.get("healthcheck").is_none())
            {
                problems.push(format!(
                    "{name} waits for {dep} to be healthy: it has no health check"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "compose.yaml:\n  {}",
        problems.join("\n  ")
    );
}
