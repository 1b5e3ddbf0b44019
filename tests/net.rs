//! Nested networking against a real containerd + runc + the CNI reference plugins: a
//! bridge per cache, published ports, names, and that every removal path leaves no veth,
//! namespace, lease, iptables rule or bridge behind. Traffic goes only to 127.0.0.1 and
//! the test bridges' own addresses; subnets come from a pool of the tests' own, claimed
//! host-wide, so parallel tests never share a bridge or a subnet.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use testkit::{unique, Env, PrivateContainerd};

const POOL: &str = "10.213.0.0/16";

/// A cache with the small busybox image staged (`img`, with ExposedPorts 80/tcp and
/// 9999/udp) and a document root for httpd.
struct Net {
    env: Env,
    cache: String,
    img: String,
    www: tempfile::TempDir,
    _images: tempfile::TempDir,
}

impl Net {
    fn new(prefix: &str) -> Net {
        Self::in_env(Env::new(prefix))
    }

    fn in_env(env: Env) -> Net {
        let cache = unique("n");
        let images = tempfile::tempdir().expect("temp dir");
        let mut spec = mkimage::preset("small").expect("preset");
        spec.ref_name = "web".into();
        spec.config.exposed_ports = vec!["80/tcp".into(), "9999/udp".into()];
        let layout = images.path().join("web");
        spec.write_layout(&layout).expect("mkimage");
        let net = Net {
            env,
            cache,
            img: "web".into(),
            www: tempfile::tempdir().expect("temp dir"),
            _images: images,
        };
        net.ok(&["cache", "create", &net.cache, "--path", "/cache"]);
        let source = format!("oci:{}:web", layout.display());
        net.ok(&["stage", "--cache", &net.cache, &source]);
        std::fs::write(net.www.path().join("index.html"), "hello from web\n").expect("index");
        net
    }

