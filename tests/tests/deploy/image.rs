//! The top-level Dockerfile: what the image holds, read from the file, and
//! checked against the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{code, root};

/// The service binaries every deployment runs, and the operators' command.
const REQUIRED_BINARIES: [&str; 4] = [
    "sagaflow-orchestrator",
    "sagaflow-participant",
    "sagaflow-outbox-relay",
    "sagaflow",
];

/// One `FROM` stage: its base image, its name, its instructions.
#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    /// (instruction, rest of the line), continuation lines joined.
    lines: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, instruction: &str) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |(i, _)| i == instruction)
            .map(|(_, rest)| rest.as_str())
    }
}

fn stages(dockerfile: &str) -> Vec<Stage> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (instruction, rest) = (instruction.to_uppercase(), rest.trim().to_owned());
        if instruction == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                base: words.first().expect("FROM names an image").to_string(),
                name,
                lines: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .lines
                .push((instruction, rest));
        }
    }
    stages
}

/// What the runtime image holds.
#[derive(Debug)]
pub struct Image {
    /// Binaries copied from the build into the image's PATH.
    pub binaries: BTreeSet<String>,
    /// The numeric user it runs as.
    pub uid: u32,
    /// `ENV` of the runtime stage.
    pub env: BTreeMap<String, String>,
    /// Debian packages installed in the runtime stage.
    pub packages: BTreeSet<String>,
    /// Files copied from the build context: path in the image → the file
    /// in the repository.
    pub files: BTreeMap<String, PathBuf>,
    /// The ports it `EXPOSE`s.
    pub exposed: BTreeSet<u16>,
    /// Where `COPY --from=console` puts the built console.
    pub console_dir: Option<String>,
}

impl Image {
    /// Whether the image has the directory `dir` (the console's, or one
    /// that files were copied into): a path a container may be pointed at
    /// without mounting anything there.
    pub fn has_dir(&self, dir: &str) -> bool {
        let dir = dir.trim_end_matches('/');
        self.console_dir.as_deref() == Some(dir) || self.files_in(dir).next().is_some()
    }

    /// The files copied directly into `dir`: (path in the image, the file
    /// in the repository).
    pub fn files_in<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a PathBuf)> {
        self.files.iter().filter_map(move |(path, source)| {
            let (parent, _) = path.rsplit_once('/')?;
            (parent == dir.trim_end_matches('/')).then_some((path.as_str(), source))
        })
    }
}

