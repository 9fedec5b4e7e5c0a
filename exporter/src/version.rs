//! Versions as the deprecation policy sees them: `major.minor`.

use std::fmt;

/// The `major.minor` part of a version; patch releases never change which metrics are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MinorVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl MinorVersion {
    /// Version `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        MinorVersion { major, minor }
    }

    /// The version of this build of Vigil (the workspace version).
    pub fn running() -> Self {
        Self::parse_release(env!("CARGO_PKG_VERSION"))
            .expect("workspace version is major.minor.patch")
    }

    /// The minor version before this one, if there is one in the same major series.
    pub fn previous(self) -> Option<Self> {
        self.minor.checked_sub(1).map(|minor| MinorVersion {
            major: self.major,
            minor,
        })
    }

    /// Parses a full release version such as `0.2.0` (or `0.2`), ignoring the patch part.
    pub fn parse_release(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(MinorVersion { major, minor })
    }

    /// Parses exactly `X.Y`, both non-negative integers without signs or leading `v`: the only
    /// form `--show-hidden-metrics-for-version` takes.
    pub fn parse_exact(s: &str) -> Option<Self> {
        let (major, minor) = s.split_once('.')?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return None;
        }
        Some(MinorVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for MinorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(
            MinorVersion::parse_exact("0.10"),
            Some(MinorVersion::new(0, 10))
        );
        assert_eq!(
            MinorVersion::parse_exact("0.10").unwrap().to_string(),
            "0.10"
        );
        for bad in [
            "", "0", "0.", ".1", "v0.1", "0.1.0", "+0.1", "0.-1", "a.b", "0. 1",
        ] {
            assert_eq!(MinorVersion::parse_exact(bad), None, "{bad:?}");
        }
        assert_eq!(
            MinorVersion::parse_release("1.4.2"),
            Some(MinorVersion::new(1, 4))
        );
        assert_eq!(MinorVersion::new(1, 0).previous(), None);
        assert_eq!(
            MinorVersion::new(1, 3).previous(),
            Some(MinorVersion::new(1, 2))
        );
    }

    #[test]
    fn running_version_is_the_workspace_version() {
        let v = MinorVersion::running();
        assert_eq!(
            format!("{v}."),
            env!("CARGO_PKG_VERSION")[..format!("{v}.").len()]
        );
    }
}
