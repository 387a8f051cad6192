//! The open-relay guard: how much public address space the networks that may relay
//! (`smtp.allowed_networks` and every `[[smtp.senders]]` entry, whatever its domains)
//! cover together. Refusing only `/0` lets `0.0.0.0/1` + `128.0.0.0/1` through, so the
//! networks are merged (overlaps count once), the non-public ranges are taken out, and
//! what is left is compared with a budget per family.
//!
//! IPv6 ranges that carry an IPv4 address (IPv4-mapped, SIIT, NAT64, 6to4, Teredo) count as
//! the IPv4 space they stand for: `::ffff:0:0/96` grants every IPv4 host, not "a /96".
//!
//! Non-public, so "all private networks" stays a valid config: loopback, RFC 1918,
//! CGNAT (RFC 6598), link-local and, for IPv6, ULA. Nobody on the Internet can connect
//! from these without already being inside the organisation's network.

use super::{ConfigError, SmtpConfig};
use ipnet::IpNet;

/// IPv4 ranges that do not count: loopback, RFC 1918, CGNAT (RFC 6598), link-local.
const PRIVATE_V4: [(u32, u8); 6] = [
    (0x7f00_0000, 8),  // 127.0.0.0/8
    (0x0a00_0000, 8),  // 10.0.0.0/8
    (0xac10_0000, 12), // 172.16.0.0/12
    (0xc0a8_0000, 16), // 192.168.0.0/16
    (0x6440_0000, 10), // 100.64.0.0/10
    (0xa9fe_0000, 16), // 169.254.0.0/16
];

/// IPv6 ranges that do not count: loopback, link-local, ULA.
const PRIVATE_V6: [(u128, u8); 3] = [
    (1, 128),                 // ::1/128
    (0xfe80_u128 << 112, 10), // fe80::/10
    (0xfc00_u128 << 112, 7),  // fc00::/7
];

/// IPv6 prefixes that embed an IPv4 address: (prefix, length, the bit where that address
/// starts, whether it is stored inverted).
const EMBEDS_V4: [(u128, u8, u8, bool); 5] = [
    (0xffff_u128 << 32, 96, 96, false), // ::ffff:0:0/96, IPv4-mapped (RFC 4291)
    (0xffff_u128 << 48, 96, 96, false), // ::ffff:0:0:0/96, SIIT translated (RFC 2765)
    (0x0064_ff9b_u128 << 96, 96, 96, false), // 64:ff9b::/96, NAT64 well-known (RFC 6052)
    (0x2002_u128 << 112, 16, 16, false), // 2002::/16, 6to4 (RFC 3056)
    // 2001::/32, Teredo (RFC 4380): the client's IPv4 address, inverted, in the last 32
    // bits, so any network of 2^32 or more Teredo addresses reaches every IPv4 host.
    (0x2001_0000_u128 << 96, 32, 96, true),
];

/// An inclusive range of addresses; IPv4 ones use the low 32 bits.
type Range = (u128, u128);

fn block(start: u128, prefix: u8, bits: u8) -> Range {
    let host = bits - prefix;
    let size_minus_one = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    (
        start & !size_minus_one,
        (start & !size_minus_one) | size_minus_one,
    )
}

/// What one set of networks grants, split by family: IPv4 (including the IPv4 hosts
/// behind embedding prefixes) and native IPv6.
#[derive(Default)]
struct Space {
    v4: Vec<Range>,
    v6: Vec<Range>,
    /// Every IPv6 network as written, embedding prefixes included (for the whole-space test).
    v6_written: Vec<Range>,
}

impl Space {
    fn add(&mut self, net: &IpNet) {
        match net {
            IpNet::V4(n) => self
                .v4
                .push(block(u32::from(n.network()).into(), n.prefix_len(), 32)),
            IpNet::V6(n) => {
                let r = block(u128::from(n.network()), n.prefix_len(), 128);
                self.v6_written.push(r);
                let mut native = vec![r];
                for (prefix, len, at, inverted) in EMBEDS_V4 {
                    let e = block(prefix, len, 128);
                    // Two CIDR blocks are disjoint or one holds the other.
                    let inner = if r.0 >= e.0 && r.1 <= e.1 {
                        Some((r.0, n.prefix_len()))
                    } else if e.0 >= r.0 && e.1 <= r.1 {
                        Some((e.0, len))
                    } else {
                        None
                    };
                    if let Some((start, p)) = inner {
                        let mut v4 = (start >> (96 - u32::from(at))) & 0xffff_ffff;
                        if inverted {
                            v4 = !v4 & 0xffff_ffff;
                        }
                        let v4_prefix = p.saturating_sub(at).min(32);
                        self.v4.push(block(v4, v4_prefix, 32));
                        native = subtract(native, &[e]);
                    }
                }
                self.v6.extend(native);
            }
        }
    }

