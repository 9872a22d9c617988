//! Tests for manifest parsing and validation: good manifests, defaults, and every
//! error with the position it reports.

use super::*;

fn parse(yaml: &str) -> Manifest {
    Manifest::parse(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn error(yaml: &str) -> ManifestError {
    Manifest::parse(yaml).expect_err("manifest should be rejected")
}

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

// --- good manifests -----------------------------------------------------------

#[test]
fn convox_example() {
    let yaml = "services:\n  web:\n    build: .\n    command: bin/web\n    port: 5000\n";
    let m = parse(yaml);
    assert_eq!(m.source(), yaml);
    assert!(m.ignored_keys.is_empty());
    let web = m.service("web").unwrap();
    assert_eq!(
        *web,
        Service {
            name: "web".into(),
            build: Some(BuildSpec {
                path: ".".into(),
                manifest: None
            }),
            image: None,
            command: Some("bin/web".into()),
            port: Some(Port {
                scheme: None,
                number: 5000
            }),
            health: Health {
                path: "/".into(),
                grace_secs: 5,
                interval_secs: 5,
                timeout_secs: 4,
                disabled: false,
            },
            environment: vec![],
            scale: Scale {
                count: 1,
                cpu: None,
                memory: None
            },
            deployment: Deployment {
                minimum: 50,
                maximum: 200
            },
            termination_grace_secs: 30,
            timeout_secs: 60,
        }
    );
}

#[test]
fn full_service() {
    let m = parse(
        r#"
services:
  web:
    build:
      path: ./app
      manifest: Dockerfile.prod
    image: ruby:3
    command: bundle exec puma
    port: https:3000
    health:
      path: /check
      grace: 20
      interval: 10
      timeout: 3
    environment:
      - DATABASE_URL
      - PORT=3000
      - GREETING=hello=world
      - EMPTY=
    scale:
      count: 3
    deployment:
      minimum: 100
      maximum: 150
    termination:
      grace: 45
    timeout: 120
  worker:
    image: busybox
    health:
      disable: true
"#,
    );
    let web = m.service("web").unwrap();
    assert_eq!(
        web.build,
        Some(BuildSpec {
            path: "./app".into(),
            manifest: Some("Dockerfile.prod".into())
        })
    );
    assert_eq!(web.image.as_deref(), Some("ruby:3"));
    assert_eq!(web.command.as_deref(), Some("bundle exec puma"));
    assert_eq!(
        web.port,
        Some(Port {
            scheme: Some("https".into()),
            number: 3000
        })
    );
    assert_eq!(
        web.health,
        Health {
            path: "/check".into(),
            grace_secs: 20,
            interval_secs: 10,
            timeout_secs: 3,
            disabled: false
        }
    );
    assert_eq!(
        web.environment,
        vec![
            EnvRequirement {
                key: "DATABASE_URL".into(),
                default: None
            },
            EnvRequirement {
                key: "PORT".into(),
                default: Some("3000".into())
            },
            EnvRequirement {
                key: "GREETING".into(),
                default: Some("hello=world".into())
            },
            EnvRequirement {
                key: "EMPTY".into(),
                default: Some(String::new())
            },
        ]
    );
    assert_eq!(web.scale.count, 3);
    assert_eq!(
        web.deployment,
        Deployment {
            minimum: 100,
            maximum: 150
        }
    );
    assert_eq!(web.termination_grace_secs, 45);
    assert_eq!(web.timeout_secs, 120);

    let worker = m.service("worker").unwrap();
    assert!(worker.health.disabled);
    assert_eq!(worker.port, None);
    assert_eq!(m.services.keys().collect::<Vec<_>>(), ["web", "worker"]);
}

#[test]
fn health_as_a_path_string() {
    let m = parse("services:\n  web:\n    build: .\n    health: /up\n");
    let health = &m.service("web").unwrap().health;
    assert_eq!(health.path, "/up");
    assert_eq!(health.interval_secs, 5);
}

#[test]
fn health_defaults_follow_the_interval() {
    let m = parse("services:\n  web:\n    build: .\n    health:\n      interval: 30\n");
    let health = &m.service("web").unwrap().health;
    assert_eq!(
        (health.grace_secs, health.interval_secs, health.timeout_secs),
        (30, 30, 29)
    );
    let m = parse("services:\n  web:\n    build: .\n    health:\n      interval: 1\n");
    let health = &m.service("web").unwrap().health;
    assert_eq!(
        (health.grace_secs, health.interval_secs, health.timeout_secs),
        (1, 1, 1)
    );
}

#[test]
fn port_forms() {
    let port = |text: &str| {
        parse(&format!(
            "services:\n  web:\n    build: .\n    port: {text}\n"
        ))
        .service("web")
        .unwrap()
        .port
        .clone()
        .unwrap()
    };
    assert_eq!(port("80").number, 80);
    assert_eq!(port("\"3000\"").number, 3000);
    assert_eq!(port("65535").number, 65535);
    assert_eq!(
        port("http:8080"),
        Port {
            scheme: Some("http".into()),
            number: 8080
        }
    );
    assert_eq!(port("https:443").scheme.as_deref(), Some("https"));
}

#[test]
fn a_command_alone_is_enough() {
    let m = parse("services:\n  clock:\n    command: bin/clock\n");
    let clock = m.service("clock").unwrap();
    assert_eq!(clock.build, None);
    assert_eq!(clock.image, None);
}

#[test]
fn image_alone_is_enough() {
    parse("services:\n  redis:\n    image: redis:7\n");
}

#[test]
fn scale_count_forms() {
    let count = |text: &str| {
        parse(&format!(
            "services:\n  web:\n    build: .\n    scale:\n      count: {text}\n"
        ))
        .service("web")
        .unwrap()
        .scale
        .count
    };
    assert_eq!(count("0"), 0);
    assert_eq!(count("7"), 7);
    assert_eq!(count("\"2\""), 2);
    assert_eq!(count("1-3"), 1);
}

#[test]
fn null_fields_take_defaults() {
    let m = parse(
        "services:\n  web:\n    build: .\n    port:\n    health:\n    scale:\n    deployment:\n    termination:\n    environment:\n",
    );
    let web = m.service("web").unwrap();
    assert_eq!(web.port, None);
    assert_eq!(web.health, Health::default());
    assert_eq!(web.scale, Scale::default());
    assert_eq!(web.deployment, Deployment::default());
    assert_eq!(web.termination_grace_secs, 30);
    assert!(web.environment.is_empty());
}

#[test]
fn unknown_keys_are_kept_and_listed() {
    let m = parse(
        r#"
environment:
  - GLOBAL
resources:
  db:
    type: postgres
services:
  web:
    build: .
    foo: bar
    domain: example.com
    scale:
      count: 2
      cpu: 256
      memory: 512
    health:
      path: /
      unhealthy: 3
    deployment:
      strategy: fast
    termination:
      signal: TERM
  api:
    build:
      path: .
      args: [A]
params:
  X: 1
"#,
    );
    assert_eq!(
        m.ignored_keys,
        [
            "environment",
            "resources",
            "services.web.foo",
            "services.web.domain",
            "services.web.health.unhealthy",
            "services.web.deployment.strategy",
            "services.web.termination.signal",
            "services.api.build.args",
            "params",
        ]
    );
    let scale = m.service("web").unwrap().scale;
    assert_eq!(
        (scale.count, scale.cpu, scale.memory),
        (2, Some(256), Some(512))
    );
}

#[test]
fn scale_cpu_and_memory() {
    let scale = |text: &str| {
        parse(&format!(
            "services:\n  web:\n    build: .\n    scale:\n{text}"
        ))
        .services["web"]
            .scale
    };
    let s = scale("      cpu: 250\n      memory: \"1024\"\n");
    assert_eq!((s.cpu, s.memory), (Some(250), Some(1024)));
    // 0, or nothing, sets no figure.
    let s = scale("      cpu: 0\n      memory:\n");
    assert_eq!((s.cpu, s.memory), (None, None));
    assert_eq!(scale("      count: 2\n").cpu, None);
    let s = scale("      cpu: 1000000\n      memory: 4\n");
    assert_eq!((s.cpu, s.memory), (Some(1_000_000), Some(4)));
}

#[test]
fn bad_scale_cpu_and_memory_name_line_unit_and_value() {
    let err = error("services:\n  web:\n    build: .\n    scale:\n      cpu: 0.5\n");
    assert_eq!((err.line, err.column), (Some(5), Some(12)));
    assert_eq!(err.path, "services.web.scale.cpu");
    assert_eq!(
        err.to_string(),
        "convox.yml line 5, column 12: services.web.scale.cpu: expected millicores as a whole number from 1 to 1000000 (1000 is one CPU), or 0 for none, got 0.5"
    );
    let err =
        error("services:\n  web:\n    build: .\n    scale:\n      count: 2\n      memory: 512Mi\n");
    assert_eq!((err.line, err.column), (Some(6), Some(15)));
    assert_eq!(
        err.to_string(),
        r#"convox.yml line 6, column 15: services.web.scale.memory: expected MB as a whole number from 4 to 16777216 (MiB), or 0 for none, got "512Mi""#
    );
    for bad in ["-1", "1000001", "[1]", "true", "\"1 CPU\""] {
        let err = error(&format!(
            "services:\n  web:\n    build: .\n    scale:\n      cpu: {bad}\n"
        ));
        assert!(
            matches!(err.kind, ManifestErrorKind::Resource { .. }),
            "{bad}: {err}"
        );
        assert_eq!(err.line, Some(5), "{bad}");
    }
    for bad in ["1", "3", "16777217", "-512"] {
        let err = error(&format!(
            "services:\n  web:\n    build: .\n    scale:\n      memory: {bad}\n"
        ));
        assert!(
            err.to_string().contains("from 4 to 16777216"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn yaml_anchors_and_merges_work() {
    let m = parse(
        r#"
services:
  web: &base
    build: .
    port: 3000
  api:
    <<: *base
    port: 4000
"#,
    );
    assert_eq!(
        m.service("api").unwrap().port.as_ref().unwrap().number,
        4000
    );
    assert_eq!(
        m.service("api").unwrap().build,
        m.service("web").unwrap().build
    );
}

#[test]
fn serializes_to_json_without_the_source() {
    let m = parse("services:\n  web:\n    build: .\n    port: 5000\n");
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["services"]["web"]["port"]["number"], 5000);
    assert_eq!(json["services"]["web"]["health"]["path"], "/");
    assert!(json.get("source").is_none());
}

// --- env helpers --------------------------------------------------------------

const ENV_MANIFEST: &str = r#"
services:
  web:
    build: .
    environment:
      - SECRET_KEY
      - DATABASE_URL
      - PORT=3000
  worker:
    build: .
    environment:
      - QUEUE
      - DATABASE_URL
"#;

#[test]
fn missing_env_lists_required_keys_sorted() {
    let m = parse(ENV_MANIFEST);
    let missing = m.missing_env(&Env::new());
    let pairs: Vec<_> = missing
        .iter()
        .map(|m| (m.service.as_str(), m.key.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("web", "DATABASE_URL"),
            ("web", "SECRET_KEY"),
            ("worker", "DATABASE_URL"),
            ("worker", "QUEUE"),
        ]
    );
    assert_eq!(
        missing[0].to_string(),
        "env DATABASE_URL is required by service web"
    );
}

#[test]
fn missing_env_counts_empty_values_as_set() {
    let m = parse(ENV_MANIFEST);
    let e = env(&[("SECRET_KEY", ""), ("DATABASE_URL", "x"), ("QUEUE", "q")]);
    assert!(m.missing_env(&e).is_empty());
    let e = env(&[("DATABASE_URL", "x")]);
    let keys: Vec<_> = m.missing_env(&e).into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["SECRET_KEY", "QUEUE"]);
}

#[test]
fn env_for_fills_defaults_under_the_release_env() {
    let m = parse(ENV_MANIFEST);
    let release = env(&[("DATABASE_URL", "pg://"), ("EXTRA", "1")]);
    let web = m.env_for("web", &release);
    assert_eq!(
        web,
        env(&[("DATABASE_URL", "pg://"), ("EXTRA", "1"), ("PORT", "3000")])
    );
    let overridden = m.env_for("web", &env(&[("PORT", "8080")]));
    assert_eq!(overridden.get("PORT"), Some("8080"));
    assert_eq!(m.env_for("worker", &release), release);
    assert_eq!(m.env_for("nope", &release), release);
}

// --- errors -------------------------------------------------------------------

#[test]
fn empty_manifest() {
    for text in ["", "   \n\t\n", "# just a comment\n"] {
        let err = error(text);
        assert_eq!(err.kind, ManifestErrorKind::Empty, "{text:?}");
        assert_eq!(err.to_string(), "convox.yml: manifest is empty");
    }
}

#[test]
fn bad_port_names_line_column_and_value() {
    let err = error("services:\n  web:\n    build: .\n    port: abc\n");
    assert_eq!(err.line, Some(4));
    assert_eq!(err.column, Some(11));
    assert_eq!(err.path, "services.web.port");
    assert_eq!(
        err.to_string(),
        r#"convox.yml line 4, column 11: services.web.port: expected a port number 1-65535, got "abc""#
    );
    for bad in [
        "0",
        "65536",
        "-1",
        "80.5",
        "ftp:21",
        "\"http:\"",
        "[80]",
        "true",
        "https:x",
    ] {
        let err = error(&format!(
            "services:\n  web:\n    build: .\n    port: {bad}\n"
        ));
        assert!(
            matches!(err.kind, ManifestErrorKind::InvalidPort { .. }),
            "{bad}: {err}"
        );
        assert_eq!(err.line, Some(4), "{bad}");
    }
}

#[test]
fn negative_count() {
    let err = error("services:\n  web:\n    build: .\n    scale:\n      count: -1\n");
    assert_eq!((err.line, err.column), (Some(5), Some(14)));
    assert_eq!(
        err.to_string(),
        "convox.yml line 5, column 14: services.web.scale.count: expected a whole number of at least 0, got -1"
    );
    let err = error("services:\n  web:\n    build: .\n    scale:\n      count: 3-1\n");
    assert!(err.to_string().contains("range like 1-3"), "{err}");
}

#[test]
fn malformed_yaml_reports_the_parser_position() {
    let err = error("services:\n  web:\n    build: .\n   port: 5000\n");
    assert!(
        matches!(err.kind, ManifestErrorKind::Syntax { .. }),
        "{err}"
    );
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.column.is_some());
    let text = err.to_string();
    assert!(text.starts_with("convox.yml line 4, column "), "{text}");
    assert!(!text.contains(" at line"), "{text}");

    let err = error("services:\n  web: [unclosed\n");
    assert!(
        matches!(err.kind, ManifestErrorKind::Syntax { .. }),
        "{err}"
    );
    assert!(err.line.is_some(), "{err}");
}

#[test]
fn duplicate_keys_are_syntax_errors() {
    let err = error("services:\n  web:\n    build: .\n  web:\n    build: .\n");
    assert!(
        matches!(err.kind, ManifestErrorKind::Syntax { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("duplicate"), "{err}");
}

#[test]
fn bad_env_key_in_environment_list() {
    let err =
        error("services:\n  web:\n    build: .\n    environment:\n      - GOOD\n      - 1BAD=x\n");
    assert_eq!((err.line, err.column), (Some(6), Some(9)));
    assert_eq!(err.path, "services.web.environment[1]");
    assert_eq!(
        err.to_string(),
        "convox.yml line 6, column 9: services.web.environment[1]: invalid env key \"1BAD\": keys start with a letter or '_' and contain only letters, digits and '_'"
    );
    let err = error("services:\n  web:\n    build: .\n    environment:\n    - =x\n");
    assert_eq!(err.line, Some(5));
    assert!(err.to_string().ends_with("empty env key"), "{err}");
}

#[test]
fn environment_shape_errors() {
    let err = error("services:\n  web:\n    build: .\n    environment:\n      FOO: bar\n");
    assert_eq!(err.line, Some(4));
    assert!(err.to_string().contains("expected a list"), "{err}");
    let err = error("services:\n  web:\n    build: .\n    environment:\n      - 42\n");
    assert_eq!(err.line, Some(5));
    assert!(err.to_string().contains("got 42"), "{err}");
    let err = error("services:\n  web:\n    build: .\n    environment: [A, B, A=1]\n");
    assert_eq!(
        err.kind,
        ManifestErrorKind::DuplicateEnvKey { key: "A".into() }
    );
    assert_eq!(err.line, Some(4), "flow lists fall back to the key line");
}

#[test]
fn missing_services() {
    let err = error("environment:\n  - FOO\n");
    assert_eq!(err.kind, ManifestErrorKind::MissingServices);
    assert_eq!((err.line, err.column), (Some(1), Some(1)));
    assert_eq!(
        err.to_string(),
        "convox.yml line 1, column 1: a services section is required"
    );
}

#[test]
fn no_services() {
    for text in ["services:\n", "services: {}\n"] {
        let err = error(text);
        assert_eq!(err.kind, ManifestErrorKind::NoServices, "{text}");
        assert_eq!(err.line, Some(1));
        assert_eq!(err.path, "services");
    }
    let err = error("services:\n  - web\n");
    assert!(
        err.to_string().contains("expected a mapping, got a list"),
        "{err}"
    );
}

#[test]
fn top_level_must_be_a_mapping() {
    let err = error("\n- a\n- b\n");
    assert_eq!(
        err.to_string(),
        "convox.yml line 2, column 1: the top level must be a mapping of keys, got a list"
    );
    let err = error("just text");
    assert!(matches!(
        err.kind,
        ManifestErrorKind::TopLevelNotMapping { .. }
    ));
}

#[test]
fn invalid_service_names() {
    for name in ["Web", "1web", "web_1", "web-", "\"a b\""] {
        let err = error(&format!("services:\n  {name}:\n    build: .\n"));
        assert!(
            matches!(err.kind, ManifestErrorKind::InvalidServiceName { .. }),
            "{name}: {err}"
        );
    }
    let err = error("services:\n  web:\n    build: .\n  Bad_Name:\n    build: .\n");
    assert_eq!((err.line, err.column), (Some(4), Some(3)));
    assert!(
        err.to_string()
            .contains("invalid service name \"Bad_Name\""),
        "{err}"
    );
    let long = "a".repeat(31);
    assert!(Manifest::parse(&format!("services:\n  {long}:\n    build: .\n")).is_err());
    parse(&format!("services:\n  {}:\n    build: .\n", "a".repeat(30)));
}

#[test]
fn non_string_keys() {
    let err = error("services:\n  123:\n    build: .\n");
    assert!(
        err.to_string().contains("keys must be strings, got 123"),
        "{err}"
    );
}

#[test]
fn service_with_nothing_to_run() {
    let err = error("services:\n  web:\n    build: .\n  idle:\n    port: 80\n");
    assert_eq!(err.path, "services.idle");
    assert_eq!((err.line, err.column), (Some(4), Some(3)));
    assert_eq!(
        err.to_string(),
        "convox.yml line 4, column 3: services.idle: a service needs at least one of build, image or command"
    );
    let err = error("services:\n  web:\n");
    assert_eq!(err.kind, ManifestErrorKind::NothingToRun);
}

#[test]
fn service_must_be_a_mapping() {
    let err = error("services:\n  web: bin/web\n");
    assert_eq!(err.line, Some(2));
    assert!(
        err.to_string()
            .contains("expected a mapping, got \"bin/web\""),
        "{err}"
    );
}

#[test]
fn health_errors() {
    let err = error(
        "services:\n  web:\n    build: .\n    health:\n      interval: 5\n      timeout: 6\n",
    );
    assert_eq!(err.path, "services.web.health.timeout");
    assert_eq!(err.line, Some(6));
    assert_eq!(
        err.kind,
        ManifestErrorKind::HealthTimeout {
            timeout: 6,
            interval: 5
        }
    );
    let err = error("services:\n  web:\n    build: .\n    health:\n      timeout: 0\n");
    assert!(
        matches!(err.kind, ManifestErrorKind::OutOfRange { .. }),
        "{err}"
    );
    let err = error("services:\n  web:\n    build: .\n    health:\n      interval: 0\n");
    assert!(err.to_string().contains("at least 1, got 0"), "{err}");
    let err = error("services:\n  web:\n    build: .\n    health: health\n");
    assert_eq!(err.path, "services.web.health");
    assert!(err.to_string().contains("starting with '/'"), "{err}");
    let err = error("services:\n  web:\n    build: .\n    health:\n      path: up\n");
    assert_eq!(err.path, "services.web.health.path");
    assert_eq!(err.line, Some(5));
    let err = error("services:\n  web:\n    build: .\n    health:\n      disable: maybe\n");
    assert!(err.to_string().contains("expected true or false"), "{err}");
    let err = error("services:\n  web:\n    build: .\n    health: 5\n");
    assert!(
        err.to_string().contains("expected a path or a mapping"),
        "{err}"
    );
}

#[test]
fn deployment_errors() {
    let err = error("services:\n  web:\n    build: .\n    deployment:\n      minimum: 101\n");
    assert_eq!(
        err.to_string(),
        "convox.yml line 5, column 16: services.web.deployment.minimum: expected a whole number from 0 to 100, got 101"
    );
    let err = error("services:\n  web:\n    build: .\n    deployment:\n      maximum: 99\n");
    assert!(err.to_string().contains("from 100 to 200, got 99"), "{err}");
    let err = error(
        "services:\n  web:\n    build: .\n    deployment:\n      minimum: 100\n      maximum: 100\n",
    );
    assert_eq!(err.kind, ManifestErrorKind::DeploymentStuck);
    assert_eq!(err.line, Some(4));
}

#[test]
fn other_value_errors() {
    let err = error("services:\n  web:\n    image: [a]\n");
    assert!(
        err.to_string().contains("expected a string, got a list"),
        "{err}"
    );
    let err = error("services:\n  web:\n    command: \"\"\n");
    assert_eq!(err.kind, ManifestErrorKind::EmptyValue);
    assert_eq!(err.path, "services.web.command");
    let err = error("services:\n  web:\n    build: 5\n");
    assert!(
        err.to_string().contains("expected a path or a mapping"),
        "{err}"
    );
    let err = error("services:\n  web:\n    build: .\n    timeout: 0\n");
    assert!(err.to_string().contains("services.web.timeout"), "{err}");
    let err = error("services:\n  web:\n    build: .\n    termination:\n      grace: soon\n");
    assert_eq!(err.line, Some(5));
    assert!(err.to_string().contains("got \"soon\""), "{err}");
    let err = error("services:\n  web:\n    build: .\n    scale: 3\n");
    assert!(
        err.to_string()
            .contains("services.web.scale: expected a mapping, got 3"),
        "{err}"
    );
}

#[test]
fn long_values_are_shortened_in_errors() {
    let long = "x".repeat(5000);
    let err = error(&format!(
        "services:\n  web:\n    build: .\n    port: {long}\n"
    ));
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn errors_without_a_line_omit_it() {
    let err = ManifestError {
        line: None,
        column: None,
        path: "services.web".into(),
        kind: ManifestErrorKind::NothingToRun,
    };
    assert_eq!(
        err.to_string(),
        "convox.yml: services.web: a service needs at least one of build, image or command"
    );
}

#[test]
fn strip_positions_removes_only_positions() {
    assert_eq!(
        strip_positions(
            "did not find expected key at line 4 column 4, while parsing a block mapping at line 2 column 5"
        ),
        "did not find expected key, while parsing a block mapping"
    );
    assert_eq!(strip_positions("look at me at position 7"), "look at me");
    assert_eq!(strip_positions("plain"), "plain");
}

/// A valid manifest padded with a comment to exactly `len` bytes.
fn manifest_of_len(len: usize) -> String {
    let head = "services:\n  web:\n    build: .\n#";
    let mut text = head.to_owned();
    text.push_str(&"x".repeat(len - head.len() - 1));
    text.push('\n');
    assert_eq!(text.len(), len);
    text
}

#[test]
fn a_manifest_at_the_size_limit_parses_one_byte_more_is_refused() {
    parse(&manifest_of_len(MAX_MANIFEST_BYTES));
    let err = error(&manifest_of_len(MAX_MANIFEST_BYTES + 1));
    assert_eq!(
        err.kind,
        ManifestErrorKind::TooLarge {
            len: MAX_MANIFEST_BYTES + 1
        }
    );
    assert_eq!(
        err.to_string(),
        "convox.yml: manifest is too large: 524289 bytes, the limit is 524288 bytes (512 KiB)"
    );
}
