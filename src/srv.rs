//! `--discovery-srv`: the founding members from DNS SRV records, as etcd
//! finds them. A member looks up `_etcd-server-ssl._tcp.<domain>` (https
//! peers) and `_etcd-server._tcp.<domain>` (http peers), with
//! `-<--discovery-srv-name>` after the service when that is set; each
//! record's target and port is a peer URL. The record whose address is one
//! of this member's `--initial-advertise-peer-urls` is this member; the
//! others get placeholder names ("0", "1", ...) until they publish their
//! own. The result takes the place of `--initial-cluster`.
//!
//! Both services' records are combined, and only finding none at all is an
//! error: etcd 3.5's behaviour. (etcd 3.4.23 drops the http records when
//! there is no https one, so plain-http discovery fails there.)
//!
//! The lookup is a small DNS client over UDP (TCP when the answer is
//! truncated) to the name servers of `/etc/resolv.conf`, with its search
//! domains and its `timeout:` and `attempts:` options; the targets'
//! addresses come from the system's resolver.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// One SRV record's target and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host, without the trailing dot.
    pub target: String,
}

/// What the lookup needs from `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// How long one name server gets for one attempt (`options timeout:`).
    pub timeout: Duration,
    /// Attempts per name server (`options attempts:`).
    pub attempts: usize,
    /// Dots a name needs to be asked for as it is before the search
    /// domains (`options ndots:`).
    pub ndots: usize,
}

/// Parses resolv.conf's `nameserver`, `search`, `domain` and `options
/// timeout:/attempts:/ndots:` lines, with Go's defaults (5 s, 2 attempts,
/// 1 dot); with no
/// name server it uses 127.0.0.1, as Go's and glibc's resolvers do.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        search: Vec::new(),
        timeout: Duration::from_secs(5),
        attempts: 2,
        ndots: 1,
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    conf.nameservers.push(ip);
                }
            }
            Some("search") | Some("domain") => {
                conf.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
            }
            Some("options") => {
                for option in words {
                    let number = |prefix| {
                        option
                            .strip_prefix(prefix)
                            .and_then(|n: &str| n.parse::<u64>().ok())
                            .map(|n| n.max(1))
                    };
                    if let Some(n) = number("timeout:") {
                        conf.timeout = Duration::from_secs(n);
                    } else if let Some(n) = number("attempts:") {
                        conf.attempts = n as usize;
                    } else if let Some(n) = option
                        .strip_prefix("ndots:")
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        conf.ndots = n.min(15);
                    }
                }
            }
            _ => {}
        }
    }
    if conf.nameservers.is_empty() {
        conf.nameservers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    conf
}

const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

/// A DNS query for `name`'s SRV records with id `id` (recursion desired).
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a valid DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    if q.len() > 12 + 255 {
        return Err(format!("{name:?} is too long for DNS"));
    }
    q.extend_from_slice(&TYPE_SRV.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// Why a lookup found nothing, in Go's resolver's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<SrvTarget>),
    /// NXDOMAIN, or no SRV record in the answer.
    NoSuchHost,
    /// The answer had the TC bit: ask again over TCP.
    Truncated,
    /// SERVFAIL, REFUSED, or a reply that cannot be read.
    Misbehaving,
}

fn u16_at(m: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]))
}

/// Reads the (possibly compressed) name at `at`; returns it (without the
/// root dot) and where the record goes on after it.
fn read_name(m: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut after = None;
    // Every pointer must go backwards, so a name ends; bound it anyway.
    for _ in 0..128 {
        let len = *m.get(at)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Some((name, after.unwrap_or(at + 1))),
            0x00 => {
                let label = m.get(at + 1..at + 1 + len)?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                if name.len() > 255 {
                    return None;
                }
                at += 1 + len;
            }
            0xC0 => {
                let target = (u16_at(m, at)? & 0x3FFF) as usize;
                if target >= at {
                    return None;
                }
                after.get_or_insert(at + 2);
                at = target;
            }
            _ => return None,
        }
    }
    None
}

