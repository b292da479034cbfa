//! WebSocket connections counted by the address they come from, so one client cannot take
//! every place: an IPv4 address, or an IPv6 /64 (what one subscriber line is usually given),
//! holds at most `per_ip` connections at once across the endpoints sharing a [`Peers`];
//! loopback, where benchmarks and a local reverse proxy connect from, may be given more.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How many connections one address may hold.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    pub per_ip: usize,
    pub per_loopback: usize,
}

/// Connections held by address; clone it freely (clones share the counts).
#[derive(Debug, Clone)]
pub struct Peers {
    limits: PeerLimits,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place among its address's, given back when dropped.
#[derive(Debug)]
pub struct PeerPlace {
    peers: Peers,
    key: IpAddr,
}

/// An address already holds as many connections as it may: answered 429 with the reason.
#[derive(Debug)]
pub struct TooMany {
    pub max: usize,
}

impl IntoResponse for TooMany {
    fn into_response(self) -> Response {
        let reason = format!(
            "too many connections from your address: at most {} at once",
            self.max
        );
        let body = axum::Json(json!({ "error": reason }));
        (StatusCode::TOO_MANY_REQUESTS, body).into_response()
    }
}

impl Peers {
    pub fn new(limits: PeerLimits) -> Self {
        Self {
            limits,
            held: Arc::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every change is one count up or down: a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more connection from `ip`, unless it holds as many as it may.
    pub fn enter(&self, ip: IpAddr) -> Result<PeerPlace, TooMany> {
        let key = key(ip);
        let max = if key.is_loopback() {
            self.limits.per_loopback
        } else {
            self.limits.per_ip
        };
        let mut held = self.held();
        if held.get(&key).copied().unwrap_or(0) >= max {
            return Err(TooMany { max });
        }
        *held.entry(key).or_default() += 1;
        Ok(PeerPlace {
            peers: self.clone(),
            key,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self.peers.held();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The address connections are counted under: IPv4 (mapped ones too) as it is, IPv6 by /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_loopback() => ip,
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// The address of the socket a request came on, when the server recorded it.
pub fn peer_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_share_and_loopback_more() {
        let peers = Peers::new(PeerLimits {
            per_ip: 2,
            per_loopback: 3,
        });
        let one: IpAddr = "203.0.113.7".parse().expect("an address");
        let first = peers.enter(one).expect("a place");
        let second = peers.enter(one).expect("a place");
        let refused = peers
            .enter(one)
            .map(|_| ())
            .expect_err("a third is refused");
        assert_eq!(refused.max, 2);
        let other: IpAddr = "203.0.113.8".parse().expect("an address");
        assert!(peers.enter(other).is_ok(), "another address has its own");
        drop(first);
        assert!(peers.enter(one).is_ok(), "a place given back is free");

        let local: IpAddr = "127.0.0.1".parse().expect("an address");
        let held: Vec<_> = (0..3)
            .map(|_| peers.enter(local).expect("a place"))
            .collect();
        assert!(peers.enter(local).is_err());
        drop((held, second));
        assert!(peers.held().is_empty(), "nothing left behind");
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("an address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("an address");
        assert_eq!(key(a), key(b));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("an address");
        assert_eq!(key(mapped), "203.0.113.7".parse::<IpAddr>().expect("v4"));
    }
}