/// What an orchestrator pointed at `dir` (its `SAGAFLOW_DEFINITIONS_DIR`)
/// in this image would load, checked as it checks it at start against the
/// participant keys it has URLs for, and against the definitions the code
/// ships: the problems, and the participants the files name.
pub fn check_definitions(
    image: &Image,
    dir: Option<&str>,
    participants: &BTreeSet<String>,
) -> (Vec<String>, BTreeSet<String>) {
    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    let shipped = code::shipped_definitions();
    let types = || {
        shipped
            .iter()
            .map(|d| d.saga_type.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(dir) = dir else {
        problems.push(format!(
            "SAGAFLOW_DEFINITIONS_DIR is not set: only the built-in order saga runs, \
             not every saga the code ships ({})",
            types()
        ));
        return (problems, named);
    };
    let known: BTreeMap<String, String> = participants
        .iter()
        .map(|k| (k.clone(), String::new()))
        .collect();
    let mut texts = Vec::new();
    for (path, source) in image.files_in(dir) {
        if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
            continue;
        }
        let text =
            std::fs::read_to_string(source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        // What the orchestrator does at start: a file naming a participant
        // with no URL stops it. (Only the order saga's three have a
        // fallback, 127.0.0.1, which is wrong in any deployment.)
        match sagaflow_orchestrator::definitions::file::parse(path, &text, Some(&known)) {
            Ok(d) => named.extend(d.steps.into_iter().map(|s| s.participant)),
            Err(e) => problems.push(format!("loading its definitions: {e}")),
        }
        texts.push(text);
    }
    if texts.is_empty() {
        problems.push(format!(
            "SAGAFLOW_DEFINITIONS_DIR={dir}: the image has no definition files there"
        ));
        return (problems, named);
    }
    for d in &shipped {
        if !texts.iter().any(|t| t == d.text) {
            problems.push(format!(
                "SAGAFLOW_DEFINITIONS_DIR={dir}: the image has no copy of the {} saga's \
                 definition there, so the orchestrator does not run it",
                d.saga_type
            ));
        }
    }
    (problems, named)
}

/// The runtime image, read from the Dockerfile; panics naming what it
/// cannot find.
pub fn runtime() -> Image {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("reading Dockerfile");
    let stages = stages(&text);
    let runtime = stages.last().expect("a FROM");
    let build_stage = |from: &str| {
        stages
            .iter()
            .find(|s| s.name.as_deref() == Some(from))
            .unwrap_or_else(|| panic!("COPY --from={from}: no such stage"))
    };
    let mut binaries = BTreeSet::new();
    let mut files = BTreeMap::new();
    let mut console_dir = None;
    for copy in runtime.all("COPY") {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let dest = words.last().expect("COPY has a destination");
        let Some(from) = words.iter().find_map(|w| w.strip_prefix("--from=")) else {
            // From the build context: each source into the destination
            // directory (a lone source to a path without `/` is renamed).
            let sources: Vec<&str> = words[..words.len() - 1]
                .iter()
                .filter(|w| !w.starts_with("--"))
                .copied()
                .collect();
            for source in &sources {
                let path = if dest.ends_with('/') || sources.len() > 1 {
                    let name = source.rsplit('/').next().unwrap_or(source);
                    format!("{}/{name}", dest.trim_end_matches('/'))
                } else {
                    (*dest).to_owned()
                };
                files.insert(path, root().join(source));
            }
            continue;
        };
        if from == "console" {
            console_dir = Some(dest.trim_end_matches('/').to_owned());
        }
        if dest.trim_end_matches('/') != "/usr/local/bin" {
            continue;
        }
        // The binaries the build stage puts where this COPY takes them from.
        for run in build_stage(from).all("RUN") {
            for word in run.split_whitespace() {
                if let Some(bin) = word.strip_prefix("target/release/") {
                    binaries.insert(bin.to_owned());
                }
            }
        }
    }
    let user = runtime.all("USER").last().expect("the runtime sets USER");
    let uid = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user}: not numeric"));
    let env = runtime
        .all("ENV")
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let packages = runtime
        .all("RUN")
        .flat_map(|run| run.split("&&"))
        .filter_map(|cmd| cmd.trim().strip_prefix("apt-get install"))
        .flat_map(|rest| rest.split_whitespace().filter(|w| !w.starts_with('-')))
        .map(str::to_owned)
        .collect();
    let exposed = runtime
        .all("EXPOSE")
        .flat_map(str::split_whitespace)
        .map(|p| {
            p.split('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("EXPOSE {p}: not a port"))
        })
        .collect();
    Image {
        binaries,
        uid,
        env,
        packages,
        files,
        exposed,
        console_dir,
    }
}

#[test]
fn the_dockerfile_builds_every_service_binary_of_the_workspace() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("reading Dockerfile");
    let stages = stages(&text);
    let named = |n: &str| {
        stages
            .iter()
            .find(|s| s.name.as_deref() == Some(n))
            .unwrap_or_else(|| panic!("the Dockerfile has no stage {n}"))
    };
    let workspace = code::workspace_bins();

    // The console: built with a Node at least as new as it asks for, from
    // its sources and the protos it generates its client from.
    let console = named("console");
    let node_major: u32 = console
        .base
        .strip_prefix("node:")
        .and_then(|tag| tag.split(['-', '.']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the console stage is not a node:<major> image: {}",
                console.base
            )
        });
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("console/package.json")).expect("package.json"),
    )
    .expect("package.json is JSON");
    let wanted: u32 = package["engines"]["node"]
        .as_str()
        .and_then(|r| r.trim_start_matches(">=").split('.').next())
        .and_then(|m| m.parse().ok())
        .expect("console/package.json names its Node (engines.node >=MAJOR...)");
    assert!(
        node_major >= wanted,
        "node:{node_major} < the console's >={wanted}"
    );
    let copied: Vec<&str> = console.all("COPY").collect();
    for dir in ["protos", "console"] {
        assert!(
            copied.iter().any(|c| c.starts_with(&format!("{dir} "))),
            "the console stage does not copy {dir}/: {copied:?}"
        );
    }
    let runs = console.all("RUN").collect::<Vec<_>>().join(" && ");
    assert!(
        runs.contains("npm ci") && runs.contains("npm run build"),
        "{runs}"
    );

    // The binaries: a locked release build of workspace packages, and every
    // binary those packages have copied out (none missing, none invented).
    let build = named("build");
    let cargo = build
        .all("RUN")
        .flat_map(|r| r.split("&&"))
        .find(|r| r.contains("cargo build"))
        .expect("the build stage runs cargo build");
    for flag in ["--release", "--locked"] {
        assert!(cargo.contains(flag), "cargo build without {flag}: {cargo}");
    }
    let words: Vec<&str> = cargo.split_whitespace().collect();
    let packages: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    let mut bins = BTreeSet::new();
    for p in &packages {
        let of = workspace
            .get(*p)
            .unwrap_or_else(|| panic!("cargo build -p {p}: no such workspace package"));
        bins.extend(of.iter().cloned());
    }
    let image = runtime();
    assert_eq!(
        image.binaries, bins,
        "the binaries the image copies are not those of the packages it builds"
    );
    for b in REQUIRED_BINARIES {
        assert!(image.binaries.contains(b), "the image lacks {b}");
    }

    // The runtime: a numeric non-root user, the console where
    // SAGAFLOW_CONSOLE_DIR says, only variables the binaries read.
    assert_ne!(image.uid, 0, "the image runs as root");
    let runtime = stages.last().expect("stages");
    let console_dir = image
        .env
        .get("SAGAFLOW_CONSOLE_DIR")
        .expect("the image sets SAGAFLOW_CONSOLE_DIR");
    assert!(
        runtime.all("COPY").any(|c| {
            let w: Vec<&str> = c.split_whitespace().collect();
            w.contains(&"--from=console")
                && w.iter().any(|s| s.ends_with("console/dist"))
                && w.last() == Some(&console_dir.as_str())
        }),
        "no COPY --from=console of console/dist to {console_dir}"
    );
    let every = code::every_var();
    for name in image.env.keys() {
        assert!(
            every.contains(name.as_str()),
            "ENV {name}: no binary reads it"
        );
    }
    assert!(
        image.packages.contains("ca-certificates"),
        "the runtime lacks the CA bundle (real Pub/Sub is TLS)"
    );

    // The build context leaves out build outputs and secrets.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for path in ["target", "console/node_modules", ".certs"] {
        assert!(ignored.contains(path), ".dockerignore lacks {path}");
    }
}

