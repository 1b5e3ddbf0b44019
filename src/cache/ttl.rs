//! Expiry: the `io.nestcache.expires` label, the keeper's deadline file, `touch`.

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::containerd::Client;
use crate::error::IoContext;
use crate::labels;
use crate::{Error, Result};

use super::*;

/// Moves cache `name`'s expiry to now + `ttl`.
pub async fn touch(client: &Client, name: &str, ttl: Duration) -> Result<CacheInfo> {
    check_ttl(ttl)?;
    let i = find(client, name).await?;
    if !i.is_running() {
        return Err(Error::Invalid(format!(
            "cache {name:?} has no running task (task: {}): remove it with `nestcache cache rm {name}` and create it again",
            i.status_word()
        )));
    }
    let expires_at = SystemTime::now() + ttl;
    if i.adopted {
        // No keeper: the label alone says when the reaper takes the cache (its labels).
        i.client_for(client)?
            .update_labels(&i.id, &[(labels::EXPIRES, &rfc3339(expires_at))])
            .await?;
        return find(client, name).await;
    }
    // The keeper's file first: should the label update fail, the keeper outlives the
    // label and the reaper still removes the cache on time.
    let meta = i.meta_dir();
    fs::create_dir_all(&meta).ctx(|| format!("create {}", meta.display()))?;
    write_atomic(
        &meta.join("deadline"),
        &deadline_secs(Some(expires_at)).to_string(),
    )?;
    client
        .update_labels(&i.id, &[(labels::EXPIRES, &rfc3339(expires_at))])
        .await?;
    // Wake the keeper so it re-reads the deadline.
    client.kill_task(&i.id, libc::SIGUSR1, false).await?;
    find(client, name).await
}

/// The longest TTL (beyond it, use no TTL).
const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

pub(super) fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::Invalid("--ttl must be longer than 0s".into()));
    }
    if ttl > MAX_TTL {
        return Err(Error::Invalid(format!(
            "--ttl {} is longer than 10 years; leave --ttl out for a cache that does not expire",
            humantime::format_duration(ttl)
        )));
    }
    Ok(())
}

/// The keeper's deadline: unix seconds, rounded up; 0 = none.
pub(super) fn deadline_secs(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up() {
        assert_eq!(deadline_secs(None), 0);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(deadline_secs(Some(t)), 2);
        assert_eq!(deadline_secs(Some(UNIX_EPOCH + Duration::from_secs(7))), 7);
    }
}
