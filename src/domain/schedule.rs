//! Schedules: a saved job launched on a cron timer, in a time zone.
//!
//! Pure: the caller passes the instants and stores the results. A [`Cron`] expression is
//! matched against the wall clock of the schedule's [`Zone`], and each matching local time
//! is turned into one UTC instant by the rules of [`next_fires`]:
//!
//! ```text
//!  local time ─┬─ exists once ────────────▶ that instant
//!              ├─ skipped (spring forward) ▶ the first instant after the gap
//!              └─ occurs twice (fall back) ▶ the first of the two
//!  several local times on one instant ────▶ one fire
//! ```
//!
//! Croner parses the expression; the search for fire times is done here, on the parsed
//! fields, so that those rules hold whatever the crate's own search does around DST.

use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone,
    Timelike,
};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

use super::{FieldError, Micros};

/// How far ahead of the previous candidate the next matching local date is looked for: 50
/// years, more than the longest wait between two dates a 5- or 6-field expression names
/// (29 February on a given weekday recurs within 40 years). An expression matching no date
/// in that span (`0 0 31 2 *`) has no fires.
pub const SEARCH_YEARS: u32 = 50;

/// The longest duration [`parse_duration`] takes: 7 days.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);

/// The cron fields in the order of a 6-field expression.
const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// The numbers each field takes (day-of-week: 0 and 7 are Sunday).
const FIELD_RANGES: [(u32, u32); 6] = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed cron expression: `min hour dom month dow`, or `sec min hour dom month dow`.
///
/// Each field takes `*`, numbers, ranges (`1-5`), lists (`1,15`) and steps (`*/15`,
/// `0-30/10`); the month takes `jan`-`dec` and the day of week `sun`-`sat` (0 or 7 is
/// Sunday), in any case. Also taken, as croner reads them: `L` (last day of the month, last
/// such weekday: `5L`), `15W` (nearest weekday), `mon#2` (second Monday), `?` for `*` in the
/// day fields, and `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`. When both the day
/// of month and the day of week are restricted, a day matching either one matches (as in
/// Vixie cron); a day of week starting with `+` asks for both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cron {
    /// The expression as given (trimmed).
    expr: String,
    /// The parsed fields.
    cron: croner::Cron,
    /// The seconds, minutes and hours it matches, ascending (never empty once parsed).
    seconds: Vec<u32>,
    minutes: Vec<u32>,
    hours: Vec<u32>,
}

