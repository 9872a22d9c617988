use super::*;

#[test]
fn surge_rounds_up_and_unavailable_down() {
    let d = |surge: &str, unavailable: &str| json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}});
    // 3 replicas, maximum 150 (surge 50%: 1.5 -> 2), minimum 50 (1.5 -> 1).
    assert_eq!(surge_and_unavailable(&d("50%", "50%"), 3), (2, 1));
    // Both rounding to zero: one may be unavailable.
    assert_eq!(surge_and_unavailable(&d("0%", "25%"), 3), (0, 1));
    assert_eq!(surge_and_unavailable(&json!({"spec": {}}), 4), (1, 1));
}

#[test]
fn behaviour_comes_from_the_tag() {
    assert_eq!(tag("registry.test/shop/web:crash"), "crash");
    assert_eq!(tag("localhost:5000/web:slow-3"), "slow-3");
    assert_eq!(tag("localhost:5000/web"), "");
    assert_eq!(tag("r/web@sha256:abc"), "");
}