    /// Public addresses granted: (IPv4, IPv6), each saturating at `u128::MAX`.
    fn public(&self) -> (u128, u128) {
        let v4_private: Vec<Range> = PRIVATE_V4
            .iter()
            .map(|&(s, p)| block(s.into(), p, 32))
            .collect();
        let v6_private: Vec<Range> = PRIVATE_V6.iter().map(|&(s, p)| block(s, p, 128)).collect();
        (
            count(&subtract(merge(self.v4.clone()), &v4_private)),
            count(&subtract(merge(self.v6.clone()), &v6_private)),
        )
    }

    /// Whether every address of a family is granted, private ones included; with
    /// whether that family is IPv6.
    fn whole(&self) -> Option<(&'static str, bool)> {
        let covers = |ranges: &[Range], max: u128| merge(ranges.to_vec()) == [(0, max)];
        if covers(&self.v4, u32::MAX.into()) {
            Some(("every IPv4 address", false))
        } else if covers(&self.v6_written, u128::MAX) {
            Some(("every IPv6 address", true))
        } else {
            None
        }
    }
}

fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.0 <= last.1.saturating_add(1) => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

fn subtract(ranges: Vec<Range>, holes: &[Range]) -> Vec<Range> {
    let mut out = ranges;
    for &(hs, he) in holes {
        let mut next = Vec::with_capacity(out.len() + 1);
        for (s, e) in out {
            if he < s || hs > e {
                next.push((s, e));
                continue;
            }
            if s < hs {
                next.push((s, hs - 1));
            }
            if e > he {
                next.push((he + 1, e));
            }
        }
        out = next;
    }
    out
}

fn count(ranges: &[Range]) -> u128 {
    ranges.iter().fold(0u128, |sum, &(s, e)| {
        sum.saturating_add((e - s).saturating_add(1))
    })
}

/// "a /7" for the smallest block holding `n` addresses of a `bits`-bit family.
fn as_prefix(n: u128, bits: u8) -> String {
    let log2 = if n <= 1 {
        0
    } else {
        128 - (n - 1).leading_zeros()
    };
    format!("/{}", u32::from(bits).saturating_sub(log2))
}

/// The networks that grant relaying, each with the name of its config field.
fn granting(smtp: &SmtpConfig) -> Vec<(String, &IpNet)> {
    let mut out: Vec<(String, &IpNet)> = smtp
        .allowed_networks
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("smtp.allowed_networks[{i}]"), n))
        .collect();
    for (i, policy) in smtp.senders.iter().enumerate() {
        for (j, n) in policy.networks.iter().enumerate() {
            out.push((format!("smtp.senders[{i}].networks[{j}]"), n));
        }
    }
    out
}