#[test]
fn the_image_carries_the_saga_definitions_and_exposes_the_default_ports() {
    let image = runtime();
    // Every file it copies from the build context is there, and not left
    // out of the context.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for (path, source) in &image.files {
        assert!(
            source.is_file(),
            "COPY {} {path}: no such file",
            source.display()
        );
        let relative = source.strip_prefix(root()).expect("inside the repository");
        let relative = relative.to_str().expect("a UTF-8 path");
        for ignored in ignore.lines().map(str::trim) {
            if ignored.is_empty() || ignored.starts_with('#') {
                continue;
            }
            assert!(
                !dockerignore_excludes(ignored, relative),
                "COPY {relative}: .dockerignore leaves it out ({ignored})"
            );
        }
    }

    // Every saga definition the code ships, together in one directory, for
    // SAGAFLOW_DEFINITIONS_DIR: a directory holds all the types its
    // orchestrator runs.
    let shipped = code::shipped_definitions();
    let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, source) in &image.files {
        let text = std::fs::read_to_string(source).unwrap_or_default();
        if let Some(d) = shipped.iter().find(|d| d.text == text) {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            dirs.entry(dir.to_owned())
                .or_default()
                .insert(d.saga_type.clone());
        }
    }
    // Each participant they name is one the image's `sagaflow-participant`
    // runs, so a deployment of the image can serve every step.
    for d in &shipped {
        for p in &d.participants {
            assert!(
                p.parse::<sagaflow_participants::Kind>().is_ok(),
                "the {} saga calls {p}, which `sagaflow-participant` does not run",
                d.saga_type
            );
        }
    }
    let every: BTreeSet<String> = shipped.iter().map(|d| d.saga_type.clone()).collect();
    assert!(
        dirs.values().any(|types| *types == every),
        "the image has no directory holding every shipped saga definition ({every:?}): {dirs:?}"
    );
    // Not set in the image: a directory replaces the built-in order saga and
    // needs every participant it names to have a URL, which only a
    // deployment that runs them can give.
    assert!(
        !image.env.contains_key("SAGAFLOW_DEFINITIONS_DIR"),
        "the image sets SAGAFLOW_DEFINITIONS_DIR: an orchestrator run without the trip \
         participants' URLs would not start"
    );

    // EXPOSE documents where the binaries listen by default: every default
    // port of the code, and no other.
    let listens: Vec<(&str, u16)> = sagaflow_common::config::COMMON_VARS
        .iter()
        .chain(sagaflow_orchestrator::config::VARS)
        .chain(sagaflow_participants::config::VARS)
        .chain(outbox_relay::config::VARS)
        .filter(|v| v.name.ends_with("_LISTEN"))
        .filter_map(|v| code::host_port(v.default).map(|(_, port)| (v.name, port)))
        .collect();
    let defaults: BTreeSet<u16> = listens.iter().map(|(_, port)| *port).collect();
    // Every binary can run on one host with its defaults: no two default
    // addresses share a port.
    let mut taken: BTreeMap<u16, &str> = BTreeMap::new();
    for (name, port) in &listens {
        if let Some(other) = taken.insert(*port, name) {
            panic!("{other} and {name} both default to port {port}");
        }
    }
    assert_eq!(
        image.exposed, defaults,
        "EXPOSE is not the binaries' default ports"
    );
}

