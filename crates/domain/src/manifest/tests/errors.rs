//! Manifest errors: each refusal names what is wrong and, where the text
//! has one, the line and column it reports.

use super::*;

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
