//! `ps --filter KEY=VALUE`, as Docker takes them: `name` (substring of the id), `id`
//! (prefix), `label` (`KEY` or `KEY=VALUE`), `status` (created, running, paused,
//! exited), `ancestor` (the image ref, normalised as Docker does, or its manifest
//! digest) and `cache`. Filters with the same key are OR-ed, different keys AND-ed.

use std::collections::BTreeMap;

use super::manage::NestedInfo;
use crate::error::{Error, Result};

/// Parsed `--filter` flags.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    by_key: BTreeMap<String, Vec<String>>,
}

const KEYS: [&str; 6] = ["name", "id", "label", "status", "ancestor", "cache"];
const STATUSES: [&str; 4] = ["created", "running", "paused", "exited"];

impl Filters {
    pub fn parse(flags: &[String]) -> Result<Filters> {
        let mut f = Filters::default();
        for flag in flags {
            let (k, v) = flag.split_once('=').ok_or_else(|| {
                Error::Invalid(format!("invalid --filter {flag:?}: expected KEY=VALUE"))
            })?;
            if !KEYS.contains(&k) {
                return Err(Error::Invalid(format!(
                    "invalid --filter {flag:?}: unknown key {k:?} (known: {})",
                    KEYS.join(", ")
                )));
            }
            if k == "status" && !STATUSES.contains(&v) {
                return Err(Error::Invalid(format!(
                    "invalid --filter {flag:?}: status is one of {}",
                    STATUSES.join(", ")
                )));
            }
            f.by_key
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
        }
        Ok(f)
    }

    /// Whether any `status` filter is given (then `ps` lists stopped containers too).
    pub fn has_status(&self) -> bool {
        self.by_key.contains_key("status")
    }

    pub fn matches(&self, c: &NestedInfo) -> bool {
        self.by_key
            .iter()
            .all(|(k, values)| values.iter().any(|v| matches_one(k, v, c)))
    }
}

/// Docker's status word for ours: a stopped task and a deleted one have both exited.
pub fn docker_status(c: &NestedInfo) -> &str {
    match c.status.as_str() {
        "stopped" | "exited" => "exited",
        "pausing" => "paused",
        s => s,
    }
}

fn matches_one(key: &str, value: &str, c: &NestedInfo) -> bool {
    match key {
        "name" => c.id.contains(value),
        "id" => c.id.starts_with(value),
        "label" => match value.split_once('=') {
            Some((k, v)) => c.labels.get(k).is_some_and(|have| have == v),
            None => c.labels.contains_key(value),
        },
        "status" => docker_status(c) == value,
        "ancestor" => {
            c.manifest_digest == value
                || c.image == value
                || normalize(&c.image).is_some_and(|a| Some(a) == normalize(value))
        }
        "cache" => c.cache == value,
        _ => false,
    }
}

pub use crate::image::reference::normalize;

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, status: &str, image: &str, labels: &[(&str, &str)]) -> NestedInfo {
        NestedInfo {
            id: id.into(),
            image: image.into(),
            manifest_digest: "sha256:aa".into(),
            cache: "ci".into(),
            status: status.into(),
            pid: None,
            exit_code: None,
            cache_target: None,
            runtime: String::new(),
            created: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn keys_and_or_and() {
        let web = info("web-1", "running", "busybox", &[("tier", "front")]);
        let job = info("job-1", "stopped", "docker.io/library/alpine:3", &[]);
        let f = |flags: &[&str]| {
            Filters::parse(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(f(&["name=web"]).matches(&web) && !f(&["name=web"]).matches(&job));
        assert!(f(&["label=tier"]).matches(&web) && !f(&["label=tier=back"]).matches(&web));
        assert!(
            f(&["status=exited"]).matches(&job),
            "stopped is Docker's exited"
        );
        assert!(
            f(&["status=exited", "status=running"]).matches(&web),
            "same key: OR"
        );
        assert!(
            !f(&["status=running", "name=job"]).matches(&job),
            "keys: AND"
        );
        assert!(f(&["ancestor=docker.io/library/busybox:latest"]).matches(&web));
        assert!(f(&["ancestor=alpine:3"]).matches(&job));
        assert!(f(&["ancestor=sha256:aa", "cache=ci", "id=job"]).matches(&job));
    }

    #[test]
    fn refuses_bad_filters() {
        for bad in ["name", "colour=red", "status=sleeping"] {
            assert!(matches!(
                Filters::parse(&[bad.to_string()]),
                Err(Error::Invalid(_))
            ));
        }
    }
}
