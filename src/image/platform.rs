//! Platforms: `os/arch[/variant]` as given on the command line or read from an index,
//! matching with containerd's defaults, and picking one manifest from an index.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, Os, Platform};

use super::media::DocKind;
use crate::error::{Error, Result};

/// An `os/arch[/variant]` platform, as given on the command line or read from an index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// The platform this binary runs on, in Go's GOOS/GOARCH names.
    pub fn host() -> Self {
        let architecture = Arch::default().to_string();
        let variant = match architecture.as_str() {
            "arm64" => Some("v8".to_string()),
            _ => None,
        };
        PlatformSpec {
            os: Os::default().to_string(),
            architecture,
            variant,
        }
    }

    pub fn of(p: &Platform) -> Self {
        PlatformSpec {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone().filter(|v| !v.is_empty()),
        }
    }

    pub fn of_config(c: &ImageConfiguration) -> Self {
        PlatformSpec {
            os: c.os().to_string(),
            architecture: c.architecture().to_string(),
            variant: c.variant().clone().filter(|v| !v.is_empty()),
        }
    }

    /// The variant, with the defaults containerd's platform matcher assumes filled in
    /// (arm64 means v8), so that `linux/arm64` matches `linux/arm64/v8`.
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            (_, v) => v,
        }
    }

    /// Whether an available platform satisfies this wanted one. A wanted platform without a
    /// variant accepts any variant of its architecture.
    pub fn matches(&self, available: &PlatformSpec) -> bool {
        self.os == available.os
            && self.architecture == available.architecture
            && (self.variant.is_none()
                || self.normalized_variant() == available.normalized_variant())
    }

    pub fn to_oci(&self) -> Result<Platform> {
        let mut b = oci_spec::image::PlatformBuilder::default()
            .os(Os::from(self.os.as_str()))
            .architecture(Arch::from(self.architecture.as_str()));
        if let Some(v) = &self.variant {
            b = b.variant(v.clone());
        }
        b.build()
            .map_err(|e| Error::Invalid(format!("platform {self}: {e}")))
    }
}

impl FromStr for PlatformSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if !ok {
            return Err(Error::Invalid(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7"
            )));
        }
        Ok(PlatformSpec {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which platform to pick from an index, and whether the user asked for it explicitly
/// (then a single-platform image of another platform is refused too).
#[derive(Debug, Clone)]
pub struct PlatformChoice {
    pub platform: PlatformSpec,
    pub explicit: bool,
}

impl PlatformChoice {
    pub fn new(platform: Option<PlatformSpec>) -> Self {
        match platform {
            Some(platform) => PlatformChoice {
                platform,
                explicit: true,
            },
            None => PlatformChoice {
                platform: PlatformSpec::host(),
                explicit: false,
            },
        }
    }
}

/// The first manifest or nested index whose platform matches. Entries without a platform
/// are taken only when they are the only candidate. Attestation entries (`unknown/unknown`)
/// are never candidates.
pub fn pick_platform(
    what: &str,
    manifests: &[Descriptor],
    choice: &PlatformChoice,
) -> Result<Descriptor> {
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|m| DocKind::of(m.media_type().as_ref()).is_some())
        .filter(|m| {
            m.platform()
                .as_ref()
                .map_or(true, |p| p.os().to_string() != "unknown")
        })
        .collect();
    if let Some(found) = candidates.iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| choice.platform.matches(&PlatformSpec::of(p)))
    }) {
        return Ok((*found).clone());
    }
    if let [only] = candidates.as_slice() {
        if only.platform().is_none() {
            return Ok((*only).clone());
        }
    }
    let available: Vec<String> = candidates
        .iter()
        .map(|m| match m.platform() {
            Some(p) => PlatformSpec::of(p).to_string(),
            None => format!("(unspecified: {})", m.digest()),
        })
        .collect();
    Err(Error::NotFound(format!(
        "{what} has no manifest for platform {}; available: {}",
        choice.platform,
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_match() {
        let p: PlatformSpec = "linux/arm64".parse().unwrap();
        assert!(p.matches(&"linux/arm64/v8".parse().unwrap()));
        let v7: PlatformSpec = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
        assert!(!v7.matches(&"linux/arm64".parse().unwrap()));
        for bad in ["", "linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<PlatformSpec>().is_err(), "{bad}");
        }
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert_eq!(PlatformSpec::host().os, "linux");
    }
}