/// Reads a reply to `query`; `None` if it is not one (another id or
/// another question, or not a reply).
pub fn decode_reply(m: &[u8], query: &[u8]) -> Option<Answer> {
    if m.get(..2)? != query.get(..2)? {
        return None;
    }
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 == 0 {
        return None;
    }
    let question = query.get(12..)?;
    if u16_at(m, 4)? != 1
        || !m
            .get(12..12 + question.len())?
            .eq_ignore_ascii_case(question)
    {
        return None;
    }
    if flags & 0x0200 != 0 {
        return Some(Answer::Truncated);
    }
    match flags & 0x000F {
        0 => {}
        3 => return Some(Answer::NoSuchHost),
        _ => return Some(Answer::Misbehaving),
    }
    let an = u16_at(m, 6)?;
    let mut at = 12 + question.len();
    let mut records = Vec::new();
    for _ in 0..an {
        let Some((_, after)) = read_name(m, at) else {
            return Some(Answer::Misbehaving);
        };
        let (Some(rtype), Some(rdlen)) = (u16_at(m, after), u16_at(m, after + 8)) else {
            return Some(Answer::Misbehaving);
        };
        let rdata = after + 10;
        if m.len() < rdata + rdlen as usize {
            return Some(Answer::Misbehaving);
        }
        if rtype == TYPE_SRV {
            let (Some(priority), Some(weight), Some(port), Some((target, _))) = (
                u16_at(m, rdata),
                u16_at(m, rdata + 2),
                u16_at(m, rdata + 4),
                read_name(m, rdata + 6),
            ) else {
                return Some(Answer::Misbehaving);
            };
            records.push(SrvTarget {
                priority,
                weight,
                port,
                target,
            });
        }
        at = rdata + rdlen as usize;
    }
    if records.is_empty() {
        return Some(Answer::NoSuchHost);
    }
    // In order of priority, then of weight (heaviest first); etcd's order
    // only decides which member gets which placeholder name.
    records.sort_by(|a, b| {
        (a.priority, std::cmp::Reverse(a.weight), &a.target, a.port).cmp(&(
            b.priority,
            std::cmp::Reverse(b.weight),
            &b.target,
            b.port,
        ))
    });
    Some(Answer::Records(records))
}

/// A fresh query id (std's randomly keyed hasher, keys differing per call).
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u16
}

fn ask_udp(server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Answer> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    sock.send(query)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1232];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        sock.set_read_timeout(Some(left))?;
        let n = sock.recv(&mut buf)?;
        // Anything else on the socket (a late reply to another query) is
        // not an answer to this one.
        if let Some(answer) = decode_reply(&buf[..n], query) {
            return Ok(answer);
        }
    }
}

fn ask_tcp(server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply)?;
    decode_reply(&reply, query).ok_or_else(|| io::Error::other("a reply to another query"))
}

/// Looks up `name`'s SRV records (`name` as given, then with each search
/// domain), asking each name server in turn.
pub fn lookup_srv(conf: &ResolvConf, name: &str) -> Result<Vec<SrvTarget>, String> {
    let mut last = String::new();
    for fqdn in search_names(conf, name) {
        // A name too long with a search domain is skipped, as Go skips it.
        let Ok(query) = encode_query(query_id(), &fqdn) else {
            continue;
        };
        // As Go: each attempt asks every server in turn.
        'attempts: for _ in 0..conf.attempts {
            for ip in &conf.nameservers {
                let server = SocketAddr::new(*ip, 53);
                let answer = match ask_udp(server, &query, conf.timeout) {
                    Ok(Answer::Truncated) => ask_tcp(server, &query, conf.timeout),
                    other => other,
                };
                let why = match answer {
                    Ok(Answer::Records(r)) => return Ok(r),
                    // An authoritative "no": the next search name.
                    Ok(Answer::NoSuchHost) => {
                        last = format!("lookup {name} on {server}: no such host");
                        break 'attempts;
                    }
                    Ok(Answer::Truncated) | Ok(Answer::Misbehaving) => "server misbehaving".into(),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => "i/o timeout".into(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => "i/o timeout".into(),
                    Err(e) => e.to_string(),
                };
                last = format!("lookup {name} on {server}: {why}");
            }
        }
    }
    if last.is_empty() {
        last = format!("{name:?} is not a valid DNS name");
    }
    Err(last)
}

