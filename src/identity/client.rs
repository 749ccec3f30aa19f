//! Which address a request comes from, for the failed-authentication bound:
//! the TCP peer, unless the peer is one of the configured trusted proxies
//! (`server.trusted_proxies`), in which case the address those proxies
//! reported in `Forwarded` (RFC 7239) or `X-Forwarded-For`, read from the
//! right and skipping trusted hops. A header from anyone else is ignored, so
//! a client cannot choose the address it is counted under.

use std::net::IpAddr;

use actix_web::HttpRequest;

/// Which header the trusted proxies write the client's address in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// Address ranges whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<(IpAddr, u8)>,
    /// Only this header is read: a proxy that appends to one passes the other through as the
    /// client wrote it.
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Parses `192.0.2.10`, `10.0.0.0/8`, `::1`, `fd00::/8`; the error names the bad entry.
    pub fn parse(entries: &[String], header: ForwardedHeader) -> Result<Self, String> {
        let ranges = entries
            .iter()
            .map(|entry| {
                let (ip, len) = entry.split_once('/').map_or((entry.as_str(), None), |(ip, len)| (ip, Some(len)));
                let ip: IpAddr = ip.trim().parse().map_err(|_| format!("`{entry}` is not an IP address or CIDR range"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = match len {
                    None => max,
                    Some(len) => len.trim().parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| format!("`{entry}`: prefix length must be 0-{max}"))?,
                };
                // An IPv4-mapped range (`::ffff:10.0.0.0/104`) is matched as the IPv4 range it maps.
                let canonical = canonical(ip);
                let len = match (ip, canonical) {
                    (IpAddr::V6(_), IpAddr::V4(_)) => len.checked_sub(96).ok_or_else(|| format!("`{entry}`: an IPv4-mapped range needs a prefix of 96-128"))?,
                    _ => len,
                };
                Ok((canonical, len))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { ranges, header })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.ranges.iter().any(|(net, len)| in_range(ip, *net, *len))
    }

    /// The client address of `req` (see the module header); `None` without a peer address.
    pub fn client_of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = canonical(req.peer_addr()?.ip());
        if !self.contains(peer) {
            return Some(peer);
        }
        let values = |name| req.headers().get_all(name).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
        let hops: Vec<String> = match self.header {
            ForwardedHeader::XForwardedFor => values("x-forwarded-for").map(|hop| hop.trim().to_owned()).collect(),
            // An element without `for=` is a hop that names no address.
            ForwardedHeader::Forwarded => values("forwarded").map(|element| forwarded_for(element).unwrap_or_default()).collect(),
        };
        Some(self.rightmost_untrusted(peer, &hops))
    }

    /// Walks the hops from the nearest: the first that is not a trusted proxy is the client;
    /// a hop that is not an address ends the walk at the proxy that wrote it.
    fn rightmost_untrusted(&self, peer: IpAddr, hops: &[String]) -> IpAddr {
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else { return client };
            client = canonical(ip);
            if !self.contains(client) {
                return client;
            }
        }
        client
    }
}

/// The `for=` value of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<String> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => prefix(u128::from(u32::from(ip)) << 96, len) == prefix(u128::from(u32::from(net)) << 96, len),
        (IpAddr::V6(ip), IpAddr::V6(net)) => prefix(u128::from(ip), len) == prefix(u128::from(net), len),
        _ => false,
    }
}

fn prefix(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    }
}

/// What the bound counts an address under: an IPv4 address, or an IPv6 address's /64
/// (one host is usually given a whole /64, so counting single addresses would let it
/// send from 2^64 of them).
pub fn counted_as(ip: IpAddr) -> u128 {
    match canonical(ip) {
        // Bit 32 marks IPv4, bit 33 IPv6 (whose /64 has its low 64 bits clear): never 0, the
        // counting table's mark of a free slot, not even for `::1`.
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | 1 << 32,
        IpAddr::V6(v6) => prefix(u128::from(v6), 64) | 1 << 33,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn proxies(list: &[&str]) -> TrustedProxies {
        proxies_writing(list, ForwardedHeader::XForwardedFor)
    }

    fn proxies_writing(list: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), header).unwrap()
    }

    fn from(peer: &str, headers: &[(&str, &str)]) -> TestRequest {
        let mut req = TestRequest::default().peer_addr(format!("{peer}:40000").parse().unwrap());
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        req
    }

    #[test]
    fn a_forwarding_header_from_an_untrusted_peer_is_ignored() {
        let req = from("203.0.113.9", &[("x-forwarded-for", "198.51.100.1")]).to_http_request();
        assert_eq!(proxies(&[]).client_of(&req), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(proxies(&["10.0.0.0/8"]).client_of(&req), Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_nearest_untrusted_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // A client-written first entry (a forgery) is left of the address the proxy saw.
        let req = from("10.1.2.3", &[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.9.9.9")]).to_http_request();
        assert_eq!(trusted.client_of(&req), Some("198.51.100.7".parse().unwrap()));
        let req = from("10.1.2.3", &[("forwarded", "for=1.2.3.4, for=\"[2001:db8::7]:4711\";proto=https")]).to_http_request();
        assert_eq!(proxies_writing(&["10.0.0.0/8"], ForwardedHeader::Forwarded).client_of(&req), Some("2001:db8::7".parse().unwrap()));
        // Proxies that write X-Forwarded-For pass a client's own Forwarded through: it is not read.
        let req = from("10.1.2.3", &[("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "198.51.100.7")]).to_http_request();
        assert_eq!(trusted.client_of(&req), Some("198.51.100.7".parse().unwrap()));
        let req = from("10.1.2.3", &[("forwarded", "proto=https")]).to_http_request();
        assert_eq!(proxies_writing(&["10.0.0.0/8"], ForwardedHeader::Forwarded).client_of(&req), Some("10.1.2.3".parse().unwrap()), "no for=: the proxy");
        let req = from("10.1.2.3", &[]).to_http_request();
        assert_eq!(trusted.client_of(&req), Some("10.1.2.3".parse().unwrap()), "no header: the proxy itself");
        let req = from("10.1.2.3", &[("x-forwarded-for", "not-an-address")]).to_http_request();
        assert_eq!(trusted.client_of(&req), Some("10.1.2.3".parse().unwrap()), "garbage stops at the proxy that wrote it");
    }

    #[test]
    fn ranges_parse_and_match_and_bad_entries_are_named() {
        let trusted = proxies(&["192.0.2.0/24", "::1", "fd00::/8"]);
        assert!(trusted.contains("192.0.2.200".parse().unwrap()));
        assert!(!trusted.contains("192.0.3.1".parse().unwrap()));
        assert!(trusted.contains("::ffff:192.0.2.1".parse().unwrap()), "IPv4-mapped");
        assert!(trusted.contains("fd12::1".parse().unwrap()));
        assert!(!trusted.contains("::2".parse().unwrap()));
        let parse = |entry: &str| TrustedProxies::parse(&[entry.to_owned()], ForwardedHeader::XForwardedFor);
        assert!(parse("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
        assert!(parse("proxy.local").is_err());
        let mapped = proxies(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.contains("10.200.0.1".parse().unwrap()), "an IPv4-mapped /104 is the IPv4 /8");
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_never_as_an_ipv4_address() {
        let a = counted_as("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, counted_as("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_ne!(a, counted_as("2001:db8:1:3::1".parse().unwrap()));
        assert_ne!(counted_as("0.0.0.1".parse().unwrap()), counted_as("::1".parse().unwrap()));
        assert_ne!(counted_as("::1".parse().unwrap()), 0, "0 marks a free slot of the counting table");
    }
}
