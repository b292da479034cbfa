//! Who may open `/updates`: loopback and private-range peers only, judged by the socket's
//! address. `X-Forwarded-For` is believed only from the proxies named in `TRUSTED_PROXIES`, and
//! then only back to the first hop that is not itself a trusted proxy: anyone can write the
//! header, so from any other peer it is ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    trusted: Vec<IpNet>,
}

impl Peers {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self { trusted }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.trusted.iter().any(|net| net.contains(&address))
    }

    /// The client behind a connection from `socket`: `socket` itself, unless it is a trusted
    /// proxy, then the nearest `X-Forwarded-For` hop that is not one. `None` when a trusted
    /// proxy forwarded an address that cannot be read: the client is unknown.
    pub fn client(&self, socket: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let mut client = socket;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            if !self.trusts(client) {
                break;
            }
            client = parse_hop(hop.trim())?;
        }
        Some(client)
    }

    /// Whether the client behind a connection from `socket` may open `/updates`; the refused
    /// client's address (as judged) is the error.
    pub fn admit(&self, socket: IpAddr, headers: &HeaderMap) -> Result<(), Option<IpAddr>> {
        match self.client(socket, headers) {
            Some(client) if is_internal(client) => Ok(()),
            judged => Err(judged),
        }
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Loopback, private (RFC 1918), link-local, and IPv6 unique-local addresses (IPv4 ones also
/// when written as IPv4-mapped IPv6).
pub fn is_internal(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(address: Ipv4Addr) -> bool {
    address.is_loopback() || address.is_private() || address.is_link_local()
}

fn internal_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    address.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
}

/// `TRUSTED_PROXIES`: addresses and networks separated by commas or spaces; empty, none.
pub fn parse_proxies(text: &str) -> Result<Peers, String> {
    let entries = text
        .split([',', ' '])
        .filter(|entry| !entry.trim().is_empty());
    Ok(Peers::new(
        entries.map(parse_net).collect::<Result<_, _>>()?,
    ))
}

/// A `TRUSTED_PROXIES` entry: an address (`10.0.0.5`) or a network (`10.0.0.0/8`).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("a header"));
        headers
    }

    #[test]
    fn loopback_and_private_ranges_are_internal_and_public_ones_are_not() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "10.255.255.254",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.0.1",
            "192.168.255.254",
            "169.254.1.1",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:10.1.2.3",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip(internal)), "{internal} is internal");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "11.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "2001:4860:4860::8888",
            "fbff::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip(public)), "{public} is public");
        }
    }

    #[test]
    fn a_forged_forwarded_for_from_an_untrusted_peer_is_ignored() {
        let peers = Peers::default();
        let public = ip("203.0.113.7");
        assert_eq!(
            peers.admit(public, &forwarded("10.0.0.1, 127.0.0.1")),
            Err(Some(public))
        );
        // And a private peer is not made public by the header either.
        assert_eq!(peers.admit(ip("10.0.0.9"), &forwarded("8.8.8.8")), Ok(()));
    }

    #[test]
    fn a_trusted_proxy_is_believed_back_to_the_first_untrusted_hop() {
        let peers = Peers::new(vec![
            parse_net("10.0.0.0/8").expect("a net"),
            parse_net("192.168.1.1").expect("an address"),
        ]);
        let proxy = ip("10.1.1.1");
        assert_eq!(
            peers.admit(proxy, &forwarded("203.0.113.7")),
            Err(Some(ip("203.0.113.7")))
        );
        assert_eq!(peers.admit(proxy, &forwarded("192.168.5.5")), Ok(()));
        // The client wrote its own hop first; the proxies appended theirs: only the hop the
        // last untrusted one reported counts.
        assert_eq!(
            peers.client(proxy, &forwarded("10.0.0.1, 8.8.4.4, 192.168.1.1")),
            Some(ip("8.8.4.4"))
        );
        assert_eq!(
            peers.client(proxy, &forwarded("[2001:db8::1]:443")),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(peers.client(proxy, &forwarded("not an address")), None);
        assert_eq!(peers.client(proxy, &HeaderMap::new()), Some(proxy));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        assert!(parse_net("10.0.0.0/8").is_ok());
        assert!(parse_net(" ::1 ").is_ok());
        assert!(parse_net("proxy.local").is_err());
        let peers = parse_proxies("10.0.0.0/8, 192.168.1.1 ::1").expect("a list");
        assert_eq!(peers.trusted.len(), 3);
        assert!(parse_proxies("").expect("none").trusted.is_empty());
        assert!(parse_proxies("10.0.0.1,proxy.local").is_err());
    }
}
