//! Which process owns something, in a form that survives pid reuse: the pid, its start
//! time in clock ticks since boot (field 22 of `/proc/<pid>/stat`) and the boot id. A
//! pid whose start time (or the machine's boot id) differs is another process, so a
//! record naming a dead owner is never taken for a live one.

use serde::{Deserialize, Serialize};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// One process, as it was when the stamp was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStamp {
    pub pid: u32,
    /// Clock ticks after boot at which the process started.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`; empty where the kernel has none.
    pub boot_id: String,
}

impl ProcessStamp {
    /// This process.
    pub fn current() -> Option<ProcessStamp> {
        Self::of(std::process::id())
    }

    /// Process `pid` as it is now; None if there is no such process.
    pub fn of(pid: u32) -> Option<ProcessStamp> {
        Some(ProcessStamp {
            pid,
            start_time: start_time(pid)?,
            boot_id: boot_id(),
        })
    }

    /// Whether the very process stamped still exists (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && start_time(self.pid) == Some(self.start_time)
            && !is_zombie(self.pid)
    }

    /// `pid:start_time`, the form kept in a label.
    pub fn to_label(&self) -> String {
        format!("{}:{}", self.pid, self.start_time)
    }

    /// Parses [`Self::to_label`]; the boot id is this boot's (labels live in a containerd
    /// whose containers do not outlive a reboot with their tasks).
    pub fn from_label(s: &str) -> Option<ProcessStamp> {
        let (pid, start) = s.split_once(':')?;
        Some(ProcessStamp {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
            boot_id: boot_id(),
        })
    }
}

fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The fields of /proc/<pid>/stat after the command name, which is in parentheses and
/// may itself hold spaces and parentheses (hence the last `)`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Field 22 (starttime): index 19 after the command (fields 3.. start at index 0).
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z" || s == "X"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessStamp::current().expect("/proc/self");
        assert!(me.is_alive());
        let reused = ProcessStamp {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(
            !reused.is_alive(),
            "same pid, other start time: another process"
        );
        let rebooted = ProcessStamp {
            boot_id: "not-this-boot".into(),
            ..me.clone()
        };
        assert!(!rebooted.is_alive());
        assert_eq!(ProcessStamp::from_label(&me.to_label()), Some(me));
    }

    #[test]
    fn exited_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stamp = ProcessStamp::of(child.id());
        child.wait().unwrap();
        if let Some(s) = stamp {
            assert!(!s.is_alive());
        }
    }

    #[test]
    fn malformed_labels_are_refused() {
        for bad in ["", "12", "x:1", "1:y", "1:2:3"] {
            assert!(ProcessStamp::from_label(bad).is_none(), "{bad}");
        }
    }
}
