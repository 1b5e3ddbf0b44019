//! The node label, through the Kubernetes API with the pod's service account (the
//! DaemonSet's RBAC allows `patch` on nodes): a JSON merge patch, so nothing else on the
//! node object is touched.

use std::time::Duration;

use super::NodeError;

const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the API server is and how to authenticate to it.
pub struct ApiServer {
    /// `https://HOST:PORT` (or `http://` for a test server on loopback).
    pub base: String,
    pub token: String,
    /// PEM CA bundle of the cluster; None for plain http.
    pub ca_pem: Option<Vec<u8>>,
}

impl ApiServer {
    /// The in-cluster API server: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service
    /// account's token and CA.
    pub fn in_cluster() -> Result<ApiServer, NodeError> {
        let missing = |what: &str| NodeError::NotInCluster {
            missing: what.to_string(),
        };
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| missing("KUBERNETES_SERVICE_HOST"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let read = |name: &str| {
            let path = format!("{SERVICE_ACCOUNT_DIR}/{name}");
            std::fs::read(&path).map_err(|_| missing(&path))
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(ApiServer {
            base: format!("https://{host}:{port}"),
            token,
            ca_pem: Some(read("ca.crt")?),
        })
    }

    fn agent(&self) -> Result<ureq::Agent, NodeError> {
        let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::NativeTls);
        if let Some(pem) = &self.ca_pem {
            let certs: Vec<_> = ureq::tls::parse_pem(pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        Ok(ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into())
    }

    /// Sets (`Some`) or removes (`None`) label `key` on node `node`.
    pub fn label_node(&self, node: &str, key: &str, val: Option<&str>) -> Result<(), NodeError> {
        let url = format!("{}/api/v1/nodes/{}", self.base, node);
        let body = label_patch(key, val);
        let fail = |message: String| NodeError::Label {
            node: node.to_string(),
            key: key.to_string(),
            message,
        };
        let mut resp = self
            .agent()?
            .patch(&url)
            .header("Content-Type", "application/merge-patch+json")
            .header("Authorization", &format!("Bearer {}", self.token))
            .send(body.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        // The API's Status object says why (forbidden: RBAC, not found: wrong NODE_NAME).
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or(text);
        Err(fail(format!("HTTP {status}: {why}")))
    }
}

/// A merge patch setting or (with null) removing one label.
fn label_patch(key: &str, val: Option<&str>) -> String {
    serde_json::json!({ "metadata": { "labels": { key: val } } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// One-request HTTP server on loopback: answers `status` with `body`, returns what
    /// it was sent (request line, headers, body).
    fn serve_once(status: u16, body: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            let mut s = s;
            write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            head + &String::from_utf8(b).unwrap()
        });
        (base, h)
    }

    fn api(base: String) -> ApiServer {
        ApiServer {
            base,
            token: "t0k".into(),
            ca_pem: None,
        }
    }

    #[test]
    fn label_is_a_merge_patch_of_that_label_alone() {
        let (base, h) = serve_once(200, "{}");
        api(base)
            .label_node("node-1", "nestcache.io/runtime", Some("true"))
            .unwrap();
        let req = h.join().unwrap();
        assert!(req.starts_with("PATCH /api/v1/nodes/node-1 "), "{req}");
        assert!(
            req.contains("Authorization: Bearer t0k") || req.contains("authorization: Bearer t0k"),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("content-type: application/merge-patch+json"),
            "{req}"
        );
        assert!(
            req.ends_with(r#"{"metadata":{"labels":{"nestcache.io/runtime":"true"}}}"#),
            "{req}"
        );
    }

    #[test]
    fn unlabel_sends_null_and_a_refusal_names_the_reason() {
        assert_eq!(
            label_patch("k", None),
            r#"{"metadata":{"labels":{"k":null}}}"#
        );
        let (base, h) = serve_once(
            403,
            r#"{"kind":"Status","message":"nodes \"n\" is forbidden"}"#,
        );
        let e = api(base).label_node("n", "k", None).unwrap_err();
        h.join().unwrap();
        assert!(matches!(e, NodeError::Label { .. }), "{e}");
        assert!(
            e.to_string().contains("HTTP 403: nodes \"n\" is forbidden"),
            "{e}"
        );
    }
}
