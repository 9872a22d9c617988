use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// --- keys ---------------------------------------------------------------

#[test]
fn valid_keys() {
    for key in ["A", "_", "FOO", "foo_bar", "_X1", "a1b2", "DATABASE_URL"] {
        validate_key(key).unwrap();
    }
    validate_key(&"K".repeat(MAX_KEY_LEN)).unwrap();
}

#[test]
fn invalid_keys_are_named_with_the_rule() {
    assert_eq!(
        validate_key("1FOO").unwrap_err().to_string(),
        "invalid env key \"1FOO\": keys start with a letter or '_' and contain only letters, digits and '_'"
    );
    for key in ["FOO-BAR", "FOO BAR", "FOO.BAR", "É", "FOO=", " FOO", "$X"] {
        assert_eq!(
            validate_key(key),
            Err(EnvError::InvalidKey {
                key: key.to_owned()
            }),
            "{key}"
        );
    }
}

#[test]
fn empty_key() {
    assert_eq!(validate_key(""), Err(EnvError::EmptyKey));
    assert_eq!(EnvError::EmptyKey.to_string(), "empty env key");
}

#[test]
fn overlong_key() {
    let key = "K".repeat(MAX_KEY_LEN + 1);
    let err = validate_key(&key).unwrap_err();
    assert!(matches!(err, EnvError::KeyTooLong { len: 257, .. }));
    assert!(err.to_string().len() < 200, "{err}");
}

// --- Env basics ---------------------------------------------------------

#[test]
fn from_map_validates_keys() {
    assert!(Env::from_map(map(&[("GOOD", "1")])).is_ok());
    assert_eq!(
        Env::from_map(map(&[("GOOD", "1"), ("bad-key", "2")])),
        Err(EnvError::InvalidKey {
            key: "bad-key".into()
        })
    );
}

#[test]
fn accessors() {
    let e = env(&[("B", "2"), ("A", "1"), ("EMPTY", "")]);
    assert_eq!(e.len(), 3);
    assert!(!e.is_empty());
    assert_eq!(e.get("A"), Some("1"));
    assert_eq!(e.get("EMPTY"), Some(""));
    assert_eq!(e.get("NOPE"), None);
    assert!(e.contains_key("EMPTY"));
    assert!(!e.contains_key("NOPE"));
    assert_eq!(e.keys().collect::<Vec<_>>(), ["A", "B", "EMPTY"]);
    assert_eq!(
        e.iter().collect::<Vec<_>>(),
        [("A", "1"), ("B", "2"), ("EMPTY", "")]
    );
    assert_eq!(e.as_map(), &map(&[("A", "1"), ("B", "2"), ("EMPTY", "")]));
    assert_eq!(e.clone().into_map().len(), 3);
    assert!(Env::new().is_empty());
}

#[test]
fn insert_and_remove() {
    let mut e = Env::new();
    assert_eq!(e.insert("A", "1"), Ok(None));
    assert_eq!(e.insert("A", "2"), Ok(Some("1".to_owned())));
    assert_eq!(
        e.insert("1A", "x"),
        Err(EnvError::InvalidKey { key: "1A".into() })
    );
    assert_eq!(e.remove("A"), Some("2".to_owned()));
    assert_eq!(e.remove("A"), None);
}

