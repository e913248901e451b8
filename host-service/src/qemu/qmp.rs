//! A small QMP client (QEMU's JSON monitor protocol on a Unix socket): the greeting, capability
//! negotiation, and synchronous commands (`stop`, `cont`) whose replies are read line by line,
//! skipping the asynchronous events QEMU interleaves.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the QMP socket failed (QEMU did not create it in time).
    #[error("QMP socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error of the last attempt.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP I/O: {0}")]
    Io(#[source] std::io::Error),
    /// QEMU closed the connection.
    #[error("QMP connection closed")]
    Closed,
    /// A line was not JSON.
    #[error("QMP sent something that is not JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's description.
        desc: String,
    },
}

/// One command on the wire.
#[derive(Serialize)]
struct Request<'a> {
    execute: &'a str,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `path` (retrying until `wait` has passed, while QEMU starts), reads the
    /// greeting and leaves capability negotiation mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(source) if start.elapsed() >= wait => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let writer = stream.try_clone().map_err(QmpError::Io)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_value()?;
        tracing::debug!(%greeting, "QMP greeting");
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).map_err(QmpError::Io)? == 0 {
                return Err(QmpError::Closed);
            }
            if !line.trim().is_empty() {
                return serde_json::from_str(&line).map_err(QmpError::Json);
            }
        }
    }

    /// Runs `command` (no arguments) and waits for its reply; returns the reply's `return`.
    pub fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut text = serde_json::to_vec(&Request { execute: command }).map_err(QmpError::Json)?;
        text.push(b'\n');
        self.writer.write_all(&text).map_err(QmpError::Io)?;
        loop {
            let mut v = self.read_value()?;
            if let Some(r) = v.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    desc: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("(no description)")
                        .to_string(),
                });
            }
            // An event ({"event": ...}): not the reply.
        }
    }

    /// Pauses every vCPU; returns once they are stopped.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop").map(drop)
    }

    /// Resumes the vCPUs.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command line with an event and the reply.
    fn fake(path: &Path, fail: &'static str) -> std::thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(s).lines() {
                let line = line.unwrap();
                let cmd: Value = serde_json::from_str(&line).unwrap();
                let name = cmd["execute"].as_str().unwrap().to_string();
                w.write_all(b"{\"event\": \"STOP\", \"data\": {}}\r\n")
                    .unwrap();
                if name == fail {
                    w.write_all(
                        b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n",
                    )
                    .unwrap();
                } else {
                    w.write_all(b"{\"return\": {}}\r\n").unwrap();
                }
                seen.push(name);
            }
            seen
        })
    }

    #[test]
    fn commands_get_their_replies_past_events_and_errors_name_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp");
        let server = fake(&path, "cont");
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        q.stop().unwrap();
        let e = q.cont().unwrap_err();
        assert!(
            matches!(&e, QmpError::Command { command, desc } if command == "cont" && desc == "no"),
            "{e}"
        );
        drop(q);
        assert_eq!(server.join().unwrap(), ["qmp_capabilities", "stop", "cont"]);
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let e = Qmp::connect(Path::new("/nonexistent/qmp"), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/qmp"), "{e}");
    }
}
