//! Dates without a time-zone library: days since the Unix epoch ↔ proleptic Gregorian civil
//! dates (UTC), after Howard Hinnant's `days_from_civil` / `civil_from_days`.

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A calendar date in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// The date of a day number (days since 1970-01-01).
    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        } as u32;
        let year = (year_of_era + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    /// The day number of this date (days since 1970-01-01).
    pub fn to_days(self) -> i64 {
        let year = i64::from(self.year) - i64::from(self.month <= 2);
        let era = year.div_euclid(400);
        let year_of_era = year.rem_euclid(400);
        let month = i64::from(self.month);
        let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5
            + i64::from(self.day)
            - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The date of an instant given in microseconds since the epoch.
    pub fn from_micros(micros: i64) -> Date {
        Date::from_days(micros.div_euclid(MICROS_PER_DAY))
    }

    /// `YYYYMMDD`.
    pub fn compact(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// Parses `YYYYMMDD`; `None` for anything that is not a real date.
    pub fn parse_compact(text: &str) -> Option<Date> {
        if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let date = Date {
            year: text[0..4].parse().ok()?,
            month: text[4..6].parse().ok()?,
            day: text[6..8].parse().ok()?,
        };
        (Date::from_days(date.to_days()) == date).then_some(date)
    }

    /// The same day `months` calendar months later; a day the target month lacks becomes its
    /// last day (31 January + 1 month = 28 or 29 February), as periods in months are counted in
    /// EU law (Regulation 1182/71, art. 3(2)(c)).
    pub fn add_months(self, months: u32) -> Date {
        let month_index = i64::from(self.month - 1) + i64::from(months);
        let year = i64::from(self.year) + month_index.div_euclid(12);
        let year = i32::try_from(year).unwrap_or(i32::MAX);
        let month = u32::try_from(month_index.rem_euclid(12)).unwrap_or(0) + 1;
        Date {
            year,
            month,
            day: self.day.min(days_in_month(year, month)),
        }
    }

    /// The instant this day starts (UTC), in microseconds since the epoch.
    pub fn start_micros(self) -> i64 {
        self.to_days().saturating_mul(MICROS_PER_DAY)
    }

    /// The last microsecond of this day (UTC).
    pub fn end_micros(self) -> i64 {
        self.to_days()
            .saturating_add(1)
            .saturating_mul(MICROS_PER_DAY)
            .saturating_sub(1)
    }
}

/// The number of days in a month of the proleptic Gregorian calendar.
pub const fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            Date::from_days(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        let leap_day = Date {
            year: 2024,
            month: 2,
            day: 29,
        };
        assert_eq!(Date::from_days(leap_day.to_days()), leap_day);
        assert_eq!(
            Date {
                year: 2026,
                month: 11,
                day: 23
            }
            .to_days(),
            20_780
        );
        assert_eq!(
            Date::from_micros(-1),
            Date {
                year: 1969,
                month: 12,
                day: 31
            }
        );
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let start = Date {
            year: 1900,
            month: 1,
            day: 1,
        }
        .to_days();
        let mut previous = Date::from_days(start - 1);
        for days in start..start + 146_097 {
            let date = Date::from_days(days);
            assert_eq!(date.to_days(), days);
            assert!(date > previous);
            previous = date;
        }
    }

    #[test]
    fn compact_form() {
        let date = Date {
            year: 2026,
            month: 1,
            day: 5,
        };
        assert_eq!(date.compact(), "20260105");
        assert_eq!(Date::parse_compact("20260105"), Some(date));
        assert_eq!(Date::parse_compact("20260230"), None);
        assert_eq!(Date::parse_compact("2026015"), None);
    }

    #[test]
    fn months_are_added_as_eu_law_counts_them() {
        let date = |year, month, day| Date { year, month, day };
        assert_eq!(date(2026, 3, 15).add_months(1), date(2026, 4, 15));
        assert_eq!(date(2026, 1, 31).add_months(1), date(2026, 2, 28));
        assert_eq!(date(2028, 1, 31).add_months(1), date(2028, 2, 29));
        assert_eq!(date(2026, 11, 30).add_months(3), date(2027, 2, 28));
        assert_eq!(date(2026, 12, 31).add_months(1), date(2027, 1, 31));
        assert_eq!(date(2026, 5, 31).add_months(0), date(2026, 5, 31));
        let day = date(2026, 4, 15);
        assert_eq!(day.end_micros() + 1, date(2026, 4, 16).start_micros());
        assert_eq!(Date::from_micros(day.end_micros()), day);
    }
}