/// The names to ask for, in Go's order: a rooted name (ending in a dot) as
/// it is; otherwise with each search domain, and as it is first when it
/// has at least `ndots` dots, last when it has fewer.
fn search_names(conf: &ResolvConf, name: &str) -> Vec<String> {
    let bare = name.trim_end_matches('.');
    if name.ends_with('.') {
        return vec![bare.to_string()];
    }
    let searched = conf.search.iter().map(|s| format!("{bare}.{s}"));
    if bare.matches('.').count() >= conf.ndots {
        std::iter::once(bare.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(bare.to_string())).collect()
    }
}

/// The host and port of a URL (`http://host:port/...`).
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    Some(rest.split('/').next()?.to_string())
}

/// The founding members from SRV records, as `--initial-cluster`'s
/// `(name, peer URL)` pairs (a name may repeat: a member with two URLs).
/// `lookup` finds a service name's records, `resolve` a `host:port`'s
/// addresses (given as functions so that this is tested without DNS).
pub fn cluster_from_srv(
    domain: &str,
    service_name: &str,
    me: &str,
    advertised_peer_urls: &[String],
    lookup: &dyn Fn(&str) -> Result<Vec<SrvTarget>, String>,
    resolve: &dyn Fn(&str) -> io::Result<Vec<SocketAddr>>,
) -> Result<Vec<(String, String)>, String> {
    let mut mine: Vec<(SocketAddr, &str)> = Vec::new();
    for url in advertised_peer_urls {
        let hp = host_port(url).ok_or_else(|| format!("{url}: not a URL"))?;
        let addrs = resolve(&hp).map_err(|e| format!("resolving {hp}: {e}"))?;
        mine.extend(addrs.into_iter().map(|a| (a, url.as_str())));
    }
    let suffix = if service_name.is_empty() {
        String::new()
    } else {
        format!("-{service_name}")
    };
    let mut members = Vec::new();
    let mut errors = Vec::new();
    for (service, scheme) in [("etcd-server-ssl", "https"), ("etcd-server", "http")] {
        // Numbered per service, as etcd's: a member listed in both gets the
        // same placeholder twice, so its two URLs make one member.
        let mut placeholder = 0;
        let service = format!("{service}{suffix}");
        let records = match lookup(&format!("_{service}._tcp.{domain}")) {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("error querying DNS SRV records for _{service} {e}"));
                continue;
            }
        };
        for r in records {
            let host = format!("{}:{}", r.target, r.port);
            let addrs = match resolve(&host) {
                Ok(a) => a,
                Err(e) => {
                    errors.push(format!("resolving {host}: {e}"));
                    continue;
                }
            };
            let url = format!("{scheme}://{host}");
            match mine.iter().find(|(a, _)| addrs.contains(a)) {
                Some((_, own)) if !own.starts_with(&format!("{scheme}://")) => {
                    errors.push(format!("bootstrap at {url} from DNS for {service} has scheme mismatch with expected peer {own}"));
                }
                Some(_) => members.push((me.to_string(), url)),
                None => {
                    members.push((placeholder.to_string(), url));
                    placeholder += 1;
                }
            }
        }
    }
    if members.is_empty() {
        return Err(errors.join("; "));
    }
    for m in &members {
        tracing::info!(node = %format!("{}={}", m.0, m.1), "got bootstrap from DNS for etcd-server");
    }
    if !members.iter().any(|(n, _)| n == me) {
        return Err(format!(
            "cannot find local etcd member {me:?} in SRV records"
        ));
    }
    Ok(members)
}

