//! The Kubernetes manifests: both overlays rendered with `kubectl kustomize`
//! as an operator would deploy them, and every Sagaflow container in them
//! checked against the binaries, the image, the certificates make-certs.sh
//! makes and the Secrets deploy/k8s/README.md tells the operator to create.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use sagaflow_participants::Kind;
use serde_json::Value;

use super::code::{self, Binary, Certs};
use super::image::{self, Image};
use super::{root, text_at, yaml_documents};

/// Time a pod keeps after its shutdown bound, for the HTTP server and the
/// database pools to close.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(10);

/// The Kubernetes default when a pod does not say.
const DEFAULT_GRACE_SECS: u64 = 30;

/// What the objects of one overlay render to.
struct Rendered {
    overlay: &'static str,
    objects: Vec<Value>,
}

impl Rendered {
    fn of(overlay: &'static str) -> Self {
        let dir = root().join("deploy/k8s/overlays").join(overlay);
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running kubectl: {e}. These checks render the manifests with \
                     `kubectl kustomize` (no cluster needed): install kubectl, e.g. \
                     `apt-get install kubectl` from the Google Cloud CLI's apt repository \
                     (the one the Pub/Sub emulator comes from)"
                )
            });
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let objects = yaml_documents(&String::from_utf8(out.stdout).expect("UTF-8"));
        Self { overlay, objects }
    }

    fn all(&self, kind: &'static str) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(move |o| o["kind"].as_str() == Some(kind))
    }

    fn named(&self, kind: &'static str, name: &str) -> Option<&Value> {
        self.all(kind)
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
    }

    /// Deployments and StatefulSets.
    fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.all("Deployment").chain(self.all("StatefulSet"))
    }

    /// The workloads whose pods `selector` (matchLabels or a Service's
    /// selector) selects.
    fn selected<'a>(&'a self, selector: &'a Value) -> impl Iterator<Item = &'a Value> + 'a {
        self.workloads()
            .filter(move |w| labels_match(selector, &w["spec"]["template"]["metadata"]["labels"]))
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone)]
enum Source {
    Literal(String),
    Secret { name: String, key: String },
}

/// One Sagaflow container as it runs.
struct Container<'a> {
    /// `Deployment/name`, for messages.
    at: String,
    workload: &'a Value,
    pod: &'a Value,
    spec: &'a Value,
    /// `command` and `args`, joined with spaces.
    command: String,
    binary: Binary,
    env: BTreeMap<String, Source>,
}

