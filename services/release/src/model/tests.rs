use super::*;

const MANIFEST: &str = "services:\n  web:\n    build: .\n    port: 5000\n";

fn release(id: &str, build: Option<&str>, env: &str, description: &str) -> Release {
    Release {
        id: ReleaseId::parse(id).unwrap(),
        app: AppName::parse("myapp").unwrap(),
        seq: 1,
        build: build.map(|b| BuildId::parse(b).unwrap()),
        manifest: if build.is_some() {
            MANIFEST.into()
        } else {
            String::new()
        },
        artifacts: BTreeMap::new(),
        build_description: if build.is_some() {
            description.into()
        } else {
            String::new()
        },
        env: Env::parse_wire(env).unwrap(),
        description: description.into(),
        parent: None,
        rollback_of: None,
        actor: "test".into(),
        created: Utc::now(),
    }
}

#[test]
fn env_change_forks_build_and_describes_the_diff() {
    let base = release(
        "RAAAAAAAAAA",
        Some("BAAAAAAAAAA"),
        "BAR=1\nBAZ=2",
        "build abc first",
    );
    let request = ReleaseRequest {
        env: EnvInput::Replace(Env::parse_wire("BAR=9\nFOO=bar").unwrap()),
        ..ReleaseRequest::keep()
    };
    let draft = plan(Some(&base), None, &request, None).unwrap();
    assert_eq!(draft.description, "env add:FOO change:BAR remove:BAZ");
    assert_eq!(draft.build, base.build);
    assert_eq!(draft.manifest, MANIFEST);
    assert_eq!(draft.parent, Some(base.id.clone()));
}

#[test]
fn an_unchanged_env_keeps_the_build_description() {
    let base = release("RAAAAAAAAAA", Some("BAAAAAAAAAA"), "A=1", "build abc first");
    let request = ReleaseRequest {
        env: EnvInput::Replace(Env::parse_wire("A=1").unwrap()),
        ..ReleaseRequest::keep()
    };
    let draft = plan(Some(&base), None, &request, None).unwrap();
    assert_eq!(draft.description, "build abc first");
}

#[test]
fn a_new_build_needs_a_manifest_and_brings_its_description() {
    let base = release("RAAAAAAAAAA", Some("BAAAAAAAAAA"), "A=1", "old build");
    let mut request = ReleaseRequest {
        build: Some(BuildId::parse("BBBBBBBBBBB").unwrap()),
        ..ReleaseRequest::keep()
    };
    let err = plan(Some(&base), None, &request, None).unwrap_err();
    assert!(err.to_string().contains("pass its manifest"), "{err}");

    request.manifest = Some(MANIFEST.into());
    request.description = Some("build 0a1b2c3d4e my commit".into());
    let draft = plan(Some(&base), None, &request, None).unwrap();
    assert_eq!(draft.description, "build 0a1b2c3d4e my commit");
    assert_eq!(draft.build_description, "build 0a1b2c3d4e my commit");
    assert_eq!(draft.env.get("A"), Some("1"), "env is forked");
}

#[test]
fn a_copy_is_described_as_a_rollback() {
    let base = release("RBBBBBBBBBB", Some("BBBBBBBBBBB"), "A=2", "newer");
    let old = release("RAAAAAAAAAA", Some("BAAAAAAAAAA"), "A=1", "older");
    let request = ReleaseRequest {
        copy_of: Some(old.id.clone()),
        ..ReleaseRequest::keep()
    };
    let draft = plan(Some(&base), Some(&old), &request, None).unwrap();
    assert_eq!(draft.description, "rollback to RAAAAAAAAAA");
    assert_eq!(draft.rollback_of, Some(old.id.clone()));
    assert_eq!(draft.parent, Some(base.id.clone()));
    assert_eq!(draft.env.get("A"), Some("1"));
    assert_eq!(draft.build, old.build);
}