/// Whether the `.dockerignore` line `pattern` leaves `path` (relative to
/// the build context, `/`-separated) out of the context, as Docker reads
/// it: `*` and `?` within a path segment, `**` for any number of segments,
/// and a pattern that names a directory leaves out everything under it.
/// An exception line (`!…`) is not understood: it fails the check rather
/// than being read wrong.
fn dockerignore_excludes(pattern: &str, path: &str) -> bool {
    assert!(
        !pattern.starts_with('!'),
        ".dockerignore exception {pattern:?}: not understood by this check"
    );
    let split = |p: &str| -> Vec<String> {
        p.trim_start_matches("./")
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    segments_match(&split(pattern), &split(path))
}

fn segments_match(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        // The pattern matched a directory the path is in (or the path).
        None => true,
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| segments_match(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, path_rest)) => glob(first, seg) && segments_match(rest, path_rest),
            None => false,
        },
    }
}

/// `*` (any run of characters) and `?` (one character) within one segment.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn from(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| from(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && from(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && from(rest, &t[1..]),
        }
    }
    from(&p, &t)
}

#[test]
fn dockerignore_patterns_are_read_as_docker_reads_them() {
    assert!(dockerignore_excludes("target", "target/release/x"));
    assert!(dockerignore_excludes("**/*.key", "certs/order.key"));
    assert!(dockerignore_excludes("**/*.key", "x.key"));
    assert!(dockerignore_excludes(
        "console/dist",
        "console/dist/index.html"
    ));
    assert!(dockerignore_excludes("*.md", "README.md"));
    assert!(!dockerignore_excludes("*.md", "docs/api.md"));
    assert!(!dockerignore_excludes(
        "console/dist",
        "console/src/main.tsx"
    ));
    assert!(!dockerignore_excludes(
        "**/*.key",
        "participants/src/trip/trip.v1.yaml"
    ));
    assert!(!dockerignore_excludes("target", "targets/x"));
}