    /// nestcache with the bridge default (no NESTCACHE_NET) and the tests' pool.
    fn run(&self, args: &[&str]) -> Output {
        self.env
            .cmd()
            .env_remove("NESTCACHE_NET")
            .env("NESTCACHE_SUBNET_POOL", POOL)
            .args(args)
            .output()
            .expect("spawn nestcache")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nestcache {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "nestcache {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `run --cache C ARGS... IMG -- CMD...`
    fn nested(&self, args: &[&str], cmd: &[&str]) -> Output {
        let mut v = vec!["run", "--cache", self.cache.as_str()];
        v.extend_from_slice(args);
        v.push(&self.img);
        v.push("--");
        v.extend_from_slice(cmd);
        self.run(&v)
    }

    fn nested_ok(&self, args: &[&str], cmd: &[&str]) -> String {
        let out = self.nested(args, cmd);
        assert!(
            out.status.success(),
            "run {args:?} {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A detached busybox httpd serving `www` on port 80, named `name`.
    fn httpd(&self, name: &str, extra: &[&str]) {
        let vol = format!("{}:/www", self.www.path().display());
        let mut args = vec!["-d", "--name", name, "-v", vol.as_str()];
        args.extend_from_slice(extra);
        self.nested_ok(&args, &["busybox", "httpd", "-f", "-p", "80", "-h", "/www"]);
    }

    fn net_dir(&self) -> PathBuf {
        self.env.state_dir().join("net")
    }

    /// The recorded address of container `id` on the cache's bridge.
    fn ip_of(&self, id: &str) -> String {
        self.try_ip_of(id).expect("an address")
    }

    /// The address, once CNI ADD has recorded one.
    fn try_ip_of(&self, id: &str) -> Option<String> {
        let rec = self
            .net_dir()
            .join("containers")
            .join(id)
            .join("record.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec).ok()?).ok()?;
        v["ip"].as_str().map(str::to_string)
    }

    fn network_json(&self) -> serde_json::Value {
        let f = self
            .net_dir()
            .join("networks")
            .join(&self.env.namespace)
            .join(&self.cache)
            .join("network.json");
        serde_json::from_slice(&std::fs::read(&f).expect("network.json")).expect("json")
    }

    fn bridge(&self) -> String {
        self.network_json()["bridge"]
            .as_str()
            .expect("bridge")
            .to_string()
    }

    fn published(&self, id: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["port", id, "--json"])).expect("port --json")
    }

    /// Nothing of containers `gone` (id, address) is left: no namespace, no record, no
    /// lease, no iptables rule, no veth on the bridge, no port claim.
    fn assert_released(&self, gone: &[(String, String)]) {
        let netns: Vec<_> = std::fs::read_dir(self.net_dir().join("netns"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(netns.is_empty(), "namespaces left: {netns:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let state = self.env.state_dir().to_string_lossy().into_owned();
        assert!(
            !mounts.contains(&format!("{state}/net")),
            "netns mounts left"
        );
        let rules = iptables_save();
        let leases = self.leases();
        for (id, ip) in gone {
            assert!(
                !self.net_dir().join("containers").join(id).exists(),
                "record of {id} left"
            );
            assert!(
                !leases.contains(ip),
                "lease of {id} ({ip}) left: {leases:?}"
            );
            let cni_id = format!("{}-{id}", self.env.namespace);
            let left: Vec<&str> = rules
                .lines()
                .filter(|l| l.contains(&cni_id) || l.contains(&format!("{ip}/32")))
                .collect();
            assert!(left.is_empty(), "iptables rules of {id} left: {left:?}");
        }
        let bridge = self.bridge();
        let ports = run_ip(&["-o", "link", "show", "master", &bridge]);
        assert!(ports.trim().is_empty(), "veths left on {bridge}: {ports}");
    }

    /// The addresses host-local holds leases for.
    fn leases(&self) -> Vec<String> {
        let dir = self
            .net_dir()
            .join("networks")
            .join(&self.env.namespace)
            .join(&self.cache)
            .join("ipam")
            .join(format!("nestcache-{}", self.cache));
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `cache rm` takes the bridge, its subnet claim and its leases with it.
    fn remove_cache_and_check(&self) {
        let bridge = self.bridge();
        let subnet = self.network_json()["subnet"]
            .as_str()
            .expect("subnet")
            .replace('/', "-");
        self.ok(&["cache", "rm", &self.cache]);
        assert!(
            !PathBuf::from("/sys/class/net").join(&bridge).exists(),
            "bridge {bridge} left"
        );
        let dir = self
            .net_dir()
            .join("networks")
            .join(&self.env.namespace)
            .join(&self.cache);
        assert!(!dir.exists(), "network dir left: {}", dir.display());
        let claim = PathBuf::from("/run/nestcache/subnets").join(subnet);
        let ours = std::fs::read_to_string(&claim).is_ok_and(|o| o == dir.to_string_lossy());
        assert!(!ours, "subnet claim {} left", claim.display());
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let ps = self.run(&["ps", "-a", "--json"]);
        if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&ps.stdout) {
            for c in list {
                if let Some(id) = c["id"].as_str() {
                    self.run(&["rm", "-f", id]);
                }
            }
        }
        self.run(&["cache", "rm", &self.cache]);
    }
}

fn iptables_save() -> String {
    let out = std::process::Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET / from 127.0.0.1:`port`, retried until the server answers.
fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match got {
            Ok(b) if b.contains("200 OK") => return b,
            other => assert!(
                Instant::now() < deadline,
                "127.0.0.1:{port} never answered: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn published_port_answers_from_the_host_and_containers_find_each_other_by_name() {
    testkit::require!(containerd, root, tool "iptables-save", tool "ip");
    let n = Net::new("net-web");
    let port = free_port();
    let mapping = format!("127.0.0.1:{port}:80");
    n.httpd("web", &["-p", &mapping, "--network-alias", "www"]);
    assert!(http_get(port).contains("hello from web"));
    assert_eq!(
        n.ok(&["port", "web"]),
        format!("80/tcp -> 127.0.0.1:{port}\n")
    );

    // By --name, by --network-alias, by a --link alias; and --add-host, --hostname files.
    let got = n.nested_ok(
        &[
            "--rm",
            "--link",
            "web:linked",
            "--add-host",
            "gw:host-gateway",
            "--dns",
            "192.0.2.53",
        ],
        &[
            "sh",
            "-c",
            "busybox wget -q -O - http://web/ && busybox wget -q -O - http://www/ && \
             busybox wget -q -O - http://linked/ && grep -w gw /etc/hosts && cat /etc/resolv.conf",
        ],
    );
    let gateway = n.network_json()["gateway"]
        .as_str()
        .expect("gateway")
        .to_string();
    assert_eq!(got.matches("hello from web").count(), 3, "{got}");
    assert!(got.contains(&format!("{gateway}\tgw")), "{got}");
    assert!(got.contains("nameserver 192.0.2.53"), "{got}");

    // --hostname: /etc/hostname, and the name in its own /etc/hosts.
    let named = n.nested_ok(
        &["--rm", "--hostname", "box"],
        &[
            "sh",
            "-c",
            "cat /etc/hostname; hostname; grep -w box /etc/hosts",
        ],
    );
    assert!(
        named.starts_with("box\nbox\n") && named.lines().count() == 3,
        "{named}"
    );

    // CNI CHECK through `verify`, and it fails once the interface is gone.
    assert!(n.ok(&["verify", "web"]).contains("checked (CNI CHECK)"));
    let netns = n.net_dir().join("netns").join("web");
    let gone = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "link", "set", "eth0", "down"])
        .status()
        .expect("nsenter");
    assert!(gone.success());
    let e = n.fails(&["verify", "web"]);
    assert!(e.contains("CNI CHECK") || e.contains("CHECK"), "{e}");
    let up = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "link", "set", "eth0", "up"])
        .status()
        .expect("nsenter");
    assert!(up.success());

    // web's /etc/hosts is kept current: a peer appears while it runs, goes when it goes.
    n.nested_ok(&["-d", "--name", "peer"], &["sleep", "30"]);
    let peer_ip = n.ip_of("peer");
    let hosts = || n.nested_ok(&["--rm", "--net", "container:web"], &["cat", "/etc/hosts"]);
    assert!(hosts().contains(&format!("{peer_ip}\tpeer")), "{}", hosts());
    n.ok(&["rm", "-f", "peer"]);
    assert!(!hosts().contains("peer"), "{}", hosts());

    // --net container:web shares web's namespace: its address, and web on localhost.
    let web_ip = n.ip_of("web");
    let shared = n.nested_ok(
        &["--rm", "--net", "container:web"],
        &[
            "sh",
            "-c",
            "ip -4 -o addr show eth0; busybox wget -q -O - http://127.0.0.1/",
        ],
    );
    assert!(shared.contains(&format!("inet {web_ip}/")), "{shared}");
    assert!(shared.contains("hello from web"), "{shared}");

    // inspect: Docker's NetworkSettings from the network record, as the container sees it.
    let settings: serde_json::Value =
        serde_json::from_str(&n.ok(&["inspect", "-f", "{{.NetworkSettings}}", "web"]))
            .expect("NetworkSettings JSON");
    let prefix = shared
        .split(&format!("inet {web_ip}/"))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("prefix length");
    let mac = n.nested_ok(
        &["--rm", "--net", "container:web"],
        &["cat", "/sys/class/net/eth0/address"],
    );
    assert_eq!(settings["IPAddress"], web_ip.as_str(), "{settings}");
    assert_eq!(settings["IPPrefixLen"].to_string(), prefix, "{settings}");
    assert_eq!(settings["Gateway"], gateway.as_str(), "{settings}");
    assert_eq!(settings["MacAddress"], mac.trim(), "{settings}");
    let on = &settings["Networks"][format!("nestcache-{}", n.cache)];
    assert_eq!(on["IPAddress"], web_ip.as_str(), "{settings}");
    assert_eq!(on["MacAddress"], mac.trim(), "{settings}");
    assert!(
        on["Aliases"]
            .as_array()
            .is_some_and(|a| a.contains(&"www".into())),
        "{settings}"
    );

    // Hairpin: a container reaches its own published port through the bridge.
    let port2 = free_port();
    let vol = format!("{}:/www", n.www.path().display());
    let url = format!("http://{gateway}:{port2}/");
    let own = n.nested_ok(
        &["--rm", "-p", &format!("{port2}:80"), "-v", &vol],
        &[
            "sh",
            "-c",
            &format!(
                "busybox httpd -f -p 80 -h /www & sleep 0.3; busybox wget -q -O - {url}; kill $!"
            ),
        ],
    );
    assert!(own.contains("hello from web"), "{own}");

    let web = ("web".to_string(), web_ip);
    n.ok(&["rm", "-f", "web"]);
    n.assert_released(&[web, ("peer".into(), peer_ip)]);
    n.remove_cache_and_check();
}

#[test]
fn a_port_in_use_fails_in_one_line_before_anything_starts() {
    testkit::require!(containerd, root, tool "iptables-save", tool "ip");
    let n = Net::new("net-conflict");
    let port = free_port();
    let mapping = format!("127.0.0.1:{port}:80");
    n.httpd("first", &["-p", &mapping]);
    let e = n.nested(&["--rm", "--name", "second", "-p", &mapping], &["true"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success());
    assert!(
        err.contains(&format!(
            "host port 127.0.0.1:{port}/tcp is already published by nested container first"
        )),
        "{err}"
    );
    // The wildcard address covers 127.0.0.1.
    let e = n.fails(&[
        "run",
        "--cache",
        &n.cache,
        "-p",
        &format!("{port}:80"),
        &n.img,
        "--",
        "true",
    ]);
    assert!(e.contains("already published"), "{e}");
    // A host process holding a port.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hp = held.local_addr().expect("addr").port();
    let e = n.fails(&[
        "run",
        "--cache",
        &n.cache,
        "--name",
        "third",
        "-p",
        &format!("127.0.0.1:{hp}:80"),
        &n.img,
        "--",
        "true",
    ]);
    assert!(
        e.contains(&format!("127.0.0.1:{hp}/tcp is in use on the host")),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // Nothing of them was made.
    for id in ["second", "third"] {
        assert!(!n.net_dir().join("containers").join(id).exists(), "{id}");
        assert!(n.fails(&["port", id]).contains("no nested container"));
    }
    // Bad flags are one line too, and need a bridge.
    for (args, want) in [
        (vec!["-p", "8080:80/sctp"], "not tcp or udp"),
        (vec!["-p", "1-3:1-2"], "differ in length"),
        (vec!["--net", "none", "-p", "8080:80"], "need --net bridge"),
        (vec!["--link", "nosuch"], "no container named nosuch"),
        (vec!["--add-host", "x:notanip"], "--add-host"),
        (vec!["--net", "container:nosuch"], "nosuch"),
    ] {
        let mut v = vec!["run", "--cache", n.cache.as_str(), "--rm"];
        v.extend_from_slice(&args);
        v.extend_from_slice(&[n.img.as_str(), "--", "true"]);
        let e = n.fails(&v);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let ip = n.ip_of("first");
    n.ok(&["rm", "-f", "first"]);
    n.assert_released(&[("first".into(), ip)]);
    // Released: the port can be had again.
    n.nested_ok(&["--rm", "-p", &mapping], &["true"]);
}

#[test]
fn udp_and_publish_all() {
    testkit::require!(containerd, root, tool "iptables-save", tool "ip");
    let n = Net::new("net-udp");
    // -P: the image's 80/tcp and 9999/udp onto free host ports. busybox-static has no UDP
    // server, so the host's perl (Essential in Debian) answers UDP, from the host's /usr.
    let www = format!("{}:/www", n.www.path().display());
    let echo = r#"busybox httpd -f -p 80 -h /www & exec /usr/bin/perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 9999, Proto => "udp") or die "bind: $!"; while (1) { $peer = $s->recv($d, 1024); $s->send("echo:$d", 0, $peer) }'"#;
    n.nested_ok(
        &[
            "-d",
            "--name",
            "all",
            "-P",
            "-v",
            &www,
            "-v",
            "/usr:/usr:ro",
            "-v",
            "/usr/lib:/lib:ro",
            "-v",
            "/usr/lib64:/lib64:ro",
        ],
        &["sh", "-c", echo],
    );
    let ports = n.published("all");
    let host_port = |c: u64, proto: &str| {
        ports
            .iter()
            .find(|p| p["containerPort"] == c && p["protocol"] == proto)
            .and_then(|p| p["hostPort"].as_u64())
            .unwrap_or_else(|| panic!("{c}/{proto} not published: {ports:?}")) as u16
    };
    let (tcp, udp) = (host_port(80, "tcp"), host_port(9999, "udp"));
    assert!(http_get(tcp).contains("hello from web"));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 64];
    let reply = loop {
        sock.send_to(b"ping", ("127.0.0.1", udp)).expect("send");
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            break String::from_utf8_lossy(&buf[..len]).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no UDP answer from 127.0.0.1:{udp}"
        );
    };
    assert_eq!(reply, "echo:ping");
    let ip = n.ip_of("all");
    n.ok(&["rm", "-f", "all"]);
    n.assert_released(&[("all".into(), ip)]);
}

#[test]
fn ten_containers_with_ports_at_once() {
    testkit::require!(containerd, root, tool "iptables-save", tool "ip");
    let n = Net::new("net-ten");
    let vol = format!("{}:/www", n.www.path().display());
    // All at once: ten runs race for addresses, ports and the bridge.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let mut cmd = n.env.cmd();
            cmd.env_remove("NESTCACHE_NET")
                .env("NESTCACHE_SUBNET_POOL", POOL)
                .args(["run", "--cache", &n.cache, "-d", "--name", &format!("w{i}")])
                .args(["-p", "127.0.0.1::80", "-v", &vol, &n.img, "--"])
                .args(["busybox", "httpd", "-f", "-p", "80", "-h", "/www"]);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for h in handles {
        let out = h.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut gone = Vec::new();
    let mut seen_ports = std::collections::HashSet::new();
    let mut seen_ips = std::collections::HashSet::new();
    for i in 0..10 {
        let id = format!("w{i}");
        let p = n.published(&id)[0]["hostPort"].as_u64().expect("port") as u16;
        assert!(http_get(p).contains("hello from web"), "{id}");
        let ip = n.ip_of(&id);
        assert!(
            seen_ports.insert(p) && seen_ips.insert(ip.clone()),
            "{id}: {p} {ip}"
        );
        gone.push((id, ip));
    }
    for (id, _) in &gone {
        n.ok(&["rm", "-f", id]);
    }
    n.assert_released(&gone);
    n.remove_cache_and_check();
}

#[test]
fn every_way_out_releases_the_network() {
    testkit::require!(containerd, root, tool "iptables-save", tool "ip");
    let n = Net::new("net-cleanup");
    // --rm: the default is bridge when the plugins are installed.
    let addr = |args: &[&str]| {
        let out = n.nested_ok(
            args,
            &["sh", "-c", "ls /sys/class/net; ip -4 -o addr show eth0"],
        );
        assert!(out.starts_with("eth0\nlo\n"), "{out}");
        let inet = out
            .split_whitespace()
            .find(|w| w.contains('/'))
            .expect("inet");
        inet.split('/').next().expect("ip").to_string()
    };
    let rm1 = addr(&["--rm", "--name", "rm1"]);
    // A container that exits (no --rm) keeps no address; the container stays.
    let exit1 = addr(&["--name", "exit1"]);
    n.assert_released(&[("rm1".into(), rm1), ("exit1".into(), exit1)]);
    n.ok(&["rm", "exit1"]);
    // A detached container that exits on its own: nobody waits for it, the next command
    // (any) reaps its network.
    n.nested_ok(&["-d", "--name", "short"], &["sleep", "0.2"]);
    let ip = n.ip_of("short");
    std::thread::sleep(Duration::from_millis(600));
    n.ok(&["ps", "-a"]);
    n.assert_released(&[("short".into(), ip)]);
    // A run killed by SIGKILL, then its container killed behind its back: reaped too.
    let mut child = n
        .env
        .cmd()
        .env_remove("NESTCACHE_NET")
        .env("NESTCACHE_SUBNET_POOL", POOL)
        .args([
            "run", "--cache", &n.cache, "--rm", "--name", "crash", &n.img, "--", "sleep", "30",
        ])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.try_ip_of("crash").is_none() || !n.ok(&["ps"]).contains("running") {
        assert!(Instant::now() < deadline, "crash never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ip = n.ip_of("crash");
    child.kill().expect("kill nestcache");
    child.wait().expect("wait");
    let killed = std::process::Command::new("ctr")
        .args(["--address", &n.env.address, "-n", &n.env.namespace])
        .args(["task", "kill", "-s", "SIGKILL", "crash"])
        .status()
        .expect("ctr task kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.ok(&["ps"]).lines().count() > 1 {
        assert!(Instant::now() < deadline, "crash never stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    n.assert_released(&[("crash".into(), ip)]);
    // An exited --rm container whose owner is dead is reaped by the next command.
    let all = n.ok(&["ps", "-a"]);
    assert!(!all.contains("crash"), "crash not reaped: {all}");
    // rm -f of a running one.
    n.nested_ok(&["-d", "--name", "rmf"], &["sleep", "30"]);
    let ip = n.ip_of("rmf");
    n.ok(&["rm", "-f", "rmf"]);
    n.assert_released(&[("rmf".into(), ip)]);
    n.remove_cache_and_check();
}

#[test]
fn a_containerd_restart_leaves_nothing_behind() {
    testkit::require!(containerd, root, tool "iptables-save", tool "ip");
    let ctd = PrivateContainerd::start();
    let mut env = Env::new("net-restart");
    env.address = ctd.address.clone();
    let n = Net::in_env(env);
    n.nested_ok(&["-d", "--name", "svc"], &["sleep", "30"]);
    let ip = n.ip_of("svc");
    ctd.restart();
    // The task survives the restart, and so does its network (the reaper runs on `ps`).
    assert!(n.ok(&["ps"]).contains("svc"));
    assert_eq!(n.ip_of("svc"), ip);
    n.ok(&["rm", "-f", "svc"]);
    n.assert_released(&[("svc".into(), ip)]);
    n.remove_cache_and_check();
}
