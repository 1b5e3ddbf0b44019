//! nestcache's test kit, shared by the integration tests of the root crate, the shim and
//! mkimage (a dev-dependency of each; never published).
//!
//! - [`require`]: what a test needs (containerd, root, tools); without it the test says
//!   so in one line and returns, unless `NESTCACHE_TEST_REQUIRE=1` (set by
//!   `scripts/test.sh`) makes a missing prerequisite a failure.
//! - [`cmd`]: the workspace's binaries and running commands.
//! - [`containerd`]: an isolated nestcache environment against the run's containerd, and
//!   a private containerd for tests that stop or restart it.
//! - [`cri`]: a private containerd with the CRI plugin and CNI, and a CRI client.
//! - [`ctr`]: `ctr` against containerd with the nestcache shim, events, task guards.
//! - [`images`]: tiny tamperable OCI layouts, OCI and docker archives, and the store CLI.
//! - [`layers`]: layer tarballs built byte by byte, hostile ones included.
//! - [`nested`]: a cache with mkimage images staged into it, for `nestcache run` tests.
//! - [`registry`]: a real distribution registry on 127.0.0.1 and a fault-injecting proxy.
//! - [`rootfs`]: a busybox root on disk, and a store holding it as a staged image.

pub mod cmd;
pub mod containerd;
pub mod cri;
pub mod ctr;
pub mod images;
pub mod layers;
pub mod nested;
pub mod registry;
pub mod require;
pub mod rootfs;

pub use cmd::{cargo_bin, output, run_ok, stderr, stdout};
pub use containerd::{containerd_address, unique, Env, PrivateContainerd};
