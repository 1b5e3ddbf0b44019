//! A containerd call that failed, with the gRPC status code containerd answered. Rolled up
//! into [`crate::Error`] as `Error::ContainerdCall`. A NotFound answer stays
//! `Error::NotFound` (callers that tolerate absence match that), and failing to reach
//! containerd at all is `Error::Containerd`.

use tonic::Code;

#[derive(Debug, thiserror::Error)]
#[error("containerd at {address}: {what}: {}", describe(*code, message))]
pub struct ContainerdError {
    pub address: String,
    pub namespace: String,
    /// What was being done, on which object (`create task c1`).
    pub what: String,
    pub code: Code,
    /// containerd's own words.
    pub message: String,
}

fn describe(code: Code, message: &str) -> String {
    match code {
        Code::Unavailable => {
            format!("containerd stopped answering ({message}); is it still running?")
        }
        _ => message.to_string(),
    }
}

impl ContainerdError {
    /// Whether containerd stopped answering (the call may not have happened).
    pub fn is_unavailable(&self) -> bool {
        self.code == Code::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_the_code_kept() {
        let e = ContainerdError {
            address: "/run/c.sock".into(),
            namespace: "ns".into(),
            what: "start task c1".into(),
            code: Code::Unavailable,
            message: "transport is closing".into(),
        };
        assert!(e.is_unavailable());
        assert_eq!(
            e.to_string(),
            "containerd at /run/c.sock: start task c1: containerd stopped answering (transport is closing); is it still running?"
        );
    }
}
