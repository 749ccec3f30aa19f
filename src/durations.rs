//! Durations in configuration, written one way: `250ms`, `5s`, `2m`, `1h 30m`
//! (the `humantime` format). [`NonZeroDuration`] is for the settings where
//! zero would mean nothing sensible; [`deserialize`] reads the others.

use std::time::Duration;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

/// A duration greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NonZeroDuration(Duration);

impl NonZeroDuration {
    pub fn new(duration: Duration) -> Option<Self> {
        (!duration.is_zero()).then_some(Self(duration))
    }

    /// `ms` milliseconds.
    ///
    /// # Panics
    ///
    /// If `ms` is 0 (it is meant for literals, as `NonZeroU32::new(n).unwrap()` is).
    pub const fn from_millis(ms: u64) -> Self {
        assert!(ms > 0, "a NonZeroDuration of 0 ms");
        Self(Duration::from_millis(ms))
    }

    /// `s` seconds; panics if 0, as [`NonZeroDuration::from_millis`] does.
    pub const fn from_secs(s: u64) -> Self {
        assert!(s > 0, "a NonZeroDuration of 0 s");
        Self(Duration::from_secs(s))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<NonZeroDuration> for Duration {
    fn from(d: NonZeroDuration) -> Self {
        d.0
    }
}

impl<'de> Deserialize<'de> for NonZeroDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(deserialize(deserializer)?).ok_or_else(|| D::Error::custom("must be greater than 0"))
    }
}

/// Reads a duration written as `250ms`, `5s`, `2m` (for `#[serde(deserialize_with)]`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)
        .map_err(|_| D::Error::custom("expected a duration in quotes, such as \"250ms\", \"5s\" or \"2m\""))?;
    humantime::parse_duration(&text).map_err(|err| D::Error::custom(format!("{err} in {text:?}: expected a duration such as \"250ms\", \"5s\" or \"2m\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Section {
        every: NonZeroDuration,
        #[serde(deserialize_with = "deserialize")]
        grace: Duration,
    }

    fn read(toml: &str) -> Result<Section, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml)).extract().map_err(|e| e.to_string())
    }

    #[test]
    fn durations_are_read_in_their_one_format() {
        let section = read("every = \"1m 30s\"\ngrace = \"250ms\"").unwrap();
        assert_eq!(section.every.get(), Duration::from_secs(90));
        assert_eq!(section.grace, Duration::from_millis(250));
        assert_eq!(read("every = \"5s\"\ngrace = \"0s\"").unwrap().grace, Duration::ZERO);
    }

    #[test]
    fn a_zero_where_zero_means_nothing_names_the_key() {
        let err = read("every = \"0s\"\ngrace = \"1s\"").unwrap_err();
        assert!(err.contains("every") && err.contains("greater than 0"), "{err}");
    }

    #[test]
    fn a_bare_number_or_a_unitless_text_is_refused() {
        let err = read("every = 500\ngrace = \"1s\"").unwrap_err();
        assert!(err.contains("every") && err.contains("in quotes"), "{err}");
        let err = read("every = \"500\"\ngrace = \"1s\"").unwrap_err();
        assert!(err.contains("every") && err.contains("\"5s\""), "{err}");
    }
}
