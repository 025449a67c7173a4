//! Load-balancing selection over an immutable server set.
//!
//! A [`ServerSet`] is built once per config version and swapped whole on
//! change (never mutated under traffic); only its pick cursor moves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use fabric::model::Algorithm;

/// The servers of one pool with their selection state.
#[derive(Debug)]
pub struct ServerSet {
    algorithm: Algorithm,
    servers: Vec<SocketAddr>,
    cursor: AtomicUsize,
}

impl ServerSet {
    /// A set over `servers` (at least one; config validation guarantees it).
    pub fn new(algorithm: Algorithm, servers: Vec<SocketAddr>) -> Self {
        assert!(
            !servers.is_empty(),
            "a server set needs at least one server"
        );
        Self {
            algorithm,
            servers,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next server to try.
    pub fn pick(&self) -> SocketAddr {
        match self.algorithm {
            Algorithm::RoundRobin => {
                let i = self.cursor.fetch_add(1, Ordering::Relaxed);
                self.servers[i % self.servers.len()]
            }
        }
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a set has at least one server.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether this set has the same algorithm and servers as the arguments.
    pub fn same_as(&self, algorithm: Algorithm, servers: &[SocketAddr]) -> bool {
        self.algorithm == algorithm && self.servers == servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_each_server_in_turn() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let set = ServerSet::new(Algorithm::RoundRobin, vec![a, b]);
        let picks: Vec<_> = (0..5).map(|_| set.pick()).collect();
        assert_eq!(picks, vec![a, b, a, b, a]);
    }
}
