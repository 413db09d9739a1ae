//! Where a guest may connect: the `--allow-net` rules, matched on names
//! when the guest looks one up and on addresses when it connects, the
//! addresses each instance got from allowed names, and per-app counts.
//!
//! Name lookups go through the host (`wasi:sockets/ip-name-lookup`, linked
//! here over wasmtime-wasi's own): a name no rule covers is refused before
//! any DNS query leaves the host, so a tenant cannot leak data through
//! lookups of names it makes up. A connection passes when an IP rule names
//! its address and port, or when this instance resolved the address from a
//! name whose rule allows the port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{DynPollable, SocketError};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

use crate::config::{NetHost, NetRule};
use crate::metrics::OutboundMetrics;
use crate::runtime::quota_fs::Quotas;

/// Addresses one instance may remember from its lookups; past it they are
/// forgotten (a connection to one needs a fresh lookup).
const MAX_RESOLVED: usize = 4096;
/// Lookups one instance may have under way: each holds one of the host's
/// blocking threads, which every tenant shares.
const MAX_LOOKUPS: usize = 16;

/// One app's rules and counters, shared by its instances.
pub struct Outbound {
    app: Arc<str>,
    rules: Vec<NetRule>,
    /// Connections, lookups and TLS bytes, for metrics.
    pub metrics: OutboundMetrics,
}

impl Outbound {
    /// The rules of app `app`.
    pub fn new(app: &Arc<str>, rules: Vec<NetRule>) -> Arc<Self> {
        Arc::new(Outbound {
            app: app.clone(),
            rules,
            metrics: OutboundMetrics::new(app),
        })
    }

    /// Whether the app may connect anywhere at all.
    pub fn any(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The ports of the rules that cover `name` (empty: not allowed;
    /// `None` in it: any port).
    fn ports_for(&self, name: &str) -> Vec<Option<u16>> {
        self.rules
            .iter()
            .filter(|r| match &r.host {
                NetHost::Ip(_) => false,
                NetHost::Name(n) => n == name,
                NetHost::Subdomains(d) => name
                    .strip_suffix(d.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            })
            .map(|r| r.port)
            .collect()
    }

    fn ip_allowed(&self, addr: SocketAddr) -> bool {
        self.rules
            .iter()
            .any(|r| r.host == NetHost::Ip(addr.ip()) && r.port.is_none_or(|p| p == addr.port()))
    }
}

/// One instance's view of the network: its app's rules and the addresses
/// it resolved from allowed names.
pub struct InstanceNet {
    outbound: Arc<Outbound>,
    state: Mutex<Resolved>,
}

#[derive(Default)]
struct Resolved {
    /// Address → the ports the names it came from allow.
    addrs: HashMap<IpAddr, Vec<Option<u16>>>,
    /// Lookups under way: the stream's handle → the ports its name allows.
    streams: HashMap<u32, Vec<Option<u16>>>,
}

impl InstanceNet {
    /// A new instance of the app with `outbound`'s rules.
    pub fn new(outbound: Arc<Outbound>) -> Arc<Self> {
        Arc::new(InstanceNet {
            outbound,
            state: Mutex::default(),
        })
    }

    /// The check wasmtime-wasi runs before every bind and connect: only
    /// TCP connections, only where the rules say.
    pub fn check(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        if !matches!(use_, SocketAddrUse::TcpConnect) {
            return false;
        }
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let ok = self.outbound.ip_allowed(addr)
            || self
                .state
                .lock()
                .expect("resolved lock")
                .addrs
                .get(&addr.ip())
                .is_some_and(|ports| ports.iter().any(|p| p.is_none_or(|p| p == addr.port())));
        self.outbound.metrics.connection(ok);
        if !ok {
            tracing::debug!(app = %self.outbound.app, "refused a connection to {addr}: not allowed by --allow-net");
        }
        ok
    }

    fn resolved(&self, stream: u32, ip: IpAddr) {
        let mut state = self.state.lock().expect("resolved lock");
        let Some(ports) = state.streams.get(&stream).cloned() else {
            return;
        };
        if state.addrs.len() >= MAX_RESOLVED && !state.addrs.contains_key(&ip) {
            state.addrs.clear();
        }
        let known = state.addrs.entry(ip).or_default();
        for p in ports {
            if !known.contains(&p) {
                known.push(p);
            }
        }
    }
}

/// The store data the shadowing `wasi:sockets` interfaces see: this
/// module's `ip-name-lookup` and `socket_slots`' `tcp-create-socket`.
pub struct SocketsView<'a> {
    /// wasmtime-wasi's own view, which does the work.
    pub sockets: WasiSocketsCtxView<'a>,
    /// The instance's rules and resolved addresses.
    pub net: &'a InstanceNet,
    /// The instance's open-file count, which its sockets take part of.
    pub quotas: &'a mut Quotas,
}

struct NameLookup;

impl HasData for NameLookup {
    type Data<'a> = SocketsView<'a>;
}

/// Link `wasi:sockets/ip-name-lookup` over wasmtime-wasi's, which must be
/// in `linker` already (with shadowing allowed).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SocketsView<'_>,
) -> anyhow::Result<()> {
    ip_name_lookup::add_to_linker::<T, NameLookup>(linker, view)?;
    Ok(())
}

// The shadowing interfaces' bindings ask for `network` too (its types); it
// is wasmtime-wasi's, unchanged.
impl network::Host for SocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for SocketsView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

impl ip_name_lookup::Host for SocketsView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        // An address literal makes no query: the connect check decides.
        let literal = name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok());
        if literal {
            return ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name);
        }
        let ports = crate::config::host_name(&name)
            .map(|n| self.net.outbound.ports_for(&n))
            .unwrap_or_default();
        let metrics = &self.net.outbound.metrics;
        if ports.is_empty() {
            metrics.lookup(false);
            tracing::debug!(app = %self.net.outbound.app, "refused a lookup of {name:?}: no --allow-net rule names it");
            return Err(ErrorCode::AccessDenied.into());
        }
        if self.net.state.lock().expect("resolved lock").streams.len() >= MAX_LOOKUPS {
            return Err(ErrorCode::TemporaryResolverFailure.into());
        }
        metrics.lookup(true);
        let stream = ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name)?;
        self.net
            .state
            .lock()
            .expect("resolved lock")
            .streams
            .insert(stream.rep(), ports);
        Ok(stream)
    }
}

