//! Table tests of the planner: states built by hand, no process, no
//! database; the clock is tokio's, paused, so backoff is exact.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_domain::{Env, Manifest};
use tokio::time::Instant;

use super::{backoff, bounds, completeness, plan};
use crate::runtime::Spec;
use crate::runtime::local::process::{Proc, Status};
use crate::runtime::local::state::{Action, AppState, Svc, Target};

/// A spec of release `release` whose one service `web` runs `count`
/// processes within `minimum`/`maximum` percent.
fn spec(release: &str, count: u32, minimum: u32, maximum: u32) -> Arc<Spec> {
    let yaml = format!(
        "services:\n  web:\n    build: .\n    command: run\n    scale:\n      count: {count}\n    \
         deployment:\n      minimum: {minimum}\n      maximum: {maximum}\n    termination:\n      \
         grace: 7\n"
    );
    Arc::new(Spec {
        app: "app1".into(),
        release: release.into(),
        build: String::new(),
        manifest: Manifest::parse(&yaml).unwrap_or_else(|e| panic!("{e}")),
        env: Env::default(),
        artifacts: BTreeMap::new(),
        overrides: Default::default(),
    })
}

/// A process record only: nothing runs, and the planner sends no signal.
fn proc(id: &str, release: &str, status: Status) -> Arc<Proc> {
    let p = Proc::new(
        id.into(),
        "web".into(),
        release.into(),
        0,
        0,
        Utc::now(),
        PathBuf::from("/nonexistent/log"),
    );
    p.lock().status = status;
    Arc::new(p)
}

fn state(target: Option<Arc<Spec>>, procs: Vec<Arc<Proc>>) -> AppState {
    let mut st = AppState {
        target: target.map(|spec| Target::new(spec, "P1".into())),
        ..AppState::default()
    };
    st.services.insert(
        "web".into(),
        Svc {
            procs,
            ..Svc::default()
        },
    );
    st
}

/// (starts, ids of the processes stopped).
fn summary(actions: &[Action]) -> (usize, Vec<String>) {
    let starts = actions
        .iter()
        .filter(|a| matches!(a, Action::Start { .. }))
        .count();
    let stops = actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { proc, .. } => Some(proc.id.clone()),
            Action::Start { .. } => None,
        })
        .collect();
    (starts, stops)
}

#[test]
fn bounds_follow_the_deployment_percentages() {
    // (desired, minimum, maximum) -> (must stay healthy, may run at once)
    let cases = [
        ((1, 100, 200), (1, 2)),
        ((2, 100, 200), (2, 4)),
        ((3, 50, 200), (2, 6)),
        ((3, 100, 150), (3, 5)),
        ((4, 0, 100), (0, 4)),
        ((4, 25, 110), (1, 5)),
        // Neither a healthy one may go nor an extra one run (manifests refuse
        // this, stored specs may predate the check): one extra runs.
        ((2, 100, 100), (2, 3)),
        ((0, 100, 200), (0, 1)),
    ];
    for ((desired, minimum, maximum), want) in cases {
        assert_eq!(
            bounds(desired, minimum, maximum),
            want,
            "desired {desired}, minimum {minimum}%, maximum {maximum}%"
        );
    }
}