impl Container<'_> {
    fn literal(&self, var: &str) -> Option<&str> {
        match self.env.get(var)? {
            Source::Literal(v) => Some(v),
            Source::Secret { .. } => None,
        }
    }

    /// The container port `port` (a number or a port name) is.
    fn port(&self, port: &Value) -> Option<u16> {
        match port {
            Value::Number(n) => n.as_u64().and_then(|n| n.try_into().ok()),
            Value::String(name) => self.spec["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| n.try_into().ok()),
            _ => None,
        }
    }

    fn declares_port(&self, port: u16) -> bool {
        self.spec["ports"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["containerPort"].as_u64() == Some(port.into()))
        })
    }

    /// The Secret and key a file path in the container comes from.
    fn file_source(&self, path: &str) -> Option<(String, String)> {
        let (dir, file) = path.rsplit_once('/')?;
        let mount = self.spec["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(dir))?;
        let volume = self.pod["spec"]["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == mount["name"])?;
        let secret = volume["secret"]["secretName"].as_str()?.to_owned();
        let key = match volume["secret"]["items"].as_array() {
            Some(items) => items.iter().find(|i| i["path"].as_str() == Some(file))?["key"]
                .as_str()?
                .to_owned(),
            None => file.to_owned(),
        };
        Some((secret, key))
    }
}

/// The image's name without registry, path or tag: whether a container runs
/// Sagaflow's image.
fn is_sagaflow(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split([':', '@']).next() == Some("sagaflow")
}

/// Every Sagaflow container of the overlay, its environment resolved.
fn containers<'a>(r: &'a Rendered, problems: &mut Vec<String>) -> Vec<Container<'a>> {
    let mut found = Vec::new();
    for w in r.workloads() {
        let pod = &w["spec"]["template"];
        for spec in pod["spec"]["containers"].as_array().into_iter().flatten() {
            if !spec["image"].as_str().is_some_and(is_sagaflow) {
                continue;
            }
            let at = format!(
                "{}/{} {}",
                w["kind"].as_str().unwrap_or("?"),
                w["metadata"]["name"].as_str().unwrap_or("?"),
                spec["name"].as_str().unwrap_or("?")
            );
            let command: Vec<String> = spec["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec["args"].as_array().into_iter().flatten())
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            let binary = match code::binary(&command) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let mut env = BTreeMap::new();
            for from in spec["envFrom"].as_array().into_iter().flatten() {
                let Some(name) = from["configMapRef"]["name"].as_str() else {
                    problems.push(format!(
                        "{at}: envFrom {from}: only ConfigMaps (a Secret's keys are not known here)"
                    ));
                    continue;
                };
                match r.named("ConfigMap", name) {
                    Some(cm) => {
                        for (k, v) in cm["data"].as_object().into_iter().flatten() {
                            let v = v.as_str().unwrap_or_default().to_owned();
                            env.insert(k.clone(), Source::Literal(v));
                        }
                    }
                    None => problems.push(format!("{at}: envFrom names no ConfigMap {name}")),
                }
            }
            for e in spec["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default().to_owned();
                let source = if let Some(v) = text_at(e, "/value") {
                    Source::Literal(v)
                } else if let (Some(n), Some(k)) = (
                    text_at(e, "/valueFrom/secretKeyRef/name"),
                    text_at(e, "/valueFrom/secretKeyRef/key"),
                ) {
                    Source::Secret { name: n, key: k }
                } else if let (Some(n), Some(k)) = (
                    text_at(e, "/valueFrom/configMapKeyRef/name"),
                    text_at(e, "/valueFrom/configMapKeyRef/key"),
                ) {
                    match r
                        .named("ConfigMap", &n)
                        .and_then(|cm| text_at(cm, &format!("/data/{k}")))
                    {
                        Some(v) => Source::Literal(v),
                        None => {
                            problems.push(format!("{at}: {name}: no key {k} in ConfigMap {n}"));
                            continue;
                        }
                    }
                } else {
                    problems.push(format!("{at}: {name}: a value this check does not know"));
                    continue;
                };
                env.insert(name, source);
            }
            found.push(Container {
                at,
                workload: w,
                pod,
                spec,
                command: command.join(" "),
                binary,
                env,
            });
        }
    }
    found
}

/// What a key of a Secret the README creates is made from.
#[derive(Debug, Clone)]
enum Made {
    /// `--from-file=KEY=PATH`: the path.
    File(String),
    /// `--from-literal=KEY=VALUE`: the value (an example's).
    Literal(String),
}

/// The Secrets deploy/k8s/README.md creates (`kubectl create secret generic
/// NAME --from-file=KEY=PATH --from-literal=KEY=VALUE`): name → key → what
/// it is made from.
fn readme_secrets() -> BTreeMap<String, BTreeMap<String, Made>> {
    let text = std::fs::read_to_string(root().join("deploy/k8s/README.md")).expect("README");
    let joined = text.replace("\\\n", " ");
    let mut secrets = BTreeMap::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .windows(3)
            .position(|w| w == ["create", "secret", "generic"])
        else {
            continue;
        };
        let Some(name) = words.get(at + 3) else {
            continue;
        };
        let keys: &mut BTreeMap<String, Made> = secrets.entry((*name).to_owned()).or_default();
        for w in &words[at + 4..] {
            let w = w.replace(['\'', '"'], "");
            if let Some((key, path)) = w
                .strip_prefix("--from-file=")
                .and_then(|kv| kv.split_once('='))
            {
                keys.insert(key.to_owned(), Made::File(path.to_owned()));
            } else if let Some((key, value)) = w
                .strip_prefix("--from-literal=")
                .and_then(|kv| kv.split_once('='))
            {
                keys.insert(key.to_owned(), Made::Literal(value.to_owned()));
            }
        }
    }
    secrets
}

