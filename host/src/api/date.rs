//! Today's date as GitLab's prompts spell it (`December 01, 2026`, `Tuesday, December, 01, 2026`),
//! in UTC, without a calendar crate: days since 1970 to a civil date is a few lines of arithmetic.

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// A civil date in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Date {
    year: i64,
    /// 1–12.
    month: usize,
    day: u32,
    /// 0 = Monday.
    weekday: usize,
}

impl Date {
    /// Today, in UTC.
    pub(crate) fn today() -> Self {
        Self::from_unix_days((super::unix_now() / 86_400) as i64)
    }

    /// The date `days` after 1970-01-01 (the civil-from-days algorithm of Howard Hinnant's
    /// date library, for the proleptic Gregorian calendar).
    fn from_unix_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
        let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as usize;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday.
        let weekday = (days + 3).rem_euclid(7) as usize;
        Date { year, month, day, weekday }
    }

    /// `December 01, 2026` (Python's `%B %d, %Y`), what `/v1/prompts` passes as `current_date`.
    pub(crate) fn long(&self) -> String {
        format!("{} {:02}, {}", MONTHS[self.month - 1], self.day, self.year)
    }

    /// `Tuesday, December, 01, 2026` (Python's `%A, %B, %d, %Y`), what Duo Chat's ReAct prompt
    /// says today is.
    pub(crate) fn with_weekday(&self) -> String {
        format!("{}, {}, {:02}, {}", WEEKDAYS[self.weekday], MONTHS[self.month - 1], self.day, self.year)
    }
}

#[cfg(test)]
mod tests {
    use super::Date;

    #[test]
    fn days_since_1970_become_civil_dates() {
        assert_eq!(Date::from_unix_days(0).with_weekday(), "Thursday, January, 01, 1970");
        // 2026-12-01 is day 20,788.
        assert_eq!(Date::from_unix_days(20_788).with_weekday(), "Tuesday, December, 01, 2026");
        assert_eq!(Date::from_unix_days(20_788).long(), "December 01, 2026");
        // A leap day, and the day after.
        assert_eq!(Date::from_unix_days(11_016).long(), "February 29, 2000");
        assert_eq!(Date::from_unix_days(11_017).long(), "March 01, 2000");
        assert_eq!(Date::from_unix_days(-1).long(), "December 31, 1969");
    }
}
