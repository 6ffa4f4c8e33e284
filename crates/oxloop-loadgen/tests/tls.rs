//! The load generator against the floor, as benches/net.py runs them: TLS both ways,
//! certificate checks, and the `--sync-stdin` protocol of benches/instructions.py.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

fn certs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../benches/certs")
}

fn cert(name: &str) -> String {
    certs().join(name).to_string_lossy().into_owned()
}

/// A floor server (killed on drop); `tls`: with the benchmark certificate.
struct Floor {
    child: Child,
    addr: String,
}

impl Floor {
    fn start(tls: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oxloop-floor"));
        cmd.args(["--mode", "tcp", "--max-seconds", "20"]);
        if tls {
            cmd.args([
                "--certfile",
                &cert("server.pem"),
                "--keyfile",
                &cert("server.key"),
            ]);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("oxloop-floor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("ready line");
        let addr = line
            .strip_prefix("ready ")
            .expect("ready <address>")
            .trim()
            .to_string();
        Self { child, addr }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oxloop-loadgen"));
    cmd.args(["--mode", "tcp", "--warmup", "0.05", "--duration", "0.3"])
        .args(["--timeout", "3"])
        .args(args);
    cmd
}

fn field(json: &str, name: &str) -> String {
    let key = format!("\"{name}\":");
    let at = json.find(&key).expect(name) + key.len();
    let rest = &json[at..];
    rest[..rest.find([',', '}']).expect(name)].to_string()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_echo_against_the_tls_floor() {
    let floor = Floor::start(true);
    let ca = cert("ca.pem");
    for size in ["1024", "65536"] {
        let out = loadgen(&["--addr", &floor.addr, "--tls", "--ca", &ca])
            .args(["--conns", "3", "--size", size])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout} {stderr}");
        assert!(
            field(&stdout, "requests").parse::<u64>().unwrap() > 0,
            "{stdout}"
        );
        assert_eq!(field(&stdout, "errors"), "0", "{stdout}");
        assert_eq!(
            field(&stdout, "tls"),
            "\"TLSv1.3 TLS_AES_256_GCM_SHA384\"",
            "{stdout}"
        );
    }
}

#[test]
fn a_certificate_for_another_name_or_from_another_ca_is_refused() {
    let floor = Floor::start(true);
    let ca = cert("ca.pem");
    let out = loadgen(&["--addr", &floor.addr, "--tls", "--ca", &ca])
        .args(["--server-name", "other.example"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    // The server's own certificate is not a CA.
    let out = loadgen(&["--addr", &floor.addr, "--tls", "--ca", &cert("server.pem")])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
}

#[test]
fn the_tls_floor_echoes_no_plaintext() {
    let floor = Floor::start(true);
    let out = loadgen(&["--addr", &floor.addr]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    assert!(
        stderr.contains("prime: the server closed the connection"),
        "{stderr}"
    );
}

#[test]
fn tls_options_are_checked() {
    for args in [
        &["--addr", "127.0.0.1:9", "--tls"][..],
        &["--addr", "127.0.0.1:9", "--tls", "--ca", "x", "--reconnect"],
        &[
            "--addr",
            "127.0.0.1:9",
            "--tls",
            "--ca",
            "x",
            "--mode",
            "udp",
        ],
    ] {
        let out = loadgen(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn sync_stdin_holds_the_first_request_and_the_close() {
    let floor = Floor::start(true);
    let ca = cert("ca.pem");
    let mut child = loadgen(&["--addr", &floor.addr, "--tls", "--ca", &ca])
        .args(["--conns", "4", "--warmup", "0", "--sync-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line, "connected\n");
    // Nothing is sent until told: the window has not begun.
    std::thread::sleep(std::time::Duration::from_millis(400));
    writeln!(stdin, "go").unwrap();
    line.clear();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line, "finished\n");
    writeln!(stdin, "go").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(field(&stdout, "warmup_requests"), "0", "{stdout}");
    assert!(
        field(&stdout, "requests").parse::<u64>().unwrap() > 0,
        "{stdout}"
    );
    // The window is the measured 0.3 s (timed to the microsecond: 0.2999 was seen)
    // plus the drain, not with the 0.4 s wait before it (0.7 s or more).
    let seconds: f64 = field(&stdout, "seconds").parse().unwrap();
    assert!((0.25..0.65).contains(&seconds), "{stdout}");
}
