//! A tiny blocking RESP client for tests: sends commands, returns each reply's raw bytes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Resp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Resp {
    pub fn connect(addr: &str) -> Resp {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Resp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
    }

    /// Sends one command as a multibulk array and returns the raw reply (lossy UTF-8).
    pub fn cmd(&mut self, args: &[&str]) -> String {
        self.send_raw(&encode(args));
        self.reply()
    }

    /// Reads one whole reply.
    pub fn reply(&mut self) -> String {
        let mut out = Vec::new();
        read_one(&mut self.r, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// True if the server closed the connection (reads EOF).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        b.extend_from_slice(a.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b
}

fn read_one(r: &mut impl BufRead, out: &mut Vec<u8>) {
    let start = out.len();
    let n = r.read_until(b'\n', out).unwrap();
    assert!(n > 0, "connection closed while reading a reply");
    let line = String::from_utf8_lossy(&out[start + 1..out.len() - 2]).into_owned();
    match out[start] {
        b'$' | b'=' | b'!' => {
            let len: i64 = line.parse().unwrap();
            if len >= 0 {
                let mut b = vec![0; len as usize + 2];
                r.read_exact(&mut b).unwrap();
                out.extend_from_slice(&b);
            }
        }
        b'*' | b'~' | b'>' => {
            let n: i64 = line.parse().unwrap();
            for _ in 0..n.max(0) {
                read_one(r, out);
            }
        }
        b'%' | b'|' => {
            let n: i64 = line.parse().unwrap();
            for _ in 0..2 * n {
                read_one(r, out);
            }
        }
        _ => {}
    }
}