#[test]
fn malformed_manifests_are_refused_with_their_line() {
    let request = ReleaseRequest {
        build: Some(BuildId::parse("BAAAAAAAAAA").unwrap()),
        manifest: Some("services:\n  web:\n    port: abc\n".into()),
        ..ReleaseRequest::keep()
    };
    let err = plan(None, None, &request, None).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn an_expected_newest_release_is_compare_and_set() {
    let newest = release("RBBBBBBBBBB", None, "A=2", "");
    let seen = |id: &str| ExpectedNewest::Release(ReleaseId::parse(id).unwrap());
    let mut request = ReleaseRequest {
        env: EnvInput::Change {
            set: [("A".to_owned(), "3".to_owned())].into(),
            unset: vec![],
        },
        expected_newest: Some(seen("RBBBBBBBBBB")),
        ..ReleaseRequest::keep()
    };
    assert!(plan(Some(&newest), None, &request, None).is_ok());
    // Someone else's release came first: refused, naming it.
    request.expected_newest = Some(seen("RAAAAAAAAAA"));
    let err = plan(Some(&newest), None, &request, None).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert!(err.to_string().contains("RBBBBBBBBBB"), "{err}");
    assert!(err.to_string().contains("not RAAAAAAAAAA"), "{err}");
    assert!(!err.to_string().contains('3'), "no value: {err}");
    // "No release yet" holds only while there is none.
    request.expected_newest = Some(ExpectedNewest::NoRelease);
    assert!(plan(None, None, &request, None).is_ok());
    assert!(matches!(
        plan(Some(&newest), None, &request, None),
        Err(Error::FailedPrecondition(_))
    ));
    // With a parent the base is not the newest: refused as malformed.
    request.parent = Some(newest.id.clone());
    assert!(matches!(
        plan(Some(&newest), None, &request, None),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_delta_applies_to_the_forked_env() {
    let base = release("RAAAAAAAAAA", None, "KEEP=1\nGONE=2", "");
    let request = ReleaseRequest {
        env: EnvInput::Change {
            set: [("NEW".to_owned(), "3".to_owned())].into(),
            unset: vec!["GONE".into()],
        },
        ..ReleaseRequest::keep()
    };
    let draft = plan(Some(&base), None, &request, None).unwrap();
    assert_eq!(draft.env.to_wire(), "KEEP=1\nNEW=3");
    assert_eq!(draft.description, "env add:NEW remove:GONE");
}

#[test]
fn every_path_checks_the_env_bounds() {
    use slipway_domain::env::MAX_VAR_BYTES;
    let base = release("RAAAAAAAAAA", Some("BAAAAAAAAAA"), "A=1", "build");
    let big = "v".repeat(MAX_VAR_BYTES);
    let replace = ReleaseRequest {
        env: EnvInput::Replace(Env::parse_wire(&format!("BIG={big}")).unwrap()),
        ..ReleaseRequest::keep()
    };
    let err = plan(Some(&base), None, &replace, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().starts_with("env BIG is too large"), "{err}");

    let change = ReleaseRequest {
        env: EnvInput::Change {
            set: [("TOKEN".to_owned(), "a\0b".to_owned())].into(),
            unset: vec![],
        },
        ..ReleaseRequest::keep()
    };
    let err = plan(Some(&base), None, &change, None).unwrap_err();
    assert!(err.to_string().contains("TOKEN"), "{err}");
    assert!(err.to_string().contains("NUL"), "{err}");

    // A copy of a release stored before the bounds is checked too.
    let mut old = release("RBBBBBBBBBB", Some("BAAAAAAAAAA"), "A=1", "old");
    old.env.insert("HUGE", big).unwrap();
    let copy = ReleaseRequest {
        copy_of: Some(old.id.clone()),
        ..ReleaseRequest::keep()
    };
    let err = plan(Some(&base), Some(&old), &copy, None).unwrap_err();
    assert!(
        err.to_string().starts_with("env HUGE is too large"),
        "{err}"
    );
}

#[test]
fn a_release_over_its_size_limit_is_refused() {
    let base = release("RAAAAAAAAAA", Some("BAAAAAAAAAA"), "A=1", "build");
    let at_limit = MAX_RELEASE_BYTES - base.bytes() + base.description.len();
    let mut request = ReleaseRequest {
        description: Some("d".repeat(at_limit)),
        ..ReleaseRequest::keep()
    };
    let draft = plan(Some(&base), None, &request, None).unwrap();
    assert_eq!(draft.bytes(), MAX_RELEASE_BYTES);
    request.description = Some("d".repeat(at_limit + 1));
    let err = plan(Some(&base), None, &request, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "release is too large: its env, manifest, artifacts and descriptions take {} bytes, \
             the limit is 1572864 bytes (1.5 MiB)",
            MAX_RELEASE_BYTES + 1
        )
    );
}

#[test]
fn the_size_bound_covers_both_wire_forms() {
    use prost::Message as _;
    use slipway_api::rollout::v1 as rpb;
    let mut env = Env::new();
    for i in 0..2000 {
        env.insert(format!("K{i}"), "").unwrap();
    }
    env.insert("LONG", "x".repeat(100_000)).unwrap();
    let mut r = release("RAAAAAAAAAA", Some("BAAAAAAAAAA"), "", "build");
    r.env = env;
    r.artifacts = (0..50)
        .map(|i| (format!("svc{i}"), format!("file:///srv/artifact/{i}")))
        .collect();
    r.actor = "é".repeat(128);
    r.parent = Some(ReleaseId::parse("RBBBBBBBBBB").unwrap());
    let bound = r.bytes();
    let spec = rpb::ReleaseSpec {
        app: r.app.to_string(),
        release: r.id.to_string(),
        build: r.build.as_ref().map(|b| b.to_string()).unwrap_or_default(),
        manifest: r.manifest.clone(),
        env: r.env.as_map().clone().into_iter().collect(),
        artifacts: r.artifacts.clone().into_iter().collect(),
    };
    assert!(
        spec.encoded_len() <= bound,
        "{} > {bound}",
        spec.encoded_len()
    );
    let ledger = crate::grpc::release_pb(r);
    assert!(
        ledger.encoded_len() <= bound,
        "{} > {bound}",
        ledger.encoded_len()
    );
}

/// Facts of a promotion of `target` on an app with nothing active.
fn facts(target: &Release) -> PromotionFacts<'_> {
    PromotionFacts {
        target,
        active_release: None,
        active_seq: None,
        promotion_open: false,
        force: false,
    }
}

impl<'a> PromotionFacts<'a> {
    fn active(self, id: &'a str, seq: i64) -> Self {
        Self {
            active_release: Some(id),
            active_seq: Some(seq),
            ..self
        }
    }

    fn open(self) -> Self {
        Self {
            promotion_open: true,
            ..self
        }
    }

    fn forced(self) -> Self {
        Self {
            force: true,
            ..self
        }
    }
}

#[test]
fn promotion_checks_in_the_racks_order() {
    use PromotionVerdict::{AlreadyActive, Start};
    let needy_manifest = "services:\n  web:\n    build: .\n    port: 5000\n    environment:\n      - DATABASE_URL\n      - MODE=prod\n";
    let mut good = release("RBBBBBBBBBB", Some("BAAAAAAAAAA"), "A=1", "build");
    good.seq = 2;
    let mut bare = release("RBBBBBBBBBB", None, "A=1", "");
    bare.seq = 2;
    let mut blank = good.clone();
    blank.manifest = "  \n".into();
    let mut broken = good.clone();
    broken.manifest = "services:\n  web:\n    port: abc\n".into();
    let mut needy = good.clone();
    needy.manifest = needy_manifest.into();
    let mut satisfied = needy.clone();
    satisfied.env = Env::parse_wire("DATABASE_URL=postgres://db").unwrap();
    let refused = |r: PromotionRefusal| Err::<PromotionVerdict, _>(r);
    let updating = refused(PromotionRefusal::AppUpdating);
    let older = refused(PromotionRefusal::OlderRelease);
    let empty = refused(PromotionRefusal::EmptyManifest);
    let missing = refused(PromotionRefusal::MissingEnv {
        release: needy.id.clone(),
        missing: vec!["env DATABASE_URL is required by service web".into()],
    });
    let cases = [
        ("first promotion", facts(&good), Ok(Start)),
        (
            "newer than active",
            facts(&good).active("RAAAAAAAAAA", 1),
            Ok(Start),
        ),
        ("in flight", facts(&good).open(), updating.clone()),
        (
            "in flight, active",
            facts(&good).active("RBBBBBBBBBB", 2).open(),
            updating.clone(),
        ),
        (
            "in flight, forced",
            facts(&good).active("RCCCCCCCCCC", 3).open().forced(),
            updating,
        ),
        (
            "already active",
            facts(&good).active("RBBBBBBBBBB", 2),
            Ok(AlreadyActive),
        ),
        (
            "active even if bare",
            facts(&bare).active("RBBBBBBBBBB", 2),
            Ok(AlreadyActive),
        ),
        (
            "older",
            facts(&good).active("RCCCCCCCCCC", 3),
            older.clone(),
        ),
        (
            "older and bare",
            facts(&bare).active("RCCCCCCCCCC", 3),
            older,
        ),
        (
            "older, forced",
            facts(&good).active("RCCCCCCCCCC", 3).forced(),
            Ok(Start),
        ),
        (
            "same seq is not older",
            facts(&good).active("RCCCCCCCCCC", 2),
            Ok(Start),
        ),
        ("no manifest", facts(&bare), empty.clone()),
        ("blank manifest", facts(&blank), empty.clone()),
        (
            "forced, bare",
            facts(&bare).active("RCCCCCCCCCC", 3).forced(),
            empty,
        ),
        ("missing env", facts(&needy), missing),
        ("required env set", facts(&satisfied), Ok(Start)),
    ];
    for (case, facts, want) in cases {
        assert_eq!(check_promotion(&facts), want, "{case}");
    }
    let err = check_promotion(&facts(&broken)).unwrap_err();
    assert_eq!(err.kind(), slipway_api::refusal::Refusal::InvalidManifest);
    assert!(
        err.to_string()
            .starts_with("release RBBBBBBBBBB has an invalid manifest: "),
        "{err}"
    );
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn promotion_refusals_keep_the_racks_words() {
    let release = ReleaseId::parse("RAAAAAAAAAA").unwrap();
    let words = [
        (PromotionRefusal::AppUpdating, "app is currently updating"),
        (
            PromotionRefusal::OlderRelease,
            "can not promote an older release, try rollback",
        ),
        (
            PromotionRefusal::EmptyManifest,
            "can not promote a release with an empty manifest",
        ),
        (
            PromotionRefusal::InvalidManifest {
                release: release.clone(),
                reason: "line 3: bad port".into(),
            },
            "release RAAAAAAAAAA has an invalid manifest: line 3: bad port",
        ),
        (
            PromotionRefusal::MissingEnv {
                release,
                missing: vec![
                    "env A is required by service web".into(),
                    "env B is required by service worker".into(),
                ],
            },
            "can not promote RAAAAAAAAAA: env A is required by service web, \
             env B is required by service worker; set it with `env set` first",
        ),
    ];
    let mut kinds = Vec::new();
    for (refusal, message) in words {
        assert_eq!(refusal.to_string(), message);
        kinds.push(refusal.kind());
    }
    assert_eq!(kinds, slipway_api::refusal::Refusal::ALL, "one kind each");
}