/// Refuses networks that together grant relaying to the whole space of a family, or to
/// more public addresses than `smtp.public_relay_limit_ipv4` / `_ipv6` allow.
pub(super) fn check(smtp: &SmtpConfig) -> Result<(), ConfigError> {
    for (field, limit, bits) in [
        (
            "smtp.public_relay_limit_ipv4",
            smtp.public_relay_limit_ipv4,
            32,
        ),
        (
            "smtp.public_relay_limit_ipv6",
            smtp.public_relay_limit_ipv6,
            128,
        ),
    ] {
        if !(1..=bits).contains(&limit) {
            return Err(ConfigError::new(
                field,
                format!("must be a prefix length from 1 to {bits} (0 would allow an open relay)"),
            ));
        }
    }
    let nets = granting(smtp);
    let mut all = Space::default();
    for (_, net) in &nets {
        all.add(net);
    }
    // Name the entries that bring the most public space of the family at fault, so the
    // operator knows what to narrow.
    let culprits = |ipv6: bool| {
        let mut named: Vec<(u128, String)> = nets
            .iter()
            .filter_map(|(field, net)| {
                let mut one = Space::default();
                one.add(net);
                let (v4, v6) = one.public();
                let size = if ipv6 { v6 } else { v4 };
                (size > 0).then(|| (size, format!("{field} = {net}")))
            })
            .collect();
        named.sort_by_key(|n| std::cmp::Reverse(n.0));
        let list: Vec<String> = named.into_iter().take(4).map(|(_, s)| s).collect();
        list.join(", ")
    };
    let field = "smtp.allowed_networks and smtp.senders";
    if let Some((what, ipv6)) = all.whole() {
        // The private ranges count here: name the entries that reach the family.
        let named: Vec<String> = nets
            .iter()
            .filter(|(_, net)| {
                let mut one = Space::default();
                one.add(net);
                if ipv6 {
                    !one.v6_written.is_empty()
                } else {
                    !one.v4.is_empty()
                }
            })
            .take(4)
            .map(|(field, net)| format!("{field} = {net}"))
            .collect();
        return Err(ConfigError::new(
            field,
            format!(
                "together they let {what} relay: that is an open relay ({}); list your own networks or use AUTH",
                named.join(", ")
            ),
        ));
    }
    let (v4, v6) = all.public();
    for (family, got, limit, bits, ipv6) in [
        ("IPv4", v4, smtp.public_relay_limit_ipv4, 32u8, false),
        ("IPv6", v6, smtp.public_relay_limit_ipv6, 128, true),
    ] {
        if got > 1u128 << (bits - limit) {
            return Err(ConfigError::new(
                field,
                format!(
                    "together they let {got} public {family} addresses relay (as many as a {}), more than one /{limit} \
                     (smtp.public_relay_limit_{}): that is close to an open relay ({}); \
                     list your own networks or use AUTH",
                    as_prefix(got, bits),
                    if ipv6 { "ipv6" } else { "ipv4" },
                    culprits(ipv6)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(allowed: &[&str], senders: &[&[&str]]) -> SmtpConfig {
        SmtpConfig {
            allowed_networks: allowed.iter().map(|n| n.parse().unwrap()).collect(),
            senders: senders
                .iter()
                .map(|nets| super::super::SenderPolicyConfig {
                    networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
                    from_domains: vec!["*".into()],
                })
                .collect(),
            ..SmtpConfig::default()
        }
    }

    #[test]
    fn split_halves_of_the_whole_space_are_refused_in_every_list() {
        let open: &[(&[&str], &[&[&str]])] = &[
            (&["0.0.0.0/0"], &[]),
            (&["::/0"], &[]),
            (&["0.0.0.0/1", "128.0.0.0/1"], &[]),
            (&["::/1", "8000::/1"], &[]),
            (&["0.0.0.0/1"], &[&["128.0.0.0/1"]]),
            (&[], &[&["0.0.0.0/1"], &["128.0.0.0/1"]]),
            (&[], &[&["::/1", "8000::/1"]]),
            (&["127.0.0.0/8"], &[&["::/0"]]),
            // Two public /8s, or a /7 cut into overlapping pieces.
            (&["11.0.0.0/8", "12.0.0.0/8"], &[]),
            (&["2.0.0.0/7", "2.0.0.0/8", "3.0.0.0/9"], &[]),
            // IPv6 ranges that stand for IPv4 hosts.
            (&["::ffff:0:0/96"], &[]),
            (&["::ffff:0.0.0.0/95"], &[]),
            (&["64:ff9b::/96"], &[]),
            (&["2002::/16"], &[]),
            (&["2001::/32"], &[]),
            (&["2001:0:4136:e378::/64"], &[]),
            (&["::ffff:11.0.0.0/104", "12.0.0.0/8"], &[]),
            // A /31 of native IPv6 is far more than a /32.
            (&["2001:db8::/31"], &[]),
        ];
        for (allowed, senders) in open {
            let err = check(&smtp(allowed, senders));
            assert!(err.is_err(), "{allowed:?} {senders:?} passed");
        }
    }

    #[test]
    fn private_networks_and_a_budget_of_public_space_stay_valid() {
        let fine: &[(&[&str], &[&[&str]])] = &[
            (
                &[
                    "127.0.0.0/8",
                    "::1/128",
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "169.254.0.0/16",
                    "fc00::/7",
                    "fe80::/10",
                    "::ffff:10.0.0.0/104",
                ],
                &[],
            ),
            // One public /8 plus private space, overlapping entries counted once.
            (
                &["11.0.0.0/8", "11.0.0.0/9", "10.0.0.0/7"],
                &[&["11.1.0.0/16"]],
            ),
            (&["2001:db8::/32"], &[&["2001:db8:1::/48"]]),
            (&["198.51.100.0/24", "::ffff:198.51.100.0/120"], &[]),
            // One Teredo client: one IPv4 address (inverted in the last 32 bits).
            (&["2001:0:4136:e378:8000:63bf:3ccd:9bf8/128"], &[]),
        ];
        for (allowed, senders) in fine {
            let r = check(&smtp(allowed, senders));
            assert!(r.is_ok(), "{allowed:?} {senders:?}: {}", r.unwrap_err());
        }
    }

    #[test]
    fn the_budget_is_configurable_but_never_the_whole_space() {
        let mut s = smtp(&["11.0.0.0/8", "12.0.0.0/8"], &[]);
        s.public_relay_limit_ipv4 = 7;
        check(&s).unwrap();
        s.public_relay_limit_ipv4 = 0;
        assert!(check(&s).is_err());
        let mut s = smtp(&["0.0.0.0/1", "128.0.0.0/1"], &[]);
        s.public_relay_limit_ipv4 = 1;
        let err = check(&s).unwrap_err();
        assert!(err.problem.contains("every IPv4 address"), "{err}");
        assert!(
            err.problem
                .contains("smtp.allowed_networks[1] = 128.0.0.0/1"),
            "{err}"
        );
    }
}
