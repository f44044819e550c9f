//! Ports for local servers that a process starts and tells where to listen.

use anyhow::{Result, bail};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Lowest port handed out (clear of the well-known and registered services people run).
const LOWEST: u16 = 10_000;

/// A TCP port on 127.0.0.1 that nothing listens on, for a server about to be started on it
/// (PostgreSQL, the stack's services).
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`). A port
/// found with `bind(0)` and released is in that range, where the kernel can give it to any
/// outgoing connection as its source port (or to another `bind(0)`) before the server binds
/// it; below the range only another deliberate choice can take it. One process never hands out
/// the same port twice. Falls back to `bind(0)` when the range leaves no room below it.
pub fn unused_local_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start <= LOWEST + 1_000 {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let span = u32::from(ephemeral_start - LOWEST);
    // Processes started together begin their search at different places.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let offset = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % span;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = LOWEST + ((offset + i) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no unused TCP port on 127.0.0.1 between {LOWEST} and {ephemeral_start}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_unused_and_below_the_ephemeral_range() {
        let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..50).map(|_| unused_local_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for p in ports {
            if start > LOWEST + 1_000 {
                assert!((LOWEST..start).contains(&p), "{p} is not below {start}");
            }
            // Still free: a server can bind it.
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