/// `cluster_from_srv` with the system's DNS.
pub fn discover(
    domain: &str,
    service_name: &str,
    me: &str,
    advertised_peer_urls: &[String],
) -> Result<Vec<(String, String)>, String> {
    let conf = parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    cluster_from_srv(
        domain,
        service_name,
        me,
        advertised_peer_urls,
        &|name| lookup_srv(&conf, name),
        &|hp| hp.to_socket_addrs().map(Iterator::collect),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply with `records` as SRV answers, the targets compressed
    /// against the question where they share its domain.
    fn reply(id: u16, rcode: u16, name: &str, records: &[(u16, &str)]) -> Vec<u8> {
        let mut m = encode_query(id, name).unwrap();
        m[2..4].copy_from_slice(&(0x8180u16 | rcode).to_be_bytes());
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (port, target) in records {
            m.extend_from_slice(&[0xC0, 12]); // the question's name
            m.extend_from_slice(&TYPE_SRV.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&60u32.to_be_bytes());
            let mut rdata = vec![0, 10, 0, 5];
            rdata.extend_from_slice(&port.to_be_bytes());
            // `target` is one label before the question's domain.
            let (first, _) = target.split_once('.').unwrap();
            rdata.push(first.len() as u8);
            rdata.extend_from_slice(first.as_bytes());
            let offset = 12 + 1 + "_etcd-server".len() + 1 + "_tcp".len();
            rdata.extend_from_slice(&[0xC0, offset as u8]);
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(&rdata);
        }
        m
    }

    #[test]
    fn resolv_conf() {
        let c = parse_resolv_conf(
            "# comment\nnameserver 10.0.0.2\nnameserver ::1\nsearch a.example b.example.\noptions ndots:2 timeout:1 attempts:0\n",
        );
        assert_eq!(
            (c.timeout, c.attempts, c.ndots),
            (Duration::from_secs(1), 1, 2)
        );
        // Go's order of names: as given first when it has enough dots.
        assert_eq!(
            search_names(&c, "_s._tcp.example.com"),
            [
                "_s._tcp.example.com",
                "_s._tcp.example.com.a.example",
                "_s._tcp.example.com.b.example"
            ]
        );
        assert_eq!(
            search_names(&c, "_s.local"),
            ["_s.local.a.example", "_s.local.b.example", "_s.local"]
        );
        assert_eq!(search_names(&c, "x.y.z."), ["x.y.z"]);
        assert_eq!(
            c.nameservers,
            [
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(c.search, ["a.example", "b.example"]);
        let default = parse_resolv_conf("");
        assert_eq!(default.nameservers, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(
            (default.timeout, default.attempts),
            (Duration::from_secs(5), 2)
        );
    }

    #[test]
    fn srv_replies() {
        let name = "_etcd-server._tcp.example.com";
        let m = reply(
            7,
            0,
            name,
            &[(2380, "b.example.com"), (2381, "a.example.com")],
        );
        let q = encode_query(7, name).unwrap();
        let Some(Answer::Records(r)) = decode_reply(&m, &q) else {
            panic!("{:?}", decode_reply(&m, &q))
        };
        let targets: Vec<(&str, u16)> = r.iter().map(|r| (r.target.as_str(), r.port)).collect();
        assert_eq!(targets, [("a.example.com", 2381), ("b.example.com", 2380)]);
        // Another query's reply (another id, another name), NXDOMAIN, no
        // records, SERVFAIL, truncated.
        assert_eq!(decode_reply(&m, &encode_query(8, name).unwrap()), None);
        assert_eq!(
            decode_reply(
                &m,
                &encode_query(7, "_etcd-server._tcp.example.org").unwrap()
            ),
            None
        );
        let upper = encode_query(7, &name.to_uppercase()).unwrap();
        assert!(matches!(decode_reply(&m, &upper), Some(Answer::Records(_))));
        assert_eq!(
            decode_reply(&reply(7, 3, name, &[]), &q),
            Some(Answer::NoSuchHost)
        );
        assert_eq!(
            decode_reply(&reply(7, 0, name, &[]), &q),
            Some(Answer::NoSuchHost)
        );
        assert_eq!(
            decode_reply(&reply(7, 2, name, &[]), &q),
            Some(Answer::Misbehaving)
        );
        let mut tc = reply(7, 0, name, &[]);
        tc[2] |= 0x02;
        assert_eq!(decode_reply(&tc, &q), Some(Answer::Truncated));
        // Cut short anywhere, or a pointer loop: never a panic.
        for n in 0..m.len() {
            let _ = decode_reply(&m[..n], &q);
        }
        let mut looped = m.clone();
        let at = looped.len() - 2;
        looped[at] = 0xC0;
        looped[at + 1] = at as u8;
        assert_eq!(decode_reply(&looped, &q), Some(Answer::Misbehaving));
        assert!(encode_query(1, "a..b").is_err());
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_from_records() {
        let lookup = |name: &str| match name {
            "_etcd-server._tcp.example.com" => Ok(vec![
                SrvTarget {
                    priority: 0,
                    weight: 0,
                    port: 2380,
                    target: "m1.example.com".into(),
                },
                SrvTarget {
                    priority: 0,
                    weight: 0,
                    port: 2380,
                    target: "m2.example.com".into(),
                },
                SrvTarget {
                    priority: 0,
                    weight: 0,
                    port: 2380,
                    target: "m3.example.com".into(),
                },
            ]),
            _ => Err(format!("lookup {name} on 10.0.0.2:53: no such host")),
        };
        let resolve = |hp: &str| -> io::Result<Vec<SocketAddr>> {
            Ok(match hp {
                "m1.example.com:2380" => vec![addr("10.0.0.1:2380")],
                "m2.example.com:2380" | "10.0.0.2:2380" => vec![addr("10.0.0.2:2380")],
                "m3.example.com:2380" => vec![addr("10.0.0.3:2380")],
                _ => return Err(io::Error::other("no such host")),
            })
        };
        // This member advertises its address; the record names it.
        let got = cluster_from_srv(
            "example.com",
            "",
            "two",
            &["http://10.0.0.2:2380".into()],
            &lookup,
            &resolve,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("0".to_string(), "http://m1.example.com:2380".to_string()),
                ("two".into(), "http://m2.example.com:2380".into()),
                ("1".into(), "http://m3.example.com:2380".into()),
            ]
        );
        // Not among the records.
        let err = cluster_from_srv(
            "example.com",
            "",
            "x",
            &["http://m9.example.com:2380".into()],
            &lookup,
            &|hp| match hp {
                "m9.example.com:2380" => Ok(vec![addr("10.0.0.9:2380")]),
                _ => resolve(hp),
            },
        )
        .unwrap_err();
        assert_eq!(err, "cannot find local etcd member \"x\" in SRV records");
        // An https peer found among http records.
        let err = cluster_from_srv(
            "example.com",
            "",
            "two",
            &["https://10.0.0.2:2380".into()],
            &lookup,
            &|hp| resolve(hp),
        )
        .unwrap_err();
        assert_eq!(err, "cannot find local etcd member \"two\" in SRV records");
        // No records at all: both lookups' errors.
        let err = cluster_from_srv(
            "other.org",
            "prod",
            "two",
            &["http://10.0.0.2:2380".into()],
            &lookup,
            &resolve,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "error querying DNS SRV records for _etcd-server-ssl-prod lookup _etcd-server-ssl-prod._tcp.other.org on 10.0.0.2:53: no such host; \
             error querying DNS SRV records for _etcd-server-prod lookup _etcd-server-prod._tcp.other.org on 10.0.0.2:53: no such host"
        );
    }
}
