use std::collections::HashMap;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::ExitSignal;

use super::*;

/// Long enough never to fire unless something deadlocked (it is not a speed check).
const DEADLOCK: Duration = Duration::from_secs(30);

fn idle(linger: Duration) -> Inner {
    Inner {
        linger,
        ..Default::default()
    }
}

#[test]
fn an_idle_shim_closes_only_once_its_linger_is_over() {
    let t0 = Instant::now();
    let linger = Duration::from_secs(30);
    let mut inner = idle(linger);
    // Nothing said "idle" yet (a fresh shim, unit tests): it waits to be told.
    assert_eq!(inner.next(t0, false), Next::Wait(None));
    inner.idle_until = Some(t0 + linger);
    assert_eq!(inner.next(t0, false), Next::Wait(Some(linger)));
    let later = t0 + Duration::from_secs(10);
    assert_eq!(
        inner.next(later, false),
        Next::Wait(Some(Duration::from_secs(20)))
    );
    assert_eq!(inner.next(t0 + linger, false), Next::Close);
}

#[test]
fn containers_creates_and_joins_keep_the_shim() {
    let t0 = Instant::now();
    let mut inner = idle(Duration::ZERO);
    inner.idle_until = Some(t0);
    assert_eq!(inner.next(t0, true), Next::Wait(None), "a container");
    inner.creating = 1;
    assert_eq!(inner.next(t0, false), Next::Wait(None), "a create");
    inner.creating = 0;
    inner.joins = HashMap::from([("b".to_string(), t0 + JOIN_GRACE)]);
    assert_eq!(
        inner.next(t0, false),
        Next::Wait(Some(JOIN_GRACE)),
        "a join: until its grace ends"
    );
    assert_eq!(inner.next(t0 + JOIN_GRACE, false), Next::Close);
    assert!(inner.joins.is_empty(), "an expired join goes");
}

#[test]
fn a_join_whose_create_never_comes_starts_the_linger() {
    let t0 = Instant::now();
    let linger = Duration::from_secs(5);
    let mut inner = idle(linger);
    inner.joins = HashMap::from([("first".to_string(), t0 + JOIN_GRACE)]);
    let expired = t0 + JOIN_GRACE;
    assert_eq!(inner.next(expired, false), Next::Wait(Some(linger)));
    assert_eq!(inner.next(expired + linger, false), Next::Close);
}

fn started(linger: Duration, socket: Option<PathBuf>) -> (Arc<Lifetime>, Arc<ExitSignal>) {
    let exit = Arc::new(ExitSignal::default());
    let lifetime = Lifetime::start(exit.clone(), socket, None, Box::new(|| false)).unwrap();
    lifetime.set_linger(linger);
    (lifetime, exit)
}

fn exited(exit: &Arc<ExitSignal>) -> bool {
    let (tx, rx) = channel();
    let exit = exit.clone();
    std::thread::spawn(move || {
        exit.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(DEADLOCK).is_ok()
}

#[test]
fn without_linger_the_last_delete_ends_the_shim_and_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s");
    std::fs::write(&socket, "").unwrap();
    let (lifetime, exit) = started(Duration::ZERO, Some(socket.clone()));
    let creating = lifetime.creating("a").unwrap();
    drop(creating);
    lifetime.deleted("a");
    lifetime.shutdown("a", false);
    assert!(exited(&exit));
    assert!(lifetime.is_closing());
    assert!(!socket.exists(), "the socket goes before joins are refused");
    // Refused from now on: the `start` spawns a new shim, the Create goes elsewhere.
    assert!(matches!(lifetime.join("b"), Err(ShimError::ShuttingDown)));
    assert!(matches!(
        lifetime.creating("b"),
        Err(ShimError::ShuttingDown)
    ));
}

#[test]
fn shutdown_now_ends_a_lingering_shim_at_once() {
    let (lifetime, exit) = started(DEADLOCK * 10, None);
    lifetime.deleted("a");
    lifetime.shutdown("a", false);
    assert!(!lifetime.is_closing(), "lingering");
    lifetime.join("b").unwrap();
    lifetime.shutdown("b", true);
    assert!(lifetime.is_closing());
    assert!(exited(&exit));
}

#[test]
fn a_shutdown_for_a_task_never_run_here_skips_the_linger() {
    // containerd's cleanup after a failed create: nothing of ours ended, no linger.
    let (lifetime, exit) = started(DEADLOCK * 10, None);
    lifetime.shutdown("never-created", false);
    assert!(exited(&exit));
}

fn grouped(group: Option<&str>) -> Spec {
    let mut annotations = HashMap::new();
    if let Some(g) = group {
        annotations.insert(
            nestcache::labels::NESTCACHE_SHIM_GROUP.to_string(),
            g.into(),
        );
    }
    Spec { annotations }
}

#[test]
fn only_a_group_shim_lingers_and_the_option_wins() {
    let none = ShimConfig::default();
    let zero = ShimConfig {
        linger_ms: Some(0),
        ..Default::default()
    };
    let some = ShimConfig {
        linger_ms: Some(1500),
        ..Default::default()
    };
    let solo = grouped(None);
    assert_eq!(linger_for(&solo, &some).unwrap(), Duration::ZERO);
    assert_eq!(
        linger_for(&grouped(Some("")), &some).unwrap(),
        Duration::ZERO
    );
    let group = grouped(Some("nc-cache-x"));
    assert_eq!(
        linger_for(&group, &some).unwrap(),
        Duration::from_millis(1500)
    );
    assert_eq!(linger_for(&group, &zero).unwrap(), Duration::ZERO);
    // Without the option: the environment's (tested below), else the default.
    if std::env::var_os(LINGER_ENV).is_none() {
        assert_eq!(linger_for(&group, &none).unwrap(), DEFAULT_LINGER);
    }
}

#[test]
fn the_node_default_linger_is_read_strictly() {
    assert_eq!(linger_from_env(None).unwrap(), DEFAULT_LINGER);
    assert_eq!(linger_from_env(Some("")).unwrap(), DEFAULT_LINGER);
    assert_eq!(linger_from_env(Some("0")).unwrap(), Duration::ZERO);
    assert_eq!(
        linger_from_env(Some("250")).unwrap(),
        Duration::from_millis(250)
    );
    for bad in ["-1", "1s", "ten"] {
        let err = linger_from_env(Some(bad)).unwrap_err();
        assert!(matches!(err, ShimError::Options(_)), "{err}");
        assert!(err.to_string().contains(LINGER_ENV), "{err}");
    }
}
