//! Relative times exactly as go-humanize's `Time()` prints them (the CREATED
//! and STARTED columns of the `convox` CLI): the first magnitude larger than
//! the age picks the wording, and counts are truncated, not rounded.

use chrono::{DateTime, Utc};
use slipway_client::types::go_time;

const SECOND: i128 = 1_000_000_000;
const MINUTE: i128 = 60 * SECOND;
const HOUR: i128 = 60 * MINUTE;
const DAY: i128 = 24 * HOUR;
const WEEK: i128 = 7 * DAY;
const MONTH: i128 = 30 * DAY;
const YEAR: i128 = 12 * MONTH;
const LONG_TIME: i128 = 37 * YEAR;

/// go-humanize's `defaultMagnitudes`: (upper bound, wording, divisor).
/// `{n}` is the age divided by the divisor, `{label}` is `ago`/`from now`.
const MAGNITUDES: &[(i128, &str, i128)] = &[
    (SECOND, "now", SECOND),
    (2 * SECOND, "1 second {label}", 1),
    (MINUTE, "{n} seconds {label}", SECOND),
    (2 * MINUTE, "1 minute {label}", 1),
    (HOUR, "{n} minutes {label}", MINUTE),
    (2 * HOUR, "1 hour {label}", 1),
    (DAY, "{n} hours {label}", HOUR),
    (2 * DAY, "1 day {label}", 1),
    (WEEK, "{n} days {label}", DAY),
    (2 * WEEK, "1 week {label}", 1),
    (MONTH, "{n} weeks {label}", WEEK),
    (2 * MONTH, "1 month {label}", 1),
    (YEAR, "{n} months {label}", MONTH),
    (18 * MONTH, "1 year {label}", 1),
    (2 * YEAR, "2 years {label}", 1),
    (LONG_TIME, "{n} years {label}", YEAR),
    (i128::MAX, "a long while {label}", 1),
];

/// `then` relative to `now` (`5 minutes ago`, `now`, `2 days from now`);
/// Go's zero time (unset) gives an empty string.
pub(crate) fn relative(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if go_time::is_zero(&then) {
        return String::new();
    }
    let nanos = |t: DateTime<Utc>| {
        i128::from(t.timestamp()) * SECOND + i128::from(t.timestamp_subsec_nanos())
    };
    let diff = nanos(now) - nanos(then);
    let (label, age) = if diff < 0 {
        ("from now", -diff)
    } else {
        ("ago", diff)
    };
    let (_, wording, divisor) = MAGNITUDES
        .iter()
        .find(|(bound, _, _)| *bound > age)
        .unwrap_or(&MAGNITUDES[MAGNITUDES.len() - 1]);
    wording
        .replace("{n}", &(age / divisor).to_string())
        .replace("{label}", label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn ago(seconds: i64) -> String {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 6, 0, 0).unwrap();
        relative(now - chrono::Duration::seconds(seconds), now)
    }

    #[test]
    fn every_row_of_the_reference_table() {
        let minute = 60;
        let hour = 60 * minute;
        let day = 24 * hour;
        let week = 7 * day;
        let month = 30 * day;
        let year = 12 * month;
        let cases = [
            (0, "now"),
            (1, "1 second ago"),
            (2, "2 seconds ago"),
            (59, "59 seconds ago"),
            (minute, "1 minute ago"),
            (2 * minute - 1, "1 minute ago"),
            (2 * minute, "2 minutes ago"),
            (hour - 1, "59 minutes ago"),
            (hour, "1 hour ago"),
            (2 * hour, "2 hours ago"),
            (day - 1, "23 hours ago"),
            (day, "1 day ago"),
            (2 * day, "2 days ago"),
            (week - 1, "6 days ago"),
            (week, "1 week ago"),
            (2 * week, "2 weeks ago"),
            (month - 1, "4 weeks ago"),
            (month, "1 month ago"),
            (2 * month, "2 months ago"),
            (year - 1, "11 months ago"),
            (year, "1 year ago"),
            (18 * month - 1, "1 year ago"),
            (18 * month, "2 years ago"),
            (2 * year, "2 years ago"),
            (5 * year, "5 years ago"),
            (37 * year, "a long while ago"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(ago(seconds), expected, "{seconds} s");
        }
    }

    #[test]
    fn sub_second_ages_are_now_and_future_times_read_from_now() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 6, 0, 0).unwrap();
        assert_eq!(
            relative(now - chrono::Duration::milliseconds(999), now),
            "now"
        );
        assert_eq!(
            relative(now + chrono::Duration::milliseconds(500), now),
            "now"
        );
        assert_eq!(ago(-90), "1 minute from now");
        assert_eq!(ago(-3 * 86_400), "3 days from now");
    }

    #[test]
    fn zero_times_are_blank() {
        assert_eq!(relative(go_time::ZERO, Utc::now()), "");
    }
}
