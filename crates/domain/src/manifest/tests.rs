//! Tests for manifest parsing and validation: good manifests, defaults and
//! the env helpers here; every error with the position it reports in
//! [`errors`].

use super::*;

mod errors;

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
