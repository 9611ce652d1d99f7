//! Prompt versions (`major.minor.patch`, optionally `-pre.release`) and the constraints callers
//! pick them with, ordered and matched the way GitLab's prompt registry does: semantic versioning
//! by the `semver` crate, with one rule of GitLab's on top (a bare `1.2.0` is that version only).

pub(crate) use semver::Version;

/// Parse a prompt file's version, with a message that says what a version looks like.
pub(crate) fn parse_version(text: &str) -> Result<Version, String> {
    Version::parse(text).map_err(|_| format!("{text:?} is not a version like 1.0.0 or 1.1.0-dev"))
}

/// A version constraint. An exact version may name a pre-release; a range (caret, tilde, `*`)
/// only ever picks stable versions, so `^1.0.0` never serves a `1.1.0-dev` nobody asked for
/// (semver's rule for requirements that name no pre-release).
#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    requirement: semver::VersionReq,
    /// As the caller wrote it, for messages.
    text: String,
}

impl Constraint {
    /// Parse `^1.0.0`, `~1.2.0`, `=1.0.0`, `1.0.0`, `1.1.0-dev`, `*` (blank means `*`).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = match text.trim() {
            "" => "*",
            text => text,
        };
        // Cargo reads a bare version as `^`; GitLab's registry reads it as exactly that version.
        let spelled =
            if text.starts_with(|c: char| c.is_ascii_digit()) { format!("={text}") } else { text.to_string() };
        let requirement = semver::VersionReq::parse(&spelled).ok()?;
        Some(Constraint { requirement, text: text.to_string() })
    }

    /// Whether `version` satisfies the constraint.
    pub(crate) fn matches(&self, version: &Version) -> bool {
        self.requirement.matches(version)
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        parse_version(text).unwrap()
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
            assert!(parse_version(bad).is_err(), "{bad} should not parse");
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
        assert!(!Constraint::parse("1.5.0-dev").unwrap().matches(&v("1.5.0")), "exact, not a range");
        assert!(Constraint::parse("=1.5.0-dev").unwrap().matches(&v("1.5.0-dev")));
        assert!(Constraint::parse("1.2.0").unwrap().matches(&v("1.2.0")));
        assert!(!Constraint::parse("1.2.0").unwrap().matches(&v("1.3.0")), "a bare version is exact");
        assert!(Constraint::parse("^0.3.0").unwrap().matches(&v("0.3.9")));
        assert!(!Constraint::parse("^0.3.0").unwrap().matches(&v("0.4.0")));
        assert!(Constraint::parse("~1.2.0").unwrap().matches(&v("1.2.7")));
        assert!(!Constraint::parse("~1.2.0").unwrap().matches(&v("1.3.0")));
        assert!(Constraint::parse("").unwrap().matches(&v("1.0.0")), "blank means *");
        assert!(Constraint::parse("latest").is_none());
    }
}
