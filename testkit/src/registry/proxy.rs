//! A fault-injecting HTTP proxy on 127.0.0.1 in front of a test registry: it can cut a
//! blob's body mid-stream once, answer 500 once, corrupt a blob's bytes, demand a bearer
//! token (serving its own token endpoint), and redirect blob GETs to a second listener
//! (which records whether an Authorization header reached it). Hostile modes: answer
//! heads or bodies 1 byte per [`TRICKLE`], stall a blob after N bytes, stream a blob
//! forever, lie in Content-Length, redirect to itself, never accept its own token, or
//! serve a manifest of the test's making. It counts GETs and body bytes per blob. One
//! request per connection (it forces `Connection: close`), threads only, stops on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TOKEN: &str = "test-token-42";
/// The pace of trickled heads and bodies: one byte per this.
pub const TRICKLE: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Faults {
    /// Close the connection after this many body bytes of the first GET of this blob.
    pub cut_blob_once: Option<(String, usize)>,
    /// Answer 500 to the first request whose path contains this.
    pub error_500_once: Option<String>,
    /// Flip a byte in every body of this blob.
    pub corrupt_blob: Option<String>,
    /// Require `Authorization: Bearer TOKEN`, issued at /token for these basic creds.
    pub bearer: Option<(String, String)>,
    /// Redirect blob GETs to this address (another proxy).
    pub redirect_blobs_to: Option<String>,
    /// Send the response head 1 byte per TRICKLE for paths containing this.
    pub slow_head: Option<String>,
    /// Send the body 1 byte per TRICKLE for paths containing this.
    pub slow_body: Option<String>,
    /// After this many body bytes of every GET of this blob, send nothing more (for a
    /// while) and keep the connection open.
    pub stall_blob: Option<(String, usize)>,
    /// Answer GETs of this blob with 200 and an endless body of zeros (no Content-Length).
    pub endless_blob: Option<String>,
    /// Add this to the Content-Length of this blob's answers; the body is sent as is.
    pub lie_length: Option<(String, i64)>,
    /// Answer paths containing this with a redirect to themselves.
    pub redirect_loop: Option<String>,
    /// Demand a bearer token, issue one at /token, and never accept it.
    pub auth_loop: bool,
    /// Serve (media type, bytes) for manifest requests whose path contains the first.
    pub manifest: Option<(String, String, Vec<u8>)>,
}

pub struct Proxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    pub state: Arc<State>,
}

pub struct State {
    upstream: String,
    pub faults: Mutex<Faults>,
    /// Requests seen (request lines).
    pub requests: Mutex<Vec<String>>,
    /// Requests that carried an Authorization header.
    pub with_auth: AtomicUsize,
    pub ranged: AtomicUsize,
    /// GETs per blob digest.
    pub blob_gets: Mutex<HashMap<String, usize>>,
    /// Body bytes sent per blob digest.
    pub blob_bytes: Mutex<HashMap<String, usize>>,
}