#[test]
fn debug_never_shows_values() {
    let e = env(&[("SECRET", "hunter2"), ("TOKEN", "abc123")]);
    let debug = format!("{e:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("abc123"), "{debug}");
    assert!(
        debug.contains("SECRET") && debug.contains("TOKEN"),
        "{debug}"
    );
    let pretty = format!("{e:#?}");
    assert!(!pretty.contains("hunter2"), "{pretty}");
}

// --- user-facing parser -------------------------------------------------

#[test]
fn parse_basic_lines() {
    let e = Env::parse("FOO=bar\nBAZ=qux").unwrap();
    assert_eq!(e, env(&[("BAZ", "qux"), ("FOO", "bar")]));
}

#[test]
fn parse_skips_blanks_and_comments() {
    let text = "\n# a comment\n   # indented comment\nFOO=1\n   \n\t\nBAR=2\n";
    assert_eq!(
        Env::parse(text).unwrap(),
        env(&[("BAR", "2"), ("FOO", "1")])
    );
}

#[test]
fn parse_trims_key_and_keeps_value_verbatim() {
    let e = Env::parse("  FOO  =  spaced value  ").unwrap();
    assert_eq!(e.get("FOO"), Some("  spaced value  "));
}

#[test]
fn parse_splits_at_first_equals() {
    let e = Env::parse("URL=postgres://u:p@h/db?x=1&y=2").unwrap();
    assert_eq!(e.get("URL"), Some("postgres://u:p@h/db?x=1&y=2"));
}

#[test]
fn parse_allows_empty_values() {
    let e = Env::parse("FOO=\nBAR=\"\"\nBAZ=''").unwrap();
    assert_eq!(e, env(&[("BAR", ""), ("BAZ", ""), ("FOO", "")]));
}

#[test]
fn parse_double_quotes_with_escapes() {
    let e = Env::parse(
        r##"A="line1\nline2"
B="say \"hi\""
C="back\\slash"
D="keep \t as is"
E="# not a comment"
F=  "padded"  "##,
    )
    .unwrap();
    assert_eq!(e.get("A"), Some("line1\nline2"));
    assert_eq!(e.get("B"), Some("say \"hi\""));
    assert_eq!(e.get("C"), Some("back\\slash"));
    assert_eq!(e.get("D"), Some("keep \\t as is"));
    assert_eq!(e.get("E"), Some("# not a comment"));
    assert_eq!(e.get("F"), Some("padded"));
}

#[test]
fn parse_single_quotes_are_literal() {
    let e = Env::parse(r#"A='no \n escapes "here"'"#).unwrap();
    assert_eq!(e.get("A"), Some(r#"no \n escapes "here""#));
}

#[test]
fn parse_keeps_unbalanced_inner_quotes_when_not_leading() {
    let e = Env::parse("A=it's\nB=a\"b").unwrap();
    assert_eq!(e.get("A"), Some("it's"));
    assert_eq!(e.get("B"), Some("a\"b"));
}

#[test]
fn parse_rejects_bad_quoting_without_echoing_the_value() {
    let err = Env::parse("OK=1\nPASSWORD=\"hunter2").unwrap_err();
    assert_eq!(
        err,
        EnvError::UnterminatedQuote {
            line: 2,
            key: "PASSWORD".into()
        }
    );
    let msg = err.to_string();
    assert_eq!(
        msg,
        "line 2: the value of PASSWORD opens a quote that is never closed"
    );
    assert!(!format!("{err:?}").contains("hunter2"));

    assert_eq!(
        Env::parse("A='x").unwrap_err(),
        EnvError::UnterminatedQuote {
            line: 1,
            key: "A".into()
        }
    );
    assert_eq!(
        Env::parse(r#"A="x\"#).unwrap_err(),
        EnvError::UnterminatedQuote {
            line: 1,
            key: "A".into()
        }
    );
    let err = Env::parse("A=\"x\" y").unwrap_err();
    assert_eq!(
        err,
        EnvError::TextAfterQuote {
            line: 1,
            key: "A".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "line 1: the value of A has text after its closing quote"
    );
    assert_eq!(
        Env::parse("A='x'y").unwrap_err(),
        EnvError::TextAfterQuote {
            line: 1,
            key: "A".into()
        }
    );
}

#[test]
fn parse_line_without_equals_names_the_line() {
    let err = Env::parse("A=1\n\nsecretvalue\n").unwrap_err();
    assert_eq!(err, EnvError::MissingEquals { line: 3 });
    assert_eq!(err.to_string(), "line 3: expected KEY=VALUE");
    assert!(!err.to_string().contains("secretvalue"));
}

#[test]
fn parse_bad_key_names_line_and_key() {
    let err = Env::parse("A=1\n1FOO=x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: invalid env key \"1FOO\": keys start with a letter or '_' and contain only letters, digits and '_'"
    );
    assert_eq!(
        Env::parse("=value").unwrap_err().to_string(),
        "line 1: empty env key"
    );
}

#[test]
fn parse_last_duplicate_wins() {
    let e = Env::parse("A=1\nA=2\nA=3").unwrap();
    assert_eq!(e.get("A"), Some("3"));
    assert_eq!(e.len(), 1);
}

#[test]
fn parse_accepts_export_prefix() {
    let e = Env::parse("export FOO=1\nexport\tBAR=2\n  export BAZ=\"3\"").unwrap();
    assert_eq!(e, env(&[("BAR", "2"), ("BAZ", "3"), ("FOO", "1")]));
    // A variable literally called `export`, or one that merely starts with it.
    let e = Env::parse("export=1\nexport = 2\nexported=3").unwrap();
    assert_eq!(e, env(&[("export", " 2"), ("exported", "3")]));
}

#[test]
fn parse_handles_crlf() {
    let e = Env::parse("A=1\r\nB=\"2\"\r\n").unwrap();
    assert_eq!(e, env(&[("A", "1"), ("B", "2")]));
}

#[test]
fn parse_empty_text() {
    assert!(Env::parse("").unwrap().is_empty());
    assert!(Env::parse("\n\n# only comments\n").unwrap().is_empty());
}

// --- wire format --------------------------------------------------------

#[test]
fn wire_round_trip() {
    let text = "BAR=baz\nFOO=bar\nFROMOLD=1";
    let e = Env::parse_wire(text).unwrap();
    assert_eq!(e, env(&[("BAR", "baz"), ("FOO", "bar"), ("FROMOLD", "1")]));
    assert_eq!(e.to_wire(), text);
}

#[test]
fn to_wire_sorts_and_has_no_trailing_newline() {
    let e = env(&[("Z", "last"), ("A", "first"), ("M", "")]);
    assert_eq!(e.to_wire(), "A=first\nM=\nZ=last");
    assert_eq!(Env::new().to_wire(), "");
}

#[test]
fn parse_wire_reads_convox_text() {
    // Blank lines are skipped, keys are trimmed, values are verbatim (a value that
    // merely looks quoted is not unquoted).
    let text = "\n KEY =  value with spaces \nQ=\"quoted\"\nS='single'\nE=\n  \n";
    let e = Env::parse_wire(text).unwrap();
    assert_eq!(e.get("KEY"), Some("  value with spaces "));
    assert_eq!(e.get("Q"), Some("\"quoted\""));
    assert_eq!(e.get("S"), Some("'single'"));
    assert_eq!(e.get("E"), Some(""));
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn parse_wire_keeps_values_verbatim() {
    let e = Env::parse_wire("A=x=y=z\nB= spaced\nC=carriage\r").unwrap();
    assert_eq!(e.get("A"), Some("x=y=z"));
    assert_eq!(e.get("B"), Some(" spaced"));
    assert_eq!(e.get("C"), Some("carriage\r"));
}

#[test]
fn parse_wire_refuses_malformed_lines_by_number_without_values() {
    let cases: &[(&str, &str)] = &[
        ("A=1\nsecretvalue", "line 2: expected KEY=VALUE"),
        ("A=1\n\n=secretvalue", "line 3: empty env key"),
        ("  =secretvalue", "line 1: empty env key"),
        (
            "GOOD=1\nBAD-KEY=secretvalue",
            "line 2: invalid env key \"BAD-KEY\": keys start with a letter or '_' and contain only letters, digits and '_'",
        ),
        (
            "A=1\nB=2\nA=secretvalue",
            "line 3: duplicate env key A (first set on line 1)",
        ),
        (
            "A=1\n A =secretvalue",
            "line 2: duplicate env key A (first set on line 1)",
        ),
        (
            "P=$'secretvalue",
            "line 1: the value of P starts with $' but is not a valid $'…' quoted value (the closing quote is missing)",
        ),
        (
            "P=$'secret'value",
            "line 1: the value of P starts with $' but is not a valid $'…' quoted value (text after the closing quote)",
        ),
        (
            "P=$'secret\\qvalue'",
            "line 1: the value of P starts with $' but is not a valid $'…' quoted value (unknown escape; use \\\\ \\' \\\" \\n \\r or \\t)",
        ),
        (
            "P=$'secretvalue\\",
            "line 1: the value of P starts with $' but is not a valid $'…' quoted value (the closing quote is missing)",
        ),
    ];
    for (text, want) in cases {
        let err = Env::parse_wire(text).unwrap_err();
        assert_eq!(err.to_string(), *want, "{text:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!format!("{err:?}").contains("secret"), "{err:?}");
    }
    assert!(matches!(
        Env::parse_wire("A=1\nA=2").unwrap_err(),
        EnvError::DuplicateKey {
            line: 2,
            first: 1,
            ..
        }
    ));
}

#[test]
fn parse_wire_of_empty_text_is_empty() {
    assert!(Env::parse_wire("").unwrap().is_empty());
    assert!(Env::parse_wire("\n\n").unwrap().is_empty());
}

/// Values a process can receive, each of which must survive the wire unchanged.
fn awkward_values() -> Vec<(&'static str, String)> {
    vec![
        (
            "PEM",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQ+/=\nAbc\n-----END PRIVATE KEY-----\n".into(),
        ),
        ("CRLF", "line1\r\nline2\r\n".into()),
        ("TRAILING_CR", "value\r".into()),
        ("ONLY_NEWLINES", "\n\n".into()),
        ("EQUALS", "a=b==c=".into()),
        ("QUOTES", r#"'single' "double" \' \" $'x'"#.into()),
        ("DOLLAR_QUOTE", "$'looks encoded\\n'".into()),
        ("DOLLAR_QUOTE_ML", "$'\nx".into()),
        ("BACKSLASHES", r"C:\new\table\\".into()),
        ("UNICODE", "żółć 日本語 🦀 \u{200b}".into()),
        ("EMPTY", String::new()),
        ("SPACES", "  padded  ".into()),
        ("TABS", "a\tb\t".into()),
        ("CONTROL", "bell\x07esc\x1b[0m".into()),
        ("HASH", "# not a comment".into()),
        ("BIG", "x".repeat(64 * 1024)),
        ("BIG_ML", "0123456789abcdef\n".repeat(4 * 1024)),
    ]
}

#[test]
fn wire_round_trips_awkward_values_byte_for_byte() {
    let e = Env::from_map(
        awkward_values()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
    .unwrap();
    let wire = e.to_wire();
    assert_eq!(wire.lines().count(), e.len(), "one line per variable");
    assert!(!wire.contains('\r'), "no carriage return reaches the wire");
    assert_eq!(Env::parse_wire(&wire).unwrap(), e);
    for (key, value) in awkward_values() {
        let one = env(&[(key, &value)]);
        assert_eq!(
            Env::parse_wire(&one.to_wire()).unwrap().get(key),
            Some(value.as_str()),
            "{key}"
        );
    }
}

#[test]
fn to_wire_quotes_only_what_needs_it() {
    let e = env(&[
        ("PEM", "a\nb\n"),
        ("PLAIN", "it's \"fine\" \\n"),
        ("CR", "x\r"),
        ("LOOKS", "$'q'"),
    ]);
    assert_eq!(
        e.to_wire(),
        "CR=$'x\\r'\nLOOKS=$'$\\'q\\''\nPEM=$'a\\nb\\n'\nPLAIN=it's \"fine\" \\n"
    );
    // `$` alone, or `$'` later in a value, is not an opening quote.
    let e = env(&[("A", "$x"), ("B", "x$'y")]);
    assert_eq!(e.to_wire(), "A=$x\nB=x$'y");
    assert_eq!(Env::parse_wire(&e.to_wire()).unwrap(), e);
}

#[test]
fn parse_wire_decodes_bash_escapes_it_accepts() {
    let e = Env::parse_wire(r#"A=$'tab\there \"q\" \'s\' back\\slash\r\n'"#).unwrap();
    assert_eq!(e.get("A"), Some("tab\there \"q\" 's' back\\slash\r\n"));
    assert_eq!(Env::parse_wire("A=$''").unwrap().get("A"), Some(""));
}

/// What the convox CLI does with the env text it reads
/// (`pkg/structs/environment.go`): it splits lines, drops a `\r` before each line
/// end, splits at the first `=`, trims the key and skips lines without one; it
/// then posts the map back as sorted `K=V` lines joined by `\n`. Its line reader
/// (Go's `bufio.Scanner`) fails on a line of 64 KiB or more.
fn convox_cli_read_modify_write(text: &str, set: &[(&str, &str)]) -> String {
    let mut vars = BTreeMap::new();
    for line in text.split('\n') {
        assert!(
            line.len() < 64 * 1024,
            "the convox CLI cannot read this env"
        );
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some((k, v)) = line.split_once('=')
            && !k.trim().is_empty()
        {
            vars.insert(k.trim().to_owned(), v.to_owned());
        }
    }
    for (k, v) in set {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut lines: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn wire_survives_the_convox_cli_read_modify_write() {
    let e = Env::from_map(
        awkward_values()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("BIG"))
            .map(|(k, v)| (k.to_owned(), v))
            .chain([("LARGE_ML".to_owned(), "0123456789\n".repeat(5000))])
            .collect(),
    )
    .unwrap();
    let posted = convox_cli_read_modify_write(&e.to_wire(), &[("OTHER", "1")]);
    let mut want = e.clone();
    want.insert("OTHER", "1").unwrap();
    assert_eq!(Env::parse_wire(&posted).unwrap(), want);
    // And again: reading back what was stored changes nothing.
    let again = convox_cli_read_modify_write(&want.to_wire(), &[]);
    assert_eq!(Env::parse_wire(&again).unwrap(), want);
}

// --- apply --------------------------------------------------------------

#[test]
fn apply_unsets_then_sets() {
    let base = env(&[("A", "1"), ("B", "2"), ("C", "3")]);
    let next = base
        .apply(
            &map(&[("B", "20"), ("D", "4")]),
            &["A".into(), "MISSING".into()],
        )
        .unwrap();
    assert_eq!(next, env(&[("B", "20"), ("C", "3"), ("D", "4")]));
    // The original is untouched.
    assert_eq!(base.len(), 3);
}

#[test]
fn apply_rejects_conflicts_and_bad_keys() {
    let base = env(&[("A", "1")]);
    let err = base.apply(&map(&[("X", "1")]), &["X".into()]).unwrap_err();
    assert_eq!(err.to_string(), "env key \"X\" is both set and unset");
    assert_eq!(
        base.apply(&map(&[("bad key", "1")]), &[]).unwrap_err(),
        EnvError::InvalidKey {
            key: "bad key".into()
        }
    );
    assert_eq!(
        base.apply(&BTreeMap::new(), &["".into()]).unwrap_err(),
        EnvError::EmptyKey
    );
}

// --- bounds -------------------------------------------------------------

/// A value that makes `KEY=VALUE` exactly `len` bytes.
fn value_for(key: &str, len: usize) -> String {
    "v".repeat(len - key.len() - 1)
}

#[test]
fn bytes_count_each_var_with_its_nul() {
    assert_eq!(Env::new().bytes(), 0);
    let e = env(&[("A", "1"), ("BB", "")]);
    assert_eq!(e.bytes(), "A=1\0BB=\0".len());
    assert_eq!(e.bytes(), e.to_wire().len() + 1);
}

#[test]
fn a_var_at_the_limit_is_accepted_one_byte_more_is_refused() {
    let at = env(&[("BIG", &value_for("BIG", MAX_VAR_BYTES))]);
    at.check_bounds().unwrap();
    let over = env(&[("BIG", &value_for("BIG", MAX_VAR_BYTES + 1))]);
    let err = over.check_bounds().unwrap_err();
    assert_eq!(
        err,
        EnvError::VarTooLarge {
            key: "BIG".into(),
            len: MAX_VAR_BYTES + 1
        }
    );
    assert_eq!(
        err.to_string(),
        "env BIG is too large: BIG=VALUE is 131072 bytes, the limit is 131071 bytes \
         (128 KiB with its terminating NUL, the most a process accepts for one variable)"
    );
}

#[test]
fn the_var_limit_counts_the_key() {
    let key = "K".repeat(MAX_KEY_LEN);
    let value = "v".repeat(MAX_VAR_BYTES - MAX_KEY_LEN);
    let e = env(&[(&key, &value)]);
    assert!(matches!(
        e.check_bounds(),
        Err(EnvError::VarTooLarge { len, .. }) if len == MAX_VAR_BYTES + 1
    ));
}

#[test]
fn an_env_at_the_limit_is_accepted_one_byte_more_is_refused() {
    // Two variables at the per-variable limit take 2 * 128 KiB = the env limit.
    let (a, b) = (value_for("A", MAX_VAR_BYTES), value_for("B", MAX_VAR_BYTES));
    let at = env(&[("A", &a), ("B", &b)]);
    assert_eq!(at.bytes(), MAX_ENV_BYTES);
    at.check_bounds().unwrap();
    // A third, empty variable (`C=` and its NUL) with B three bytes shorter.
    let exact = env(&[("A", &a), ("B", &b[3..]), ("C", "")]);
    assert_eq!(exact.bytes(), MAX_ENV_BYTES);
    exact.check_bounds().unwrap();
    let one_over = env(&[("A", &a), ("B", &b[2..]), ("C", "")]);
    assert_eq!(one_over.bytes(), MAX_ENV_BYTES + 1);
    let err = one_over.check_bounds().unwrap_err();
    assert_eq!(
        err,
        EnvError::TooLarge {
            len: MAX_ENV_BYTES + 1,
            largest: "A".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "the env is too large: 262145 bytes (KEY=VALUE plus one byte per variable), \
         the limit is 262144 bytes (256 KiB); the largest variable is A"
    );
}

#[test]
fn a_nul_in_a_value_is_refused_naming_the_key_only() {
    let e = env(&[("OK", "fine"), ("TOKEN", "sec\0ret")]);
    let err = e.check_bounds().unwrap_err();
    assert_eq!(
        err,
        EnvError::NulInValue {
            key: "TOKEN".into()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("TOKEN") && msg.contains("NUL"), "{msg}");
    assert!(!msg.contains("sec"), "{msg}");
    // Wire text carries the NUL through to the check.
    let wire = Env::parse_wire("TOKEN=a\0b").unwrap();
    assert!(matches!(
        wire.check_bounds(),
        Err(EnvError::NulInValue { .. })
    ));
}

#[test]
fn bound_errors_never_show_values() {
    let secret = format!("hunter2{}", "x".repeat(MAX_VAR_BYTES));
    let err = env(&[("PASSWORD", &secret)]).check_bounds().unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
    assert!(!format!("{err:?}").contains("hunter2"));
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn an_empty_or_ordinary_env_is_within_bounds() {
    Env::new().check_bounds().unwrap();
    env(&[("A", "1"), ("DATABASE_URL", "postgres://u:p@h/db")])
        .check_bounds()
        .unwrap();
}

// --- diff ---------------------------------------------------------------

fn description(old: &str, new: &str) -> Option<String> {
    let old = Env::parse_wire(old.trim()).unwrap();
    let new = Env::parse_wire(new.trim()).unwrap();
    EnvDiff::between(&old, &new).description()
}

#[test]
fn diff_reference_examples() {
    assert_eq!(
        description("", "FOO=bar\nBAR=baz").as_deref(),
        Some("env add:BAR add:FOO")
    );
    assert_eq!(
        description("FOO=bar", "FOO=changed\nNEW=1").as_deref(),
        Some("env add:NEW change:FOO")
    );
    assert_eq!(
        description("BAR=baz\nFOO=bar", "FOO=bar").as_deref(),
        Some("env remove:BAR")
    );
    assert_eq!(
        description("FOO=1\nNEW=2\nP=3\nQ=4\nX=5", "ONLY=1").as_deref(),
        Some("env add:ONLY remove:FOO remove:NEW remove:P remove:Q remove:X")
    );
    assert_eq!(
        description("BAR=1\nBAZ=2", "BAR=9\nFOO=3").as_deref(),
        Some("env add:FOO change:BAR remove:BAZ")
    );
}

#[test]
fn diff_lists_are_sorted() {
    let old = env(&[("Z", "1"), ("Y", "1"), ("C", "1"), ("B", "1")]);
    let new = env(&[("Z", "2"), ("C", "2"), ("M", "1"), ("A", "1")]);
    let d = EnvDiff::between(&old, &new);
    assert_eq!(d.adds, ["A", "M"]);
    assert_eq!(d.changes, ["C", "Z"]);
    assert_eq!(d.removes, ["B", "Y"]);
    assert_eq!(
        d.summary(),
        "add:A add:M change:C change:Z remove:B remove:Y"
    );
    assert_eq!(d.to_string(), d.summary());
}

#[test]
fn diff_of_equal_envs_is_empty() {
    let e = env(&[("A", "1")]);
    let d = EnvDiff::between(&e, &e.clone());
    assert!(d.is_empty());
    assert_eq!(d.summary(), "");
    assert_eq!(d.description(), None);
    assert!(EnvDiff::between(&Env::new(), &Env::new()).is_empty());
}

#[test]
fn diff_treats_empty_value_as_present() {
    let d = EnvDiff::between(&env(&[("A", "")]), &env(&[("A", "x"), ("B", "")]));
    assert_eq!(d.summary(), "add:B change:A");
}

#[test]
fn diff_debug_has_no_values() {
    let d = EnvDiff::between(&env(&[("A", "secret1")]), &env(&[("A", "secret2")]));
    let debug = format!("{d:?}");
    assert!(!debug.contains("secret"), "{debug}");
}
