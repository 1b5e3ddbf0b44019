//! Image names as Docker normalises them: `busybox` is `docker.io/library/busybox:latest`,
//! `team/app:1` is `docker.io/team/app:1`, a first component with `.` or `:` (or
//! `localhost`) is a registry host. A local store keeps refs exactly as they were
//! written; lookups fall back to this form, so either spelling finds the image.

/// The fully qualified form of `name`, or None when it is not an image name (a digest,
/// uppercase letters, empty parts).
pub fn normalize(name: &str) -> Option<String> {
    let (rest, digest) = match name.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (name, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    let (host, repo) = match path.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
            (h, r.to_string())
        }
        _ => ("docker.io", path.to_string()),
    };
    let repo = if host == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    let tag_ok = |t: &str| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !repo.split('/').all(component_ok) || !tag.map_or(true, tag_ok) || path.is_empty() {
        return None;
    }
    let mut out = format!("{host}/{repo}");
    match (tag, digest) {
        (Some(t), _) => out.push_str(&format!(":{t}")),
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push_str(&format!("@{d}"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn docker_forms() {
        let n = |s| normalize(s);
        assert_eq!(
            n("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            n("library/busybox:1.36").as_deref(),
            Some("docker.io/library/busybox:1.36")
        );
        assert_eq!(n("team/app").as_deref(), Some("docker.io/team/app:latest"));
        assert_eq!(
            n("localhost:5000/app").as_deref(),
            Some("localhost:5000/app:latest")
        );
        assert_eq!(n("ghcr.io/o/r:v1").as_deref(), Some("ghcr.io/o/r:v1"));
        assert_eq!(
            n("a@sha256:00").as_deref(),
            Some("docker.io/library/a@sha256:00")
        );
        assert_eq!(n("docker.io/library/busybox:latest"), n("busybox"));
        for bad in ["", "Busybox", "a//b", "a:", "sha256:abc/"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