#[test]
fn backoff_doubles_from_100ms_up_to_10s() {
    let cases = [
        (0, 100),
        (1, 100),
        (2, 200),
        (3, 400),
        (5, 1_600),
        (7, 6_400),
        (8, 10_000),
        (40, 10_000),
    ];
    for (restarts, ms) in cases {
        assert_eq!(
            backoff(restarts),
            Duration::from_millis(ms),
            "after {restarts} restarts"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn plans_a_rolling_update_within_the_bounds() {
    use Status::{Healthy, Starting, Unhealthy};
    struct Case {
        name: &'static str,
        count: u32,
        minimum: u32,
        maximum: u32,
        procs: Vec<(&'static str, &'static str, Status)>,
        starts: usize,
        stops: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "a first release starts every process",
            count: 2,
            minimum: 100,
            maximum: 200,
            procs: vec![],
            starts: 2,
            stops: &[],
        },
        Case {
            name: "surge: new ones start while every old one serves",
            count: 2,
            minimum: 100,
            maximum: 200,
            procs: vec![("o1", "ROLD", Healthy), ("o2", "ROLD", Healthy)],
            starts: 2,
            stops: &[],
        },
        Case {
            name: "no surge room: an old one goes first, down to the minimum",
            count: 2,
            minimum: 50,
            maximum: 100,
            procs: vec![("o1", "ROLD", Healthy), ("o2", "ROLD", Healthy)],
            starts: 0,
            stops: &["o1"],
        },
        Case {
            name: "surge is rounded up: 150% of 3 runs 5 at once",
            count: 3,
            minimum: 100,
            maximum: 150,
            procs: vec![
                ("o1", "ROLD", Healthy),
                ("o2", "ROLD", Healthy),
                ("o3", "ROLD", Healthy),
            ],
            starts: 2,
            stops: &[],
        },
        Case {
            name: "old ones wait while new ones are starting",
            count: 2,
            minimum: 100,
            maximum: 200,
            procs: vec![
                ("o1", "ROLD", Healthy),
                ("o2", "ROLD", Healthy),
                ("n1", "RNEW", Starting),
                ("n2", "RNEW", Starting),
            ],
            starts: 0,
            stops: &[],
        },
        Case {
            name: "old ones go as new ones become healthy",
            count: 2,
            minimum: 100,
            maximum: 200,
            procs: vec![
                ("o1", "ROLD", Healthy),
                ("o2", "ROLD", Healthy),
                ("n1", "RNEW", Healthy),
                ("n2", "RNEW", Starting),
            ],
            starts: 0,
            stops: &["o1"],
        },
        Case {
            name: "an unhealthy old one always goes",
            count: 1,
            minimum: 100,
            maximum: 200,
            procs: vec![("o1", "ROLD", Unhealthy)],
            starts: 1,
            stops: &["o1"],
        },
        Case {
            name: "extra processes of the release go, unhealthy first",
            count: 1,
            minimum: 100,
            maximum: 200,
            procs: vec![("n1", "RNEW", Healthy), ("n2", "RNEW", Unhealthy)],
            starts: 0,
            stops: &["n2"],
        },
        Case {
            name: "scale to zero stops everything",
            count: 0,
            minimum: 100,
            maximum: 200,
            procs: vec![("o1", "ROLD", Healthy), ("n1", "RNEW", Healthy)],
            starts: 0,
            stops: &["n1", "o1"],
        },
    ];
    for case in cases {
        let procs = case
            .procs
            .iter()
            .map(|(id, release, status)| proc(id, release, *status))
            .collect();
        let target = spec("RNEW", case.count, case.minimum, case.maximum);
        let mut st = state(Some(target), procs);
        let (actions, wake) = plan(&mut st, Instant::now());
        let (starts, mut stops) = summary(&actions);
        stops.sort();
        assert_eq!(
            (starts, stops),
            (
                case.starts,
                case.stops.iter().map(|s| s.to_string()).collect()
            ),
            "{}",
            case.name
        );
        assert_eq!(wake, Duration::from_millis(500), "{}", case.name);
        for action in &actions {
            if let Action::Stop { proc, grace } = action {
                assert_eq!(proc.status(), Status::Stopping, "{}", case.name);
                assert_eq!(*grace, Duration::from_secs(7), "{}", case.name);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_target_starts_nothing_and_keeps_the_old_processes() {
    let mut st = state(
        Some(spec("RNEW", 2, 50, 100)),
        vec![
            proc("o1", "ROLD", Status::Healthy),
            proc("o2", "ROLD", Status::Healthy),
        ],
    );
    st.target.as_mut().unwrap().failed = Some("it broke".into());
    let (actions, _) = plan(&mut st, Instant::now());
    assert_eq!(summary(&actions), (0, vec![]));
}

#[tokio::test(start_paused = true)]
async fn without_a_target_every_process_stops() {
    let mut st = state(
        None,
        vec![
            proc("o1", "ROLD", Status::Healthy),
            proc("o2", "ROLD", Status::Starting),
        ],
    );
    let (actions, _) = plan(&mut st, Instant::now());
    let (starts, mut stops) = summary(&actions);
    stops.sort();
    assert_eq!((starts, stops), (0, vec!["o1".into(), "o2".into()]));
}

#[tokio::test(start_paused = true)]
async fn starts_wait_out_the_backoff() {
    let mut st = state(Some(spec("RNEW", 1, 100, 200)), vec![]);
    let svc = st.services.get_mut("web").unwrap();
    svc.back_off(Instant::now());
    svc.back_off(Instant::now());
    assert_eq!(svc.restarts, 2);

    let (actions, wake) = plan(&mut st, Instant::now());
    assert_eq!(summary(&actions), (0, vec![]), "backed off");
    assert_eq!(
        wake,
        Duration::from_millis(200),
        "wakes when the backoff ends"
    );

    tokio::time::advance(Duration::from_millis(150)).await;
    let (actions, wake) = plan(&mut st, Instant::now());
    assert_eq!(summary(&actions), (0, vec![]), "still backed off");
    assert_eq!(wake, Duration::from_millis(50));

    tokio::time::advance(Duration::from_millis(50)).await;
    let (actions, wake) = plan(&mut st, Instant::now());
    assert_eq!(summary(&actions), (1, vec![]), "backoff over");
    assert_eq!(wake, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn completeness_needs_every_process_healthy_and_nothing_else() {
    let cases = [
        (
            vec![
                ("n1", "RNEW", Status::Healthy),
                ("n2", "RNEW", Status::Healthy),
            ],
            true,
            2,
        ),
        (
            vec![
                ("n1", "RNEW", Status::Healthy),
                ("n2", "RNEW", Status::Starting),
            ],
            false,
            1,
        ),
        (
            vec![
                ("n1", "RNEW", Status::Healthy),
                ("n2", "RNEW", Status::Healthy),
                ("o1", "ROLD", Status::Stopping),
            ],
            false,
            2,
        ),
        (vec![("n1", "RNEW", Status::Healthy)], false, 1),
    ];
    for (procs, complete, healthy) in cases {
        let names: Vec<_> = procs
            .iter()
            .map(|(id, _, s)| format!("{id} {s:?}"))
            .collect();
        let procs = procs
            .into_iter()
            .map(|(id, release, status)| proc(id, release, status))
            .collect();
        let mut st = state(Some(spec("RNEW", 2, 100, 200)), procs);
        let (got, progress) = completeness(&st);
        assert_eq!(got, complete, "{names:?}");
        assert_eq!(progress.len(), 1);
        assert_eq!((progress[0].healthy, progress[0].desired), (healthy, 2));

        // The planner settles a complete target, and only a complete one.
        plan(&mut st, Instant::now());
        assert_eq!(st.target.as_ref().unwrap().settled, complete, "{names:?}");
    }
}

#[test]
fn a_process_of_a_service_no_longer_in_the_manifest_keeps_it_incomplete() {
    let mut st = state(
        Some(spec("RNEW", 1, 100, 200)),
        vec![proc("n1", "RNEW", Status::Healthy)],
    );
    assert!(completeness(&st).0);
    st.services.insert(
        "old-worker".into(),
        Svc {
            procs: vec![proc("w1", "ROLD", Status::Healthy)],
            ..Svc::default()
        },
    );
    assert!(!completeness(&st).0);
    assert!(!completeness(&AppState::default()).0, "no target");
}

#[test]
fn a_rolling_out_target_is_its_release_neither_settled_nor_failed() {
    let mut target = Target::new(spec("RNEW", 1, 100, 200), "P1".into());
    assert!(target.rolling_out("RNEW"));
    assert!(!target.rolling_out("ROLD"));
    target.settled = true;
    assert!(!target.rolling_out("RNEW"));
    target.settled = false;
    target.failed = Some("x".into());
    assert!(!target.rolling_out("RNEW"));
}
