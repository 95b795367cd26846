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
}
