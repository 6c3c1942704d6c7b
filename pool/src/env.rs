//! Settings from environment variables. A bad value is an error naming the variable and the
//! value, so a binary stops at start instead of running misconfigured.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {name}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Reads variables from a lookup function: the process environment in binaries,
/// a map in tests (no global state is mutated).
pub struct Vars<'a> {
    lookup: Box<Lookup<'a>>,
}

type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

impl Vars<'static> {
    pub fn process() -> Self {
        Vars::new(|name| std::env::var(name).ok())
    }
}

impl<'a> Vars<'a> {
    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Vars {
            lookup: Box::new(lookup),
        }
    }

    /// Fixed variables, for tests: nothing else is set.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Vars::new(move |k| map.get(k).cloned())
    }

    /// A set, non-blank value; an empty variable counts as unset.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_string())
    }

    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError {
                name: name.to_string(),
                value: raw.clone(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn parse_in<T>(
        &self,
        name: &str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.parse(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError {
                name: name.to_string(),
                value: value.to_string(),
                reason: format!("must be between {} and {}", range.start(), range.end()),
            })
        }
    }

    /// Parses with a custom function; its error message becomes the reason.
    pub fn parse_with<T>(
        &self,
        name: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => parse(raw.trim()).map_err(|reason| ConfigError {
                name: name.to_string(),
                value: raw.clone(),
                reason,
            }),
        }
    }
}