impl Cron {
    /// Parse a 5- or 6-field expression; `field` names the 422, whose message says which
    /// cron field is wrong.
    pub fn parse(field: &'static str, expr: &str) -> Result<Cron, FieldError> {
        let expr = expr.trim();
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * sun",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if expr.starts_with('@') => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{expr:?} is not a known shorthand; expected @yearly, @monthly, \
                         @weekly, @daily or @hourly"
                    ),
                ));
            }
            _ => expr,
        };
        let given: Vec<&str> = expanded.split_whitespace().collect();
        let parts: Vec<&str> = match given.len() {
            5 => std::iter::once("0").chain(given.iter().copied()).collect(),
            6 => given,
            n => {
                let what = if n == 0 {
                    "is empty".to_string()
                } else {
                    format!("{expr:?} has {n} field{}", if n == 1 { "" } else { "s" })
                };
                return Err(FieldError::new(
                    field,
                    format!(
                        "{what}; expected 5 fields (minute hour day-of-month month \
                         day-of-week) or 6 (second first)"
                    ),
                ));
            }
        };
        for (i, raw) in parts.iter().enumerate() {
            check_field(i, raw).map_err(|m| FieldError::new(field, m))?;
        }
        let cron = parser().parse(&parts.join(" ")).map_err(|e| {
            FieldError::new(
                field,
                format!("{expr:?} is not a cron expression: {}", croner_message(&e)),
            )
        })?;
        let values = |c: &croner::CronComponent| -> Vec<u32> {
            c.values().into_iter().map(u32::from).collect()
        };
        let (seconds, minutes, hours) = (
            values(&cron.pattern.seconds),
            values(&cron.pattern.minutes),
            values(&cron.pattern.hours),
        );
        if seconds.is_empty() || minutes.is_empty() || hours.is_empty() {
            return Err(FieldError::new(
                field,
                format!("{expr:?} matches no time of day"),
            ));
        }
        Ok(Cron {
            expr: expr.to_string(),
            cron,
            seconds,
            minutes,
            hours,
        })
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// True when the local date matches the month and day fields.
    fn date_matches(&self, date: NaiveDate) -> bool {
        let weekday = croner::Weekday::from_days_from_sunday(date.weekday().num_days_from_sunday());
        let pattern = &self.cron.pattern;
        pattern
            .day_match(date.year(), date.month(), date.day(), weekday)
            .unwrap_or(false)
    }

    fn month_matches(&self, month: u32) -> bool {
        self.cron.pattern.month_match(month).unwrap_or(false)
    }

    /// The first matching time of day after `after` (`None`: from midnight, inclusive).
    fn first_time(&self, after: Option<NaiveTime>) -> Option<NaiveTime> {
        let (s0, m0, h0) = (self.seconds[0], self.minutes[0], self.hours[0]);
        let Some(t) = after else {
            return NaiveTime::from_hms_opt(h0, m0, s0);
        };
        for &h in self.hours.iter().filter(|&&h| h >= t.hour()) {
            if h > t.hour() {
                return NaiveTime::from_hms_opt(h, m0, s0);
            }
            for &m in self.minutes.iter().filter(|&&m| m >= t.minute()) {
                if m > t.minute() {
                    return NaiveTime::from_hms_opt(h, m, s0);
                }
                if let Some(&s) = self.seconds.iter().find(|&&s| s > t.second()) {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }

    /// The first matching local date-time strictly after `after`, looked for up to
    /// [`SEARCH_YEARS`] ahead.
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let horizon = after
            .date()
            .checked_add_days(Days::new(u64::from(SEARCH_YEARS) * 366))
            .unwrap_or(NaiveDate::MAX);
        let mut date = after.date();
        let mut from = Some(after.time());
        while date <= horizon {
            if !self.month_matches(date.month()) {
                date = first_of_next_month(date)?;
                from = None;
                continue;
            }
            if self.date_matches(date)
                && let Some(time) = self.first_time(from)
            {
                return Some(date.and_time(time));
            }
            date = date.succ_opt()?;
            from = None;
        }
        None
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

/// Croner's parser: 6 fields, seconds first (a 5-field expression gets `0` prepended), no
/// year field.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Disallowed)
        .build()
}

/// Croner's reason, as the end of a sentence.
fn croner_message(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError;
    let text = match e {
        // "CronPattern contains illegal character '%' in part '%'": the character.
        CronError::IllegalCharacters(m) => match m.split('\'').nth(1) {
            Some(c) => return format!("{c:?} is not a character a cron field takes"),
            None => m.clone(),
        },
        CronError::ComponentError(m) | CronError::InvalidPattern(m) => m.clone(),
        other => other.to_string(),
    };
    let text = text.trim_end_matches('.');
    let first_word = text.split(' ').next().unwrap_or_default();
    if first_word.chars().skip(1).any(char::is_uppercase) {
        return text.to_string();
    }
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Check the field at position `i` of a 6-field expression on its own: the names it holds,
/// its numbers' range, then croner's reading of it alone. The message names the field.
fn check_field(i: usize, raw: &str) -> Result<(), String> {
    let name = FIELD_NAMES[i];
    let upper = raw.to_ascii_uppercase();
    for word in upper
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
    {
        let allowed = match i {
            3 => ["L", "W", "LW"].contains(&word),
            4 => MONTHS.contains(&word),
            5 => WEEKDAYS.contains(&word) || word == "L",
            _ => false,
        };
        if !allowed {
            let takes = match i {
                3 => "numbers, L and W",
                4 => "numbers and month names (jan-dec)",
                5 => "numbers, weekday names (sun-sat) and L",
                _ => "numbers only",
            };
            let word = word.to_ascii_lowercase();
            return Err(format!(
                "the {name} field {raw:?} takes {takes}, not {word:?}"
            ));
        }
    }
    let (lo, hi) = FIELD_RANGES[i];
    // A number, or a name of the month or day-of-week field, as the number it stands for.
    let value = |piece: &str| -> Option<Result<u32, ()>> {
        let digits = piece.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Some(digits.parse::<u32>().map_err(drop));
        }
        let upper = piece.to_ascii_uppercase();
        let names: &[&str] = match i {
            4 => &MONTHS,
            5 => &WEEKDAYS,
            _ => &[],
        };
        let index = names.iter().position(|n| *n == upper)?;
        Some(Ok(index as u32 + lo))
    };
    for item in raw.split(',') {
        if item.is_empty() {
            return Err(format!("the {name} field {raw:?} has an empty list item"));
        }
        let base = item.split('/').next().unwrap_or_default();
        let base = base.split('#').next().unwrap_or_default();
        let mut bounds = Vec::new();
        for (k, piece) in base.split('-').enumerate() {
            let Some(mut n) = value(piece) else { continue };
            // `mon-sun`: a range ending on Sunday ends on 7.
            if i == 5 && k == 1 && piece.eq_ignore_ascii_case("sun") {
                n = Ok(7);
            }
            match n {
                Ok(n) if (lo..=hi).contains(&n) => bounds.push(n),
                _ => {
                    let piece = piece.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    return Err(if piece == raw {
                        format!("the {name} field {raw:?} is out of range {lo}-{hi}")
                    } else {
                        format!("the {name} field {raw:?} has {piece}, out of range {lo}-{hi}")
                    });
                }
            }
        }
        if let [from, to] = bounds[..]
            && from > to
        {
            return Err(format!(
                "the {name} field {raw:?} has the range {base}, which runs backwards"
            ));
        }
    }
    let mut probe = ["*"; 6];
    probe[i] = raw;
    parser().parse(&probe.join(" ")).map(drop).map_err(|e| {
        format!(
            "the {name} field {raw:?} is not valid: {}",
            croner_message(&e)
        )
    })
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

/// An IANA time zone (`Europe/Berlin`, `UTC`), from the tz database compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Zone(Tz);

impl Zone {
    /// UTC.
    pub const UTC: Zone = Zone(Tz::UTC);

    /// Parse an IANA name (exact spelling, as in `Europe/Berlin`); `field` names the 422.
    pub fn parse(field: &'static str, name: &str) -> Result<Zone, FieldError> {
        name.parse::<Tz>().map(Zone).map_err(|_| {
            FieldError::new(
                field,
                format!(
                    "{name:?} is not a time zone of the IANA database (such as \
                     \"Europe/Berlin\" or \"UTC\")"
                ),
            )
        })
    }

    /// The IANA name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fire of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Fire {
    /// The instant (UTC).
    pub at: Micros,
    /// The same instant on the schedule's wall clock: RFC 3339 with the zone's offset at
    /// that instant, such as `2027-03-28T03:00:00+02:00`.
    pub local: String,
}

/// The next `count` fires strictly after `after`, in order, each instant once.
///
/// The expression is matched against the local date-time in `zone`, and each match is
/// turned into an instant:
/// - a local time that exists once fires then;
/// - a local time that does not exist (the clock springs forward over it) fires once, at
///   the first instant after the gap: in Berlin on 2027-03-28 a daily `30 2 * * *` fires at
///   03:00+02:00 (01:00 UTC);
/// - a local time that occurs twice (the clock falls back) fires once, the first time: in
///   Berlin on 2027-10-31 a daily `30 2 * * *` fires at 02:30+02:00 (00:30 UTC) only;
/// - local times that land on the same instant (`*/15 2 * * *` on the spring-forward day:
///   02:00 to 02:45 all become 03:00) fire once.
///
/// Fires are on whole seconds. Fewer than `count` come back when the expression stops
/// matching (see [`SEARCH_YEARS`]): `0 0 31 2 *` has none.
pub fn next_fires(cron: &Cron, zone: &Zone, after: Micros, count: usize) -> Vec<Fire> {
    fires(cron, *zone, after)
        .take(count)
        .map(|at| Fire {
            at: micros(at),
            local: local_rfc3339(zone.0, at),
        })
        .collect()
}

/// The fires in `(from, to]` (`from` excluded, `to` included), in order, by the rules of
/// [`next_fires`]; at most `cap`, the earliest ones (a full list may have been cut: the
/// catch-up of a long window should not start thousands of runs).
pub fn fires_between(
    cron: &Cron,
    zone: &Zone,
    from: Micros,
    to: Micros,
    cap: usize,
) -> Vec<Micros> {
    fires(cron, *zone, from)
        .map(micros)
        .take_while(|at| *at <= to)
        .take(cap)
        .collect()
}

/// Whole seconds since the epoch, as [`Micros`].
fn micros(secs: i64) -> Micros {
    Micros(secs.saturating_mul(1_000_000))
}

fn local_rfc3339(tz: Tz, secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|t| {
            t.with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        })
        .unwrap_or_default()
}

/// The fire instants (whole seconds since the epoch) strictly after `after`, ascending.
fn fires(cron: &Cron, zone: Zone, after: Micros) -> impl Iterator<Item = i64> + '_ {
    let tz = zone.0;
    // The wall clock at `after`, to the second: no match at or before it can fire later
    // (the mapping from local times to instants never goes backwards).
    let mut cursor = DateTime::from_timestamp_micros(after.0)
        .map(|t| t.with_timezone(&tz).naive_local())
        .and_then(|n| n.with_nanosecond(0));
    let mut last: Option<i64> = None;
    std::iter::from_fn(move || {
        loop {
            let Some(local) = cron.next_local(cursor?) else {
                cursor = None;
                return None;
            };
            let Some((at, resume)) = resolve(tz, local) else {
                cursor = Some(local);
                continue;
            };
            cursor = Some(resume);
            if micros(at) > after && last.is_none_or(|l| at > l) {
                last = Some(at);
                return Some(at);
            }
        }
    })
}

/// The instant a matching local time fires at, and the local time to search on from.
///
/// A local time that occurs twice takes the first; one in a gap takes the gap's end (the
/// search then resumes there: every other time in the gap lands on the same instant).
fn resolve(tz: Tz, local: NaiveDateTime) -> Option<(i64, NaiveDateTime)> {
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return Some((t.timestamp(), local));
    }
    let end = gap_end(tz, local)?;
    let t = tz.from_local_datetime(&end).earliest()?;
    Some((t.timestamp(), end - chrono::Duration::seconds(1)))
}