impl HostResolveAddressStream for SocketsView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let rep = stream.rep();
        let next = HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)?;
        if let Some(addr) = &next {
            let ip: IpAddr = match *addr {
                IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
                IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
            };
            self.net.resolved(rep, ip.to_canonical());
        }
        Ok(next)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.net
            .state
            .lock()
            .expect("resolved lock")
            .streams
            .remove(&stream.rep());
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;

    fn net(rules: &[&str]) -> Arc<InstanceNet> {
        let rules = rules.iter().map(|r| parse_net(r).unwrap()).collect();
        InstanceNet::new(Outbound::new(&Arc::from("unit-net"), rules))
    }

    #[test]
    fn names_match_exactly_or_under_a_wildcard() {
        let n = net(&["api.example.com:443", "*.internal:*", "10.0.0.5:5432"]);
        let o = &n.outbound;
        assert_eq!(o.ports_for("api.example.com"), vec![Some(443)]);
        assert!(o.ports_for("example.com").is_empty());
        assert!(o.ports_for("x.api.example.com").is_empty());
        assert_eq!(o.ports_for("db.internal"), vec![None]);
        assert_eq!(o.ports_for("a.b.internal"), vec![None]);
        assert!(o.ports_for("internal").is_empty());
        assert!(o.ports_for("evilinternal").is_empty());
        assert!(o.ports_for("10.0.0.5").is_empty());
    }

    #[test]
    fn connections_need_an_ip_rule_or_an_address_resolved_from_an_allowed_name() {
        let n = net(&["api.example.com:443", "10.0.0.5:5432"]);
        let connect = |a: &str| n.check(a.parse().unwrap(), SocketAddrUse::TcpConnect);
        assert!(connect("10.0.0.5:5432"));
        assert!(!connect("10.0.0.5:5433"));
        assert!(!n.check("10.0.0.5:5432".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!connect("192.0.2.7:443"));
        // The name resolved to 192.0.2.7: that address, on the name's port.
        n.state.lock().unwrap().streams.insert(7, vec![Some(443)]);
        n.resolved(7, "192.0.2.7".parse().unwrap());
        assert!(connect("192.0.2.7:443"));
        assert!(!connect("192.0.2.7:80"));
        // IPv4-mapped IPv6 is the same address.
        assert!(connect("[::ffff:192.0.2.7]:443"));
        // A stream that was not an allowed lookup records nothing.
        n.resolved(8, "192.0.2.8".parse().unwrap());
        assert!(!connect("192.0.2.8:443"));
    }
}