impl Proxy {
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            faults: Mutex::new(faults),
            requests: Mutex::new(Vec::new()),
            with_auth: AtomicUsize::new(0),
            ranged: AtomicUsize::new(0),
            blob_gets: Mutex::new(HashMap::new()),
            blob_bytes: Mutex::new(HashMap::new()),
        });
        let (s, st, a) = (stop.clone(), state.clone(), addr.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        let a = a.clone();
                        std::thread::spawn(move || {
                            let _ = handle(conn, &st, &a);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { addr, stop, state }
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// GETs of blob `digest` so far.
    pub fn blob_gets(&self, digest: &str) -> usize {
        *self
            .state
            .blob_gets
            .lock()
            .unwrap()
            .get(digest)
            .unwrap_or(&0)
    }

    /// Body bytes of blob `digest` sent so far.
    pub fn blob_bytes(&self, digest: &str) -> usize {
        *self
            .state
            .blob_bytes
            .lock()
            .unwrap()
            .get(digest)
            .unwrap_or(&0)
    }
}

/// Writes `data` one byte per TRICKLE (stops when the client has gone).
fn trickle(conn: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    for b in data {
        conn.write_all(std::slice::from_ref(b))?;
        conn.flush()?;
        std::thread::sleep(TRICKLE);
    }
    Ok(())
}

/// The hostile answers that need no upstream; `Ok(true)` when one was given.
fn hostile(
    conn: &mut TcpStream,
    f: &Faults,
    path: &str,
    blob: Option<&str>,
    own: &str,
) -> std::io::Result<bool> {
    if f.auth_loop {
        if path.starts_with("/token") {
            respond(
                conn,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                format!("{{\"token\":\"{TOKEN}\"}}").as_bytes(),
            )?;
        } else {
            let challenge = format!("Bearer realm=\"http://{own}/token\",service=\"loop\"");
            respond(
                conn,
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge)],
                b"{}",
            )?;
        }
        return Ok(true);
    }
    if f.redirect_loop
        .as_ref()
        .is_some_and(|p| path.contains(p.as_str()))
    {
        respond(conn, "302 Found", &[("Location", path.to_string())], b"")?;
        return Ok(true);
    }
    if let Some((m, media_type, body)) = &f.manifest {
        if path.contains("/manifests/") && path.contains(m.as_str()) {
            respond(
                conn,
                "200 OK",
                &[("Content-Type", media_type.clone())],
                body,
            )?;
            return Ok(true);
        }
    }
    if blob.is_some() && f.endless_blob.as_deref() == blob {
        conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n")?;
        let zeros = vec![0u8; 64 << 10];
        // Until the client hangs up (bounded, in case it never does).
        for _ in 0..(1 << 16) {
            conn.write_all(&zeros)?;
        }
        return Ok(true);
    }
    Ok(false)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(lines);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn handle(conn: TcpStream, st: &State, own_addr: &str) -> std::io::Result<()> {
    let mut client = BufReader::new(conn);
    let head = read_head(&mut client)?;
    let Some(request_line) = head.first().cloned() else {
        return Ok(());
    };
    st.requests.lock().unwrap().push(request_line.clone());
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let auth = header(&head, "authorization").map(str::to_string);
    if auth.is_some() {
        st.with_auth.fetch_add(1, Ordering::SeqCst);
    }
    if header(&head, "range").is_some() {
        st.ranged.fetch_add(1, Ordering::SeqCst);
    }
    let mut conn = client.get_ref().try_clone()?;
    let is_blob = path.contains("/blobs/sha256:");
    let blob_digest = path.rsplit('/').next().unwrap_or("").to_string();
    if is_blob {
        *st.blob_gets
            .lock()
            .unwrap()
            .entry(blob_digest.clone())
            .or_default() += 1;
    }
    {
        let f = st.faults.lock().unwrap();
        let blob = is_blob.then_some(blob_digest.as_str());
        if hostile(&mut conn, &f, &path, blob, own_addr)? {
            return Ok(());
        }
    }
    let (slow_head, slow_body, stall, lie) = {
        let f = st.faults.lock().unwrap();
        let matches = |p: &Option<String>| p.as_ref().is_some_and(|p| path.contains(p.as_str()));
        let for_blob = |x: &Option<(String, usize)>| {
            x.as_ref()
                .filter(|(d, _)| is_blob && *d == blob_digest)
                .map(|(_, n)| *n)
        };
        (
            matches(&f.slow_head),
            matches(&f.slow_body),
            for_blob(&f.stall_blob),
            f.lie_length
                .as_ref()
                .filter(|(d, _)| is_blob && *d == blob_digest)
                .map(|(_, n)| *n),
        )
    };

    let (bearer, cut, corrupt, redirect) = {
        let mut f = st.faults.lock().unwrap();
        if let Some(p) = f.error_500_once.clone() {
            if path.contains(&p) {
                f.error_500_once = None;
                drop(f);
                return respond(
                    &mut conn,
                    "500 Internal Server Error",
                    &[],
                    b"injected failure",
                );
            }
        }
        let cut = match &f.cut_blob_once {
            Some((d, n)) if is_blob && blob_digest == *d => {
                let n = *n;
                f.cut_blob_once = None;
                Some(n)
            }
            _ => None,
        };
        let corrupt = f
            .corrupt_blob
            .as_ref()
            .is_some_and(|d| is_blob && blob_digest == *d);
        (f.bearer.clone(), cut, corrupt, f.redirect_blobs_to.clone())
    };

    if let Some((user, pass)) = &bearer {
        if path.starts_with("/token") {
            use base64::Engine as _;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            return if auth.as_deref() == Some(want.as_str()) {
                respond(
                    &mut conn,
                    "200 OK",
                    &[("Content-Type", "application/json".into())],
                    format!("{{\"token\":\"{TOKEN}\"}}").as_bytes(),
                )
            } else {
                respond(&mut conn, "401 Unauthorized", &[], b"bad credentials")
            };
        }
        if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| p.split("/manifests/").next())
                .and_then(|p| p.split("/blobs/").next())
                .unwrap_or("");
            let challenge = format!(
                "Bearer realm=\"http://{own_addr}/token\",service=\"nestcache-test\",scope=\"repository:{repo}:pull\""
            );
            return respond(
                &mut conn,
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge)],
                b"{}",
            );
        }
    }
    if let Some(to) = &redirect {
        if is_blob {
            return respond(
                &mut conn,
                "307 Temporary Redirect",
                &[("Location", format!("http://{to}{path}"))],
                b"",
            );
        }
    }

    // Forward, one request per connection, without the client's Authorization when this
    // proxy is the one checking it.
    let mut up = TcpStream::connect(&st.upstream)?;
    let mut out = format!("{request_line}\r\n");
    for l in head.iter().skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name == "connection" || (bearer.is_some() && name == "authorization") {
            continue;
        }
        out += l;
        out += "\r\n";
    }
    out += "Connection: close\r\n\r\n";
    up.write_all(out.as_bytes())?;
    let mut upr = BufReader::new(up);
    let resp_head = read_head(&mut upr)?;
    let mut head_out = String::new();
    for l in &resp_head {
        match (lie, l.split_once(':')) {
            (Some(delta), Some((k, v))) if k.trim().eq_ignore_ascii_case("content-length") => {
                let real: i64 = v.trim().parse().unwrap_or(0);
                head_out += &format!("Content-Length: {}", (real + delta).max(0));
            }
            _ => head_out += l,
        }
        head_out += "\r\n";
    }
    head_out += "\r\n";
    if slow_head {
        trickle(&mut conn, head_out.as_bytes())?;
    } else {
        conn.write_all(head_out.as_bytes())?;
    }
    let mut sent = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    let count = |n: usize| {
        if is_blob {
            *st.blob_bytes
                .lock()
                .unwrap()
                .entry(blob_digest.clone())
                .or_default() += n;
        }
    };
    loop {
        let mut n = upr.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if slow_body {
            trickle(&mut conn, &buf[..n])?;
            count(n);
            continue;
        }
        if let Some(limit) = stall {
            if sent + n >= limit {
                n = limit - sent;
                conn.write_all(&buf[..n])?;
                conn.flush()?;
                count(n);
                // Hold the connection, send nothing; the client must give up first.
                std::thread::sleep(Duration::from_secs(30));
                return Ok(());
            }
        }
        if let Some(limit) = cut {
            if sent + n >= limit {
                n = limit - sent;
                conn.write_all(&buf[..n])?;
                conn.flush()?;
                count(n);
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        if corrupt && sent == 0 && n > 0 {
            buf[n / 2] ^= 0xff;
        }
        conn.write_all(&buf[..n])?;
        count(n);
        sent += n;
    }
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}