/// The first local time after `local` (which the clock skips) that exists: the end of the
/// gap, to the second. Gaps in the tz database are at most a day (Samoa, 2011) and far
/// apart, so a doubling search then a bisection finds it.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<NaiveDateTime> {
    const MAX_GAP_SECS: i64 = 4 * 86_400;
    let exists = |secs: i64| {
        tz.from_local_datetime(&(local + chrono::Duration::seconds(secs)))
            .earliest()
            .is_some()
    };
    let (mut skipped, mut exists_at) = (0_i64, 1_i64);
    while !exists(exists_at) {
        skipped = exists_at;
        exists_at *= 2;
        if exists_at > MAX_GAP_SECS {
            return None;
        }
    }
    while exists_at - skipped > 1 {
        let mid = skipped + (exists_at - skipped) / 2;
        if exists(mid) {
            exists_at = mid;
        } else {
            skipped = mid;
        }
    }
    Some(local + chrono::Duration::seconds(exists_at))
}

named_enum! {
    /// What a fire does while the schedule's previous run is still going.
    #[derive(Default)]
    pub enum Overlap ("overlap") {
        /// The fire is skipped: the previous run goes on alone (the default).
        #[default]
        Skip = "skip",
        /// At most one fire waits, and starts when the previous run ends; further fires
        /// while one waits are skipped.
        QueueOne = "queue_one",
        /// The new run starts at once: runs overlap.
        Allow = "allow",
        /// The previous run is canceled and the new one starts.
        CancelPrevious = "cancel_previous",
    }
}

