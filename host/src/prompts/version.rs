//! Prompt versions (`major.minor.patch`, optionally `-pre.release`) and the constraints callers
//! pick them with, ordered and matched the way GitLab's prompt registry does.

use std::cmp::Ordering;

/// A prompt version: `1.2.0`, or a pre-release such as `1.3.0-dev` (lower than `1.3.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
    /// Pre-release identifiers after `-`; `None` for a stable version.
    pub pre: Option<String>,
}

impl Version {
    /// A stable version.
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version { major, minor, patch, pre: None }
    }

    /// Stable: no pre-release part. Only stable versions satisfy a range such as `^1.0.0`.
    pub fn is_stable(&self) -> bool {
        self.pre.is_none()
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a version like 1.0.0 or 1.1.0-dev");
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let pre_ok = |p: &str| {
            p.split('.').all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        };
        if pre.is_some_and(|p| !pre_ok(p)) {
            return Err(bad());
        }
        let mut parts = core.split('.').map(|p| p.parse::<u64>());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)), None) => {
                Ok(Version { major, minor, patch, pre: pre.map(str::to_string) })
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        match &self.pre {
            Some(pre) => write!(f, "-{pre}"),
            None => Ok(()),
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch)).then_with(|| {
            match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre(a, b),
            }
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Semantic-versioning precedence of two pre-release parts: identifier by identifier, numbers
/// numerically and below words, a shorter list first when one is a prefix of the other.
fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// A version constraint. An exact version may name a pre-release; a range (caret, tilde, `*`)
/// only ever picks stable versions, so `^1.0.0` never serves a `1.1.0-dev` nobody asked for.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// `*` or nothing: the highest stable version.
    Any,
    /// `^1.2.0`: same major (same minor below 1.0), at least this.
    Caret(Version),
    /// `~1.2.0`: same minor, at least this.
    Tilde(Version),
    /// `1.2.0` or `=1.2.0`.
    Exact(Version),
}

impl Constraint {
    /// Parse `^1.0.0`, `~1.2.0`, `=1.0.0`, `1.0.0`, `1.1.0-dev`, `*` (blank means `*`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() || text == "*" {
            return Some(Constraint::Any);
        }
        let (kind, rest): (fn(Version) -> Self, &str) = match text.as_bytes()[0] {
            b'^' => (Constraint::Caret, &text[1..]),
            b'~' => (Constraint::Tilde, &text[1..]),
            b'=' => (Constraint::Exact, &text[1..]),
            _ => (Constraint::Exact, text),
        };
        rest.trim().parse().ok().map(kind)
    }

    /// Whether `v` satisfies the constraint.
    pub fn matches(&self, v: &Version) -> bool {
        let same = |a: &Version, b: &Version, depth: usize| {
            [a.major, a.minor].iter().take(depth).eq([b.major, b.minor].iter().take(depth))
        };
        match self {
            Constraint::Exact(want) => v == want,
            _ if !v.is_stable() => false,
            Constraint::Any => true,
            Constraint::Tilde(want) => v >= want && same(v, want, 2),
            Constraint::Caret(want) if want.major > 0 => v >= want && same(v, want, 1),
            Constraint::Caret(want) => v >= want && same(v, want, 2),
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constraint::Any => write!(f, "*"),
            Constraint::Caret(v) => write!(f, "^{v}"),
            Constraint::Tilde(v) => write!(f, "~{v}"),
            Constraint::Exact(v) => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn pre_releases_sort_below_their_release_by_semver_rules() {
        let ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0"];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert!(v("1.0.1-dev") > v("1.0.0"));
        assert_eq!(v("1.1.0-dev").to_string(), "1.1.0-dev");
        for bad in ["1.0", "1.0.0.0", "1.0.0-", "1.0.0-a..b", "v1.0.0", "1.0.0-dév"] {
            assert!(bad.parse::<Version>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn ranges_skip_pre_releases_and_exact_versions_name_them() {
        let caret = Constraint::parse("^1.0.0").unwrap();
        assert!(caret.matches(&v("1.4.2")));
        assert!(!caret.matches(&v("1.5.0-dev")));
        assert!(!caret.matches(&v("2.0.0")));
        assert!(!Constraint::parse("*").unwrap().matches(&v("3.0.0-rc.1")));
        assert!(Constraint::parse("1.5.0-dev").unwrap().matches(&v("1.5.0-dev")));
        assert!(Constraint::parse("=1.5.0-dev").unwrap().matches(&v("1.5.0-dev")));
        assert!(Constraint::parse("^0.3.0").unwrap().matches(&v("0.3.9")));
        assert!(!Constraint::parse("^0.3.0").unwrap().matches(&v("0.4.0")));
        assert!(Constraint::parse("~1.2.0").unwrap().matches(&v("1.2.7")));
        assert!(!Constraint::parse("~1.2.0").unwrap().matches(&v("1.3.0")));
        assert!(Constraint::parse("latest").is_none());
    }
}