/// The keys of a Secret the overlay generates, or the README creates.
struct Secrets<'a> {
    rendered: &'a Rendered,
    readme: BTreeMap<String, BTreeMap<String, Made>>,
}

impl Secrets<'_> {
    /// Whether `name` has `key`; why not otherwise.
    fn check(&self, name: &str, key: &str) -> Result<(), String> {
        if let Some(s) = self.rendered.named("Secret", name) {
            return match s["data"].get(key) {
                Some(_) => Ok(()),
                None => Err(format!("the generated Secret {name} has no key {key}")),
            };
        }
        match self.readme.get(name) {
            Some(keys) if keys.contains_key(key) => Ok(()),
            Some(_) => Err(format!(
                "deploy/k8s/README.md creates {name} without key {key}"
            )),
            None => Err(format!(
                "deploy/k8s/README.md never creates the Secret {name}"
            )),
        }
    }

    /// The file make-certs.sh makes that the README puts in `name`'s `key`.
    fn made_from(&self, name: &str, key: &str) -> Option<String> {
        match self.readme.get(name)?.get(key)? {
            Made::File(path) => Some(path.rsplit('/').next().unwrap_or(path).to_owned()),
            Made::Literal(_) => None,
        }
    }

    /// The value of a key: generated by the overlay, or the example the
    /// README gives for a literal.
    fn value(&self, name: &str, key: &str) -> Option<String> {
        self.generated_value(name, key)
            .or_else(|| match self.readme.get(name)?.get(key)? {
                Made::Literal(value) => Some(value.clone()),
                Made::File(_) => None,
            })
    }

    /// A decoded value of a Secret the overlay generates.
    fn generated_value(&self, name: &str, key: &str) -> Option<String> {
        let encoded = self.rendered.named("Secret", name)?["data"][key].as_str()?;
        String::from_utf8(base64_decode(encoded)?).ok()
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    // kubectl wraps long values over lines.
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        acc = (acc << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Everything both overlays must get right; the problems found.
fn check_containers(r: &Rendered, certs: &Certs) -> Vec<String> {
    let image = image::runtime();
    let secrets = Secrets {
        rendered: r,
        readme: readme_secrets(),
    };
    let mut problems = Vec::new();
    for path in [code::READY_PATH, code::LIVE_PATH, code::METRICS_PATH] {
        if !code::served(path) {
            problems.push(format!("the binaries serve no {path}"));
        }
    }
    let containers = containers(r, &mut problems);
    for c in &containers {
        let at = &c.at;
        if !image.binaries.contains(&c.binary.name) {
            problems.push(format!("{at}: the image has no {}", c.binary.name));
        }
        for var in c.env.keys() {
            if !c.binary.reads(var) {
                problems.push(format!("{at}: {} does not read {var}", c.binary.name));
            }
        }

        // Addresses on 0.0.0.0, at ports the container declares.
        let mut http_port = None;
        for var in [Some(&c.binary.http_var), c.binary.grpc_var.as_ref()]
            .into_iter()
            .flatten()
        {
            match c.literal(var).and_then(code::host_port) {
                Some((host, port)) if host == "0.0.0.0" && c.declares_port(port) => {
                    if *var == c.binary.http_var {
                        http_port = Some(port);
                    }
                }
                other => problems.push(format!(
                    "{at}: {var} is {other:?}: not 0.0.0.0 at a declared container port"
                )),
            }
        }

        // Probes on the HTTP port, on the paths for each.
        for (probe, paths) in [
            ("readinessProbe", &[code::READY_PATH][..]),
            ("livenessProbe", &[code::LIVE_PATH][..]),
            ("startupProbe", &[code::LIVE_PATH, code::READY_PATH][..]),
        ] {
            let p = &c.spec[probe];
            if p.is_null() && probe == "startupProbe" {
                continue;
            }
            let path = text_at(p, "/httpGet/path").unwrap_or_default();
            let port = c.port(&p["httpGet"]["port"]);
            if !paths.contains(&path.as_str()) || port.is_none() || port != http_port {
                problems.push(format!(
                    "{at}: {probe} is GET {path:?} on port {port:?}, not {paths:?} on {} ({http_port:?})",
                    c.binary.http_var
                ));
            }
        }

        // Scraped by Prometheus on the same port.
        let annotations = &c.pod["metadata"]["annotations"];
        let want = [
            ("prometheus.io/scrape", Some("true".to_owned())),
            ("prometheus.io/port", http_port.map(|p| p.to_string())),
            ("prometheus.io/path", Some(code::METRICS_PATH.to_owned())),
        ];
        for (key, value) in want {
            if annotations[key].as_str().map(str::to_owned) != value {
                problems.push(format!(
                    "{at}: annotation {key} is {}, not {value:?}",
                    annotations[key]
                ));
            }
        }

        // Resources, replicas, disruption budget.
        for part in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if c.spec["resources"][part][resource].is_null() {
                    problems.push(format!("{at}: no {part}.{resource}"));
                }
            }
        }
        if c.workload["spec"]["replicas"].as_u64().unwrap_or(1) < 2 {
            problems.push(format!("{at}: fewer than 2 replicas"));
        }
        let labels = &c.pod["metadata"]["labels"];
        if !r
            .all("PodDisruptionBudget")
            .any(|b| labels_match(&b["spec"]["selector"]["matchLabels"], labels))
        {
            problems.push(format!("{at}: no PodDisruptionBudget covers its pods"));
        }

        // Time to shut down: the preStop pause, then the binary's bound.
        let grace = c.pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(DEFAULT_GRACE_SECS);
        let pause = c.spec["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let needed = pause + (code::SHUTDOWN_BOUND + SHUTDOWN_MARGIN).as_secs();
        if grace < needed {
            problems.push(format!(
                "{at}: terminationGracePeriodSeconds {grace} < {pause} s preStop + {:?} shutdown + {:?}",
                code::SHUTDOWN_BOUND,
                SHUTDOWN_MARGIN
            ));
        }
        if !c.spec["lifecycle"]["preStop"]["exec"].is_null() {
            problems.push(format!("{at}: a preStop exec (use the sleep action)"));
        }

        // The image's non-root user.
        let security = &c.pod["spec"]["securityContext"];
        if security["runAsNonRoot"] != Value::Bool(true)
            || security["runAsUser"].as_u64() != Some(image.uid.into())
        {
            problems.push(format!(
                "{at}: not runAsNonRoot with the image's user {}",
                image.uid
            ));
        }
        let secret_volumes = c.pod["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| !v["secret"].is_null()));
        if secret_volumes && security["fsGroup"].is_null() {
            problems.push(format!(
                "{at}: Secret files without an fsGroup the user is in"
            ));
        }
        let account = c.pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        if r.named("ServiceAccount", account).is_none() {
            problems.push(format!("{at}: no ServiceAccount {account}"));
        }

        // Secrets: every key referenced exists; every file path is a
        // mounted Secret's key, made from a file make-certs.sh makes.
        for (var, source) in &c.env {
            match source {
                Source::Secret { name, key } => {
                    if let Err(e) = secrets.check(name, key) {
                        problems.push(format!("{at}: {var}: {e}"));
                    }
                }
                // A directory the image holds (the console, the saga
                // definitions) needs no Secret.
                Source::Literal(v) if v.starts_with('/') && !image.has_dir(v) => {
                    let Some((name, key)) = c.file_source(v) else {
                        problems.push(format!("{at}: {var}={v}: no Secret mounted there"));
                        continue;
                    };
                    if let Err(e) = secrets.check(&name, &key) {
                        problems.push(format!("{at}: {var}: {e}"));
                    } else if let Some(file) = secrets.made_from(&name, &key)
                        && !certs.has(&file)
                    {
                        problems.push(format!("{at}: {var}: make-certs.sh makes no {file}"));
                    }
                }
                Source::Literal(_) => {}
            }
        }
    }

    // Each Service reaches ports its pods declare.
    for s in r.all("Service") {
        let name = s["metadata"]["name"].as_str().unwrap_or("?");
        let selected: Vec<&Value> = r.selected(&s["spec"]["selector"]).collect();
        if selected.is_empty() {
            problems.push(format!("Service {name} selects no pods"));
        }
        for port in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            for w in &selected {
                let declared = w["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .any(|p| &p["name"] == target || &p["containerPort"] == target);
                if !declared {
                    problems.push(format!("Service {name}: its pods have no port {target}"));
                }
            }
        }
    }

    check_calls(r, &image, &containers, &secrets, certs, &mut problems);
    check_databases(&containers, &secrets, &mut problems);
    problems
}

/// Every participant the code has runs; the orchestrator runs every saga
/// definition the code ships, from the image, and reaches each participant
/// they name through a Service, at the port it listens on, by a name its
/// certificate carries; its client certificate carries the name
/// participants pin; the relay publishes to the topic the orchestrator
/// reads.
fn check_calls(
    r: &Rendered,
    image: &Image,
    containers: &[Container<'_>],
    secrets: &Secrets<'_>,
    certs: &Certs,
    problems: &mut Vec<String>,
) {
    let cert_names = |c: &Container<'_>, var: &str| -> BTreeSet<String> {
        c.literal(var)
            .and_then(|p| c.file_source(p))
            .and_then(|(name, key)| secrets.made_from(&name, &key))
            .filter(|f| certs.has(f))
            .map(|f| certs.dns_names(&f))
            .unwrap_or_default()
    };
    let by_binary = |name: &'static str| containers.iter().filter(move |c| c.binary.name == name);
    let Some(orchestrator) = by_binary("sagaflow-orchestrator").next() else {
        problems.push("no orchestrator".to_owned());
        return;
    };
    for kind in Kind::ALL {
        let command = format!("sagaflow-participant {kind}");
        if !containers.iter().any(|c| c.command == command) {
            problems.push(format!("no Deployment runs `{command}`"));
        }
    }
    let client_names = cert_names(orchestrator, "SAGAFLOW_CLIENT_CERT");
    let literals: BTreeMap<String, String> = orchestrator
        .env
        .keys()
        .filter_map(|k| Some((k.clone(), orchestrator.literal(k)?.to_owned())))
        .collect();
    let urls = code::participant_urls(&literals);
    let (definition_problems, named) = image::check_definitions(
        image,
        orchestrator.literal("SAGAFLOW_DEFINITIONS_DIR"),
        &urls.keys().cloned().collect(),
    );
    // Every participant is called by some saga it runs (once the
    // definitions load at all).
    let loaded = definition_problems.is_empty();
    problems.extend(
        definition_problems
            .into_iter()
            .map(|p| format!("{}: {p}", orchestrator.at)),
    );
    for kind in Kind::ALL {
        if loaded && !named.contains(kind.name()) {
            problems.push(format!(
                "{}: no saga it runs calls the {kind} participant",
                orchestrator.at
            ));
        }
    }
    for (kind, (url_var, url)) in &urls {
        let Some((host, port)) = code::host_port(url) else {
            problems.push(format!("orchestrator: {url_var}={url:?} has no host:port"));
            continue;
        };
        let Some(service) = r.named("Service", &host) else {
            problems.push(format!("orchestrator: {url_var} names no Service {host}"));
            continue;
        };
        let Some(service_port) = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_u64() == Some(port.into()))
        else {
            problems.push(format!(
                "orchestrator: {url_var}: Service {host} has no port {port}"
            ));
            continue;
        };
        let command = format!("sagaflow-participant {kind}");
        let backends: Vec<&Container<'_>> = containers
            .iter()
            .filter(|c| {
                labels_match(&service["spec"]["selector"], &c.pod["metadata"]["labels"])
                    && c.command == command
            })
            .collect();
        if backends.is_empty() {
            problems.push(format!(
                "orchestrator: {url_var}: Service {host} selects no `{command}`"
            ));
        }
        for p in backends {
            let listen = p
                .binary
                .grpc_var
                .as_deref()
                .and_then(|v| p.literal(v))
                .and_then(code::host_port)
                .map(|hp| hp.1);
            if p.port(&service_port["targetPort"]) != listen {
                problems.push(format!(
                    "{}: Service {host}:{port} does not lead to its gRPC port",
                    p.at
                ));
            }
            if !cert_names(p, "SAGAFLOW_TLS_CERT").contains(&host) {
                problems.push(format!("{}: its certificate does not name {host}", p.at));
            }
            let pinned = p
                .literal("SAGAFLOW_ALLOWED_CLIENT")
                .unwrap_or("sagaflow-orchestrator");
            if !client_names.contains(pinned) {
                problems.push(format!(
                    "{}: pins {pinned}, the orchestrator's client certificate names {client_names:?}",
                    p.at
                ));
            }
        }
    }
    // In-cluster API clients use the orchestrator's Service name.
    let api_names = cert_names(orchestrator, "SAGAFLOW_TLS_CERT");
    for s in r.all("Service") {
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        if labels_match(
            &s["spec"]["selector"],
            &orchestrator.pod["metadata"]["labels"],
        ) && !api_names.contains(name)
        {
            problems.push(format!(
                "the orchestrator's API certificate does not name its Service {name}"
            ));
        }
    }
    let topic = |c: &Container<'_>| c.literal("SAGAFLOW_EVENTS_TOPIC").map(str::to_owned);
    for relay in by_binary("sagaflow-outbox-relay") {
        if topic(relay) != topic(orchestrator) {
            problems.push(format!(
                "{}: publishes to another topic than the orchestrator reads",
                relay.at
            ));
        }
    }
}

/// Each participant on a database of its own, whose outbox every relay
/// publishes: an event left in an outbox no relay reads never reaches the
/// orchestrator, and its saga waits out its deadlines.
fn check_databases(
    containers: &[Container<'_>],
    secrets: &Secrets<'_>,
    problems: &mut Vec<String>,
) {
    let value = |c: &Container<'_>, var: &str| -> Option<String> {
        match c.env.get(var)? {
            Source::Literal(v) => Some(v.clone()),
            Source::Secret { name, key } => secrets.value(name, key),
        }
    };
    let mut databases: BTreeMap<String, &str> = BTreeMap::new();
    for p in containers
        .iter()
        .filter(|c| c.binary.name == "sagaflow-participant")
    {
        let Some(var) = p.env.keys().find(|v| v.ends_with("_DATABASE_URL")) else {
            problems.push(format!("{}: no database URL", p.at));
            continue;
        };
        let Some(url) = value(p, var) else {
            problems.push(format!(
                "{}: {var}: neither the overlay nor deploy/k8s/README.md gives its value",
                p.at
            ));
            continue;
        };
        if let Some(other) = databases.insert(url.clone(), &p.at) {
            problems.push(format!("{} and {other} share the database {url}", p.at));
        }
    }
    for relay in containers
        .iter()
        .filter(|c| c.binary.name == "sagaflow-outbox-relay")
    {
        let var = "SAGAFLOW_RELAY_DATABASE_URLS";
        let Some(urls) = value(relay, var) else {
            problems.push(format!(
                "{}: {var}: neither the overlay nor deploy/k8s/README.md gives its value",
                relay.at
            ));
            continue;
        };
        let relayed: BTreeSet<&str> = urls.split(',').map(str::trim).collect();
        for (url, participant) in &databases {
            if !relayed.contains(url.as_str()) {
                problems.push(format!(
                    "{}: {var} lacks the database of {participant} ({url}): its events would never be published",
                    relay.at
                ));
            }
        }
        for url in relayed {
            if !databases.contains_key(url) {
                problems.push(format!(
                    "{}: {var} has {url}, no participant's database",
                    relay.at
                ));
            }
        }
    }
}

fn assert_none(overlay: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "deploy/k8s/overlays/{overlay}:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_emulator_overlay_runs_the_binaries_as_they_are() {
    let r = Rendered::of("emulator");
    let certs = Certs::make();
    let mut problems = check_containers(&r, &certs);
    let containers = containers(&r, &mut Vec::new());
    let secrets = Secrets {
        rendered: &r,
        readme: readme_secrets(),
    };
    // The emulator and Postgres in the cluster, where every binary looks.
    let service_at = |host: &str, port: u16| {
        r.named("Service", host).is_some_and(|s| {
            s["spec"]["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["port"].as_u64() == Some(port.into())))
        })
    };
    let emulator_projects: BTreeSet<String> = r
        .workloads()
        .flat_map(|w| {
            w["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .flat_map(|c| {
            c["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["args"].as_array().into_iter().flatten())
        })
        .filter_map(|a| a.as_str()?.strip_prefix("--project=").map(str::to_owned))
        .collect();
    for c in &containers {
        match c.literal("PUBSUB_EMULATOR_HOST").and_then(code::host_port) {
            Some((host, port)) if service_at(&host, port) => {}
            other => problems.push(format!(
                "{}: PUBSUB_EMULATOR_HOST {other:?} is no Service",
                c.at
            )),
        }
        let project = c
            .literal("SAGAFLOW_PUBSUB_PROJECT")
            .unwrap_or("sagaflow-local");
        if !emulator_projects.contains(project) {
            problems.push(format!(
                "{}: project {project} is not the emulator's {emulator_projects:?}",
                c.at
            ));
        }
        for (var, source) in &c.env {
            if let Source::Secret { name, key } = source {
                let Some(urls) = secrets.generated_value(name, key) else {
                    continue;
                };
                for url in urls.split(',') {
                    match code::host_port(url) {
                        Some((host, port)) if service_at(&host, port) => {}
                        other => problems.push(format!("{}: {var}: {other:?} is no Service", c.at)),
                    }
                }
            }
        }
    }
    // The image compose.yaml builds, loaded into the local cluster.
    let compose = std::fs::read_to_string(root().join("compose.yaml")).expect("compose.yaml");
    for c in &containers {
        let image = c.spec["image"].as_str().unwrap_or_default();
        if !compose.contains(&format!("image: {image}\n")) {
            problems.push(format!(
                "{}: image {image} is not the one compose.yaml builds",
                c.at
            ));
        }
    }
    assert_none(r.overlay, problems);
}

#[test]
fn the_gcp_overlay_uses_real_pubsub_through_workload_identity() {
    let r = Rendered::of("gcp");
    let certs = Certs::make();
    let mut problems = check_containers(&r, &certs);
    let containers = containers(&r, &mut Vec::new());
    for c in &containers {
        if c.env.contains_key("PUBSUB_EMULATOR_HOST") {
            problems.push(format!("{}: sets PUBSUB_EMULATOR_HOST", c.at));
        }
        if c.literal("SAGAFLOW_PUBSUB_PROJECT")
            .is_none_or(str::is_empty)
        {
            problems.push(format!("{}: no SAGAFLOW_PUBSUB_PROJECT", c.at));
        }
        let account = c.pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let google = r
            .named("ServiceAccount", account)
            .and_then(|a| a["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].as_str());
        if !google.is_some_and(|g| g.ends_with(".iam.gserviceaccount.com")) {
            problems.push(format!(
                "{}: ServiceAccount {account} is bound to no Google service account",
                c.at
            ));
        }
        // Managed Postgres: its URLs from a Secret the operator creates.
        for (var, source) in &c.env {
            if var.contains("_DATABASE_URL") && !matches!(source, Source::Secret { .. }) {
                problems.push(format!("{}: {var} is not from a Secret", c.at));
            }
        }
    }
    if r.named("Secret", "sagaflow-database").is_some() {
        problems.push("the database URLs are generated, not the operator's".to_owned());
    }
    let others: Vec<&str> = r
        .workloads()
        .filter(|w| {
            !w["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|c| c["image"].as_str().is_some_and(is_sagaflow))
        })
        .filter_map(|w| w["metadata"]["name"].as_str())
        .collect();
    if !others.is_empty() {
        problems.push(format!("workloads besides Sagaflow's: {others:?}"));
    }
    assert_none(r.overlay, problems);
}