/// Parse a duration such as `"0s"`, `"90s"`, `"15m"`, `"1h"`, `"1h30m"` or `"2d"`: whole
/// numbers with the units `d`, `h`, `m`, `s`, each at most once, largest first; at most
/// [`MAX_DURATION`]. `field` names the 422.
pub fn parse_duration(field: &'static str, raw: &str) -> Result<Duration, FieldError> {
    parse_duration_within(field, raw, MAX_DURATION)
}

/// [`parse_duration`] with another bound: at most `max` (whole days).
pub fn parse_duration_within(
    field: &'static str,
    raw: &str,
    max: Duration,
) -> Result<Duration, FieldError> {
    const EXAMPLE: &str = "such as \"90s\", \"15m\", \"1h30m\" or \"2d\"";
    let refuse = |message: String| FieldError::new(field, message);
    let text = raw.trim();
    if text.is_empty() {
        return Err(refuse(format!("is empty; expected a duration {EXAMPLE}")));
    }
    if text.starts_with('-') {
        return Err(refuse(format!(
            "{raw:?} is negative; a duration is 0s or more"
        )));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut last_rank: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        if number.is_empty() {
            return Err(refuse(format!(
                "{raw:?} is not a duration; expected whole numbers with units, {EXAMPLE}"
            )));
        }
        let (rank, unit_secs) = match unit {
            "d" => (0, 86_400),
            "h" => (1, 3_600),
            "m" => (2, 60),
            "s" => (3, 1),
            "" => {
                return Err(refuse(format!(
                    "{raw:?}: {number} has no unit; expected d, h, m or s, {EXAMPLE}"
                )));
            }
            other => {
                return Err(refuse(format!(
                    "{raw:?} has the unknown unit {other:?}; expected d, h, m or s, {EXAMPLE}"
                )));
            }
        };
        if last_rank.is_some_and(|r| r >= rank) {
            return Err(refuse(format!(
                "{raw:?}: each unit comes at most once, largest first (as in \"1h30m\")"
            )));
        }
        last_rank = Some(rank);
        total = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_secs))
            .and_then(|s| total.checked_add(s))
            .filter(|&s| s <= max.as_secs())
            .ok_or_else(|| {
                refuse(format!(
                    "{raw:?} is more than {} days",
                    max.as_secs() / 86_400
                ))
            })?;
        rest = next;
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Micros {
        let t = DateTime::parse_from_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339}: {e}"));
        Micros(t.timestamp_micros())
    }

    fn cron(expr: &str) -> Cron {
        Cron::parse("cron", expr).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn zone(name: &str) -> Zone {
        Zone::parse("zone", name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn berlin() -> Zone {
        zone("Europe/Berlin")
    }

    /// The fires as (UTC, local) strings, to compare with the expected ones.
    fn fires_of(expr: &str, z: &Zone, after: &str, count: usize) -> Vec<(String, String)> {
        next_fires(&cron(expr), z, at(after), count)
            .into_iter()
            .map(|f| (utc(f.at), f.local))
            .collect()
    }

    fn utc(m: Micros) -> String {
        DateTime::from_timestamp_micros(m.0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The gaps between consecutive fires, in seconds; also checks they are increasing.
    fn steps(fires: &[Micros]) -> Vec<i64> {
        let steps: Vec<i64> = fires
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) / 1_000_000)
            .collect();
        assert!(
            steps.iter().all(|&s| s > 0),
            "not strictly increasing: {steps:?}"
        );
        steps
    }

    fn refusal(expr: &str) -> FieldError {
        match Cron::parse("cron", expr) {
            Ok(c) => panic!("{expr:?} was taken: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn five_fields_fire_on_the_minute() {
        let c = cron("*/15 9-10 * * *");
        assert_eq!(c.to_string(), "*/15 9-10 * * *");
        assert_eq!(
            fires_of("*/15 9-10 * * *", &Zone::UTC, "2027-01-04T10:40:00Z", 3),
            pairs(&[
                ("2027-01-04T10:45:00Z", "2027-01-04T10:45:00+00:00"),
                ("2027-01-05T09:00:00Z", "2027-01-05T09:00:00+00:00"),
                ("2027-01-05T09:15:00Z", "2027-01-05T09:15:00+00:00"),
            ])
        );
    }

    #[test]
    fn six_fields_start_with_seconds() {
        assert_eq!(cron(" 30 0 12 * * * ").to_string(), "30 0 12 * * *");
        assert_eq!(
            fires_of("30 0 12 * * *", &Zone::UTC, "2027-01-04T12:00:30Z", 1),
            pairs(&[("2027-01-05T12:00:30Z", "2027-01-05T12:00:30+00:00")])
        );
    }

    #[test]
    fn lists_ranges_steps_and_names() {
        // 2027-01-02 is a Saturday: the next weekday is Monday the 4th.
        let got = fires_of("0 9 * * MON-fri", &Zone::UTC, "2027-01-02T00:00:00Z", 2);
        assert_eq!(got[0].0, "2027-01-04T09:00:00Z");
        assert_eq!(got[1].0, "2027-01-05T09:00:00Z");
        let got = fires_of("0 0 1,15 jan,jul *", &Zone::UTC, "2027-01-10T00:00:00Z", 3);
        let days: Vec<&str> = got.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            days,
            [
                "2027-01-15T00:00:00Z",
                "2027-07-01T00:00:00Z",
                "2027-07-15T00:00:00Z"
            ]
        );
        let got = fires_of(
            "0 10-40/15 8 * * sun",
            &Zone::UTC,
            "2027-01-01T00:00:00Z",
            3,
        );
        let times: Vec<&str> = got.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            times,
            [
                "2027-01-03T08:10:00Z",
                "2027-01-03T08:25:00Z",
                "2027-01-03T08:40:00Z"
            ]
        );
        // 7 is Sunday too; the last day of the month.
        assert_eq!(
            fires_of("0 0 * * 7", &Zone::UTC, "2027-01-01T00:00:00Z", 1)[0].0,
            "2027-01-03T00:00:00Z"
        );
        assert_eq!(
            fires_of("0 0 * * sat-sun", &Zone::UTC, "2027-01-01T00:00:00Z", 2)[1].0,
            "2027-01-03T00:00:00Z"
        );
        assert_eq!(
            fires_of("0 0 L * *", &Zone::UTC, "2027-02-01T00:00:00Z", 1)[0].0,
            "2027-02-28T00:00:00Z"
        );
        assert_eq!(
            fires_of("@daily", &Zone::UTC, "2027-02-01T00:00:00Z", 1)[0].0,
            "2027-02-02T00:00:00Z"
        );
    }

    #[test]
    fn refusals_name_the_cron_field() {
        let cases = [
            ("0 25 * * *", "the hour field \"25\" is out of range 0-23"),
            ("60 * * * *", "the minute field \"60\" is out of range 0-59"),
            (
                "0 0 32 * *",
                "the day-of-month field \"32\" is out of range 1-31",
            ),
            (
                "0 0 0 * *",
                "the day-of-month field \"0\" is out of range 1-31",
            ),
            ("0 0 * 13 *", "the month field \"13\" is out of range 1-12"),
            (
                "0 0 * * 8",
                "the day-of-week field \"8\" is out of range 0-7",
            ),
            (
                "61 * * * * *",
                "the second field \"61\" is out of range 0-59",
            ),
            (
                "0 1,2,24 * * *",
                "the hour field \"1,2,24\" has 24, out of range 0-23",
            ),
            (
                "0 5-99 * * *",
                "the hour field \"5-99\" has 99, out of range 0-23",
            ),
            (
                "mon * * * *",
                "the minute field \"mon\" takes numbers only, not \"mon\"",
            ),
            (
                "0 0 * mon *",
                "the month field \"mon\" takes numbers and month names",
            ),
            (
                "0 0 * * jan",
                "the day-of-week field \"jan\" takes numbers, weekday names",
            ),
            (
                "0 0 X * *",
                "the day-of-month field \"X\" takes numbers, L and W",
            ),
            (
                "*/0 * * * *",
                "the minute field \"*/0\" is not valid: step cannot be zero",
            ),
            ("5/15 * * * *", "the minute field \"5/15\" is not valid"),
            (
                "0 % * * *",
                "the hour field \"%\" is not valid: \"%\" is not a character",
            ),
            (
                "0 1,,2 * * *",
                "the hour field \"1,,2\" has an empty list item",
            ),
            (
                "0 5-1 * * *",
                "the hour field \"5-1\" has the range 5-1, which runs backwards",
            ),
            (
                "0 0 * * fri-mon",
                "the day-of-week field \"fri-mon\" has the range fri-mon",
            ),
            (
                "0 0 * dec-jan *",
                "the month field \"dec-jan\" has the range dec-jan",
            ),
            (
                "0 0 * * mon#9",
                "the day-of-week field \"mon#9\" is not valid: nth specifier",
            ),
            ("0 1-2-3 * * *", "the hour field \"1-2-3\" is not valid"),
        ];
        for (expr, message) in cases {
            let e = refusal(expr);
            assert_eq!(e.field, "cron", "{expr}");
            assert!(
                e.message.starts_with(message),
                "{expr:?}: {:?} does not start with {message:?}",
                e.message
            );
        }
    }

    #[test]
    fn refusals_of_the_shape() {
        assert_eq!(
            refusal("").message,
            "is empty; expected 5 fields (minute hour day-of-month month day-of-week) or 6 \
             (second first)"
        );
        assert!(
            refusal("* * * *")
                .message
                .starts_with("\"* * * *\" has 4 fields;")
        );
        assert!(
            refusal("0 0 0 * * * 2030")
                .message
                .starts_with("\"0 0 0 * * * 2030\" has 7")
        );
        assert!(refusal("@reboot").message.contains("not a known shorthand"));
        let e = Cron::parse("schedule.cron", "0 24 * * *").unwrap_err();
        assert_eq!(e.field, "schedule.cron");
    }

    #[test]
    fn zones_are_iana_names() {
        assert_eq!(berlin().name(), "Europe/Berlin");
        assert_eq!(zone("UTC"), Zone::UTC);
        assert_eq!(zone("America/New_York").to_string(), "America/New_York");
        for bad in ["Mars/Olympus", "", "europe/berlin", "CEST+2"] {
            let e = Zone::parse("timezone", bad).unwrap_err();
            assert_eq!(e.field, "timezone");
            assert!(
                e.message.contains("not a time zone"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn every_two_seconds_fires_two_seconds_apart() {
        let c = cron("*/2 * * * * *");
        let fires = next_fires(&c, &Zone::UTC, at("2027-01-04T10:00:59Z"), 40);
        assert_eq!(fires.len(), 40);
        assert_eq!(utc(fires[0].at), "2027-01-04T10:01:00Z");
        let ats: Vec<Micros> = fires.iter().map(|f| f.at).collect();
        assert_eq!(steps(&ats), vec![2; 39]);
        // Strictly after, from a fire and from the middle of a second.
        assert_eq!(
            utc(next_fires(&c, &Zone::UTC, at("2027-01-04T10:01:00Z"), 1)[0].at),
            "2027-01-04T10:01:02Z"
        );
        let c = cron("* * * * * *");
        let mid = Micros(at("2027-01-04T10:01:00Z").0 + 500_000);
        assert_eq!(
            utc(next_fires(&c, &Zone::UTC, mid, 1)[0].at),
            "2027-01-04T10:01:01Z"
        );
    }

    #[test]
    fn every_two_seconds_through_spring_forward_has_no_hole() {
        // Berlin, 2027-03-28: 02:00+01:00 (01:00 UTC) is followed by 03:00+02:00.
        let c = cron("*/2 * * * * *");
        let ats = fires_between(
            &c,
            &berlin(),
            at("2027-03-28T00:59:00Z"),
            at("2027-03-28T01:01:00Z"),
            1_000,
        );
        assert_eq!(ats.len(), 60);
        assert_eq!(steps(&ats), vec![2; 59]);
        let fires = next_fires(&c, &berlin(), at("2027-03-28T00:59:57Z"), 3);
        assert_eq!(
            fires.iter().map(|f| f.local.as_str()).collect::<Vec<_>>(),
            [
                "2027-03-28T01:59:58+01:00",
                "2027-03-28T03:00:00+02:00",
                "2027-03-28T03:00:02+02:00"
            ]
        );
    }

    #[test]
    fn every_two_seconds_through_fall_back_fires_the_repeated_hour_once() {
        // Berlin, 2027-10-31: 03:00+02:00 (01:00 UTC) goes back to 02:00+01:00.
        let c = cron("*/2 * * * * *");
        let ats = fires_between(
            &c,
            &berlin(),
            at("2027-10-31T00:59:00Z"),
            at("2027-10-31T02:01:00Z"),
            10_000,
        );
        let steps = steps(&ats);
        // 00:59:02..00:59:58, then 02:00:00..02:01:00 (03:00+01:00 on).
        assert_eq!(ats.len(), 29 + 31);
        assert_eq!(
            steps.iter().filter(|&&s| s != 2).collect::<Vec<_>>(),
            [&3_602]
        );
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_fires_at_its_end() {
        assert_eq!(
            fires_of("30 2 * * *", &berlin(), "2027-03-27T12:00:00Z", 2),
            pairs(&[
                ("2027-03-28T01:00:00Z", "2027-03-28T03:00:00+02:00"),
                ("2027-03-29T00:30:00Z", "2027-03-29T02:30:00+02:00"),
            ])
        );
    }

    #[test]
    fn a_daily_time_in_the_repeated_hour_fires_the_first_time() {
        assert_eq!(
            fires_of("30 2 * * *", &berlin(), "2027-10-30T12:00:00Z", 2),
            pairs(&[
                ("2027-10-31T00:30:00Z", "2027-10-31T02:30:00+02:00"),
                ("2027-11-01T01:30:00Z", "2027-11-01T02:30:00+01:00"),
            ])
        );
        // From within the second 02:30 (+01:00), the day's fire is already past.
        assert_eq!(
            fires_of("30 2 * * *", &berlin(), "2027-10-31T01:30:00Z", 1),
            pairs(&[("2027-11-01T01:30:00Z", "2027-11-01T02:30:00+01:00")])
        );
        assert_eq!(
            fires_of("*/15 * * * *", &berlin(), "2027-10-31T01:30:00Z", 1),
            pairs(&[("2027-10-31T02:00:00Z", "2027-10-31T03:00:00+01:00")])
        );
    }

    #[test]
    fn times_collapsing_on_the_gap_end_fire_once() {
        assert_eq!(
            fires_of("*/15 2 * * *", &berlin(), "2027-03-27T12:00:00Z", 3),
            pairs(&[
                ("2027-03-28T01:00:00Z", "2027-03-28T03:00:00+02:00"),
                ("2027-03-29T00:00:00Z", "2027-03-29T02:00:00+02:00"),
                ("2027-03-29T00:15:00Z", "2027-03-29T02:15:00+02:00"),
            ])
        );
        // The gap's end matching too (every 15 minutes) is the same instant: once.
        let got = fires_of("*/15 * * * *", &berlin(), "2027-03-28T00:30:00Z", 3);
        assert_eq!(
            got,
            pairs(&[
                ("2027-03-28T00:45:00Z", "2027-03-28T01:45:00+01:00"),
                ("2027-03-28T01:00:00Z", "2027-03-28T03:00:00+02:00"),
                ("2027-03-28T01:15:00Z", "2027-03-28T03:15:00+02:00"),
            ])
        );
        assert_eq!(
            fires_of("*/15 2 * * *", &berlin(), "2027-10-30T12:00:00Z", 5),
            pairs(&[
                ("2027-10-31T00:00:00Z", "2027-10-31T02:00:00+02:00"),
                ("2027-10-31T00:15:00Z", "2027-10-31T02:15:00+02:00"),
                ("2027-10-31T00:30:00Z", "2027-10-31T02:30:00+02:00"),
                ("2027-10-31T00:45:00Z", "2027-10-31T02:45:00+02:00"),
                ("2027-11-01T01:00:00Z", "2027-11-01T02:00:00+01:00"),
            ])
        );
    }

    /// The fires in Berlin's local day `day` (from its midnight to the next, UTC bounds).
    fn fires_in_day(expr: &str, start: &str, end: &str) -> Vec<Micros> {
        let (start, end) = (at(start), at(end));
        let ats = fires_between(
            &cron(expr),
            &berlin(),
            Micros(start.0 - 1),
            Micros(end.0 - 1),
            10_000,
        );
        steps(&ats);
        ats
    }

    #[test]
    fn the_spring_forward_day_has_23_hourly_and_92_quarter_hourly_fires() {
        // 2027-03-28 in Berlin: 00:00+01:00 to 24:00+02:00, 23 hours.
        let (start, end) = ("2027-03-27T23:00:00Z", "2027-03-28T22:00:00Z");
        let hourly = fires_in_day("0 * * * *", start, end);
        assert_eq!(hourly.len(), 23);
        assert_eq!(steps(&hourly), vec![3_600; 22]);
        let quarters = fires_in_day("*/15 * * * *", start, end);
        assert_eq!(quarters.len(), 92);
        assert_eq!(steps(&quarters), vec![900; 91]);
        let minutes = fires_in_day("* * * * *", start, end);
        assert_eq!(minutes.len(), 23 * 60);
        assert_eq!(steps(&minutes), vec![60; 23 * 60 - 1]);
    }

    #[test]
    fn the_fall_back_day_has_24_hourly_and_96_quarter_hourly_fires() {
        // 2027-10-31 in Berlin: 00:00+02:00 to 24:00+01:00, 25 hours.
        let (start, end) = ("2027-10-30T22:00:00Z", "2027-10-31T23:00:00Z");
        let hourly = fires_in_day("0 * * * *", start, end);
        assert_eq!(hourly.len(), 24);
        let mut expected = vec![3_600; 23];
        expected[2] = 7_200; // 02:00+02:00, then 03:00+01:00
        assert_eq!(steps(&hourly), expected);
        let quarters = fires_in_day("*/15 * * * *", start, end);
        assert_eq!(quarters.len(), 96);
        let minutes = fires_in_day("* * * * *", start, end);
        assert_eq!(minutes.len(), 24 * 60);
        let jumps: Vec<i64> = steps(&minutes).into_iter().filter(|&s| s != 60).collect();
        assert_eq!(jumps, [3_660]);
    }

    #[test]
    fn other_zones_gaps() {
        // Lord Howe springs forward by 30 minutes: 02:00+10:30 becomes 02:30+11:00.
        assert_eq!(
            fires_of(
                "15 2 * * *",
                &zone("Australia/Lord_Howe"),
                "2027-10-02T00:00:00Z",
                2
            ),
            pairs(&[
                ("2027-10-02T15:30:00Z", "2027-10-03T02:30:00+11:00"),
                ("2027-10-03T15:15:00Z", "2027-10-04T02:15:00+11:00"),
            ])
        );
        // Samoa skipped 2011-12-30 whole: its noon fires at the next midnight.
        assert_eq!(
            fires_of(
                "0 12 * * *",
                &zone("Pacific/Apia"),
                "2011-12-29T00:00:00Z",
                3
            ),
            pairs(&[
                ("2011-12-29T22:00:00Z", "2011-12-29T12:00:00-10:00"),
                ("2011-12-30T10:00:00Z", "2011-12-31T00:00:00+14:00"),
                ("2011-12-30T22:00:00Z", "2011-12-31T12:00:00+14:00"),
            ])
        );
        // A zone's offset at each instant: New York in winter and summer.
        let got = fires_of(
            "0 9 1 1,7 *",
            &zone("America/New_York"),
            "2027-01-01T00:00:00Z",
            2,
        );
        assert_eq!(got[0].1, "2027-01-01T09:00:00-05:00");
        assert_eq!(got[1].1, "2027-07-01T09:00:00-04:00");
    }

    #[test]
    fn impossible_dates_return_nothing_fast() {
        let started = std::time::Instant::now();
        for expr in [
            "0 0 31 2 *",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 1 * +sun#5",
        ] {
            let c = cron(expr);
            assert_eq!(
                next_fires(&c, &berlin(), at("2027-01-01T00:00:00Z"), 5),
                vec![],
                "{expr}"
            );
            assert_eq!(
                fires_between(&c, &Zone::UTC, Micros(0), at("2100-01-01T00:00:00Z"), 5),
                vec![],
                "{expr}"
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn rare_dates_are_found() {
        let got = fires_of("0 0 29 2 *", &Zone::UTC, "2027-01-01T00:00:00Z", 2);
        assert_eq!(got[0].0, "2028-02-29T00:00:00Z");
        assert_eq!(got[1].0, "2032-02-29T00:00:00Z");
        // 2096, then 2104 (2100 is not a leap year).
        let got = fires_of("0 0 29 2 *", &Zone::UTC, "2096-03-01T00:00:00Z", 1);
        assert_eq!(got[0].0, "2104-02-29T00:00:00Z");
    }

    #[test]
    fn fires_between_excludes_from_includes_to_and_caps() {
        let c = cron("0 * * * *");
        let window = |from: &str, to: &str, cap| -> Vec<String> {
            fires_between(&c, &Zone::UTC, at(from), at(to), cap)
                .into_iter()
                .map(utc)
                .collect()
        };
        assert_eq!(
            window("2027-01-04T10:00:00Z", "2027-01-04T13:00:00Z", 100),
            [
                "2027-01-04T11:00:00Z",
                "2027-01-04T12:00:00Z",
                "2027-01-04T13:00:00Z"
            ]
        );
        assert_eq!(
            window("2027-01-04T10:00:00Z", "2027-01-04T13:00:00Z", 2),
            ["2027-01-04T11:00:00Z", "2027-01-04T12:00:00Z"]
        );
        assert!(window("2027-01-04T10:00:00Z", "2027-01-04T10:59:59Z", 100).is_empty());
        assert!(window("2027-01-04T13:00:00Z", "2027-01-04T10:00:00Z", 100).is_empty());
    }

    #[test]
    fn overlap_names() {
        assert_eq!(Overlap::default(), Overlap::Skip);
        let names: Vec<&str> = Overlap::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names, ["skip", "queue_one", "allow", "cancel_previous"]);
        assert_eq!("queue_one".parse::<Overlap>(), Ok(Overlap::QueueOne));
        assert_eq!(
            "queue".parse::<Overlap>(),
            Err(
                "unknown overlap \"queue\"; expected one of skip, queue_one, allow, \
                 cancel_previous"
                    .to_string()
            )
        );
    }

    #[test]
    fn durations() {
        let ok = |raw: &str| parse_duration("catch_up", raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("15m"), Duration::from_secs(900));
        assert_eq!(ok("1h"), Duration::from_secs(3_600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5_400));
        assert_eq!(ok("2d"), Duration::from_secs(172_800));
        assert_eq!(ok("1d2h3m4s"), Duration::from_secs(93_784));
        assert_eq!(ok(" 7d "), MAX_DURATION);
        assert_eq!(ok("168h"), MAX_DURATION);
        let refused = [
            ("", "is empty"),
            ("  ", "is empty"),
            ("-5m", "is negative"),
            ("5x", "unknown unit \"x\""),
            ("1w", "unknown unit \"w\""),
            ("1H", "unknown unit \"H\""),
            ("90", "90 has no unit"),
            ("1h30", "30 has no unit"),
            ("h", "is not a duration"),
            ("1h 30m", "unknown unit \"h \""),
            ("30m1h", "largest first"),
            ("1h1h", "largest first"),
            ("7d1s", "more than 7 days"),
            ("8d", "more than 7 days"),
            ("99999999999999999999s", "more than 7 days"),
            ("1.5h", "unknown unit \".\""),
        ];
        for (raw, message) in refused {
            let e = parse_duration("catch_up", raw).unwrap_err();
            assert_eq!(e.field, "catch_up", "{raw:?}");
            assert!(e.message.contains(message), "{raw:?}: {}", e.message);
        }
    }
}
