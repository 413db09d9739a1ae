//! `wasi:sockets/tcp` linked over wasmtime-wasi's, so that asking a socket
//! in the wrong state for its address or an option is an `OSError` for the
//! app, not the end of its instance.
//!
//! wasmtime-wasi answers `local-address`, `remote-address` and the option
//! getters and setters with `invalid-state` on a socket whose connect
//! failed or is still under way. wasi-libc (in CPython's WASI build) calls
//! `abort()` on that code, trusting its own state checks, which let those
//! calls through: `repr()` of such a socket, its `getsockname()`, or just
//! dropping it unclosed (the `ResourceWarning` formats its `repr()`) crashed
//! the instance mid-request. Those calls get `invalid-argument` (EINVAL,
//! which `socket.__repr__` and most code catch) instead; every other call
//! is wasmtime-wasi's, unchanged, but for a connected socket's output
//! stream, which finishes its sends after a close (`tcp_sends`).

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, HostTcpSocket, ShutdownType};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, SocketResult};
use wasmtime_wasi::sockets::TcpSocket;

use crate::runtime::outbound::SocketsView;
use crate::runtime::quota_fs::NoStream;
use crate::runtime::tcp_sends::Sends;

struct SocketStates;

impl HasData for SocketStates {
    type Data<'a> = SocketsView<'a>;
}

/// Link `wasi:sockets/tcp` over wasmtime-wasi's, which must be in `linker`
/// already (with shadowing allowed).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SocketsView<'_>,
) -> anyhow::Result<()> {
    tcp::add_to_linker::<T, SocketStates>(linker, view)?;
    Ok(())
}

/// `invalid-state` as EINVAL: a question the socket cannot answer yet.
fn answerable<T>(r: SocketResult<T>) -> SocketResult<T> {
    r.map_err(|e| match e.downcast_ref() {
        Some(ErrorCode::InvalidState) => ErrorCode::InvalidArgument.into(),
        _ => e,
    })
}

impl tcp::Host for SocketsView<'_> {}

/// Calls passed through; `answerable` marks those whose `invalid-state`
/// wasi-libc would abort on.
macro_rules! pass {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $(, $wrap:ident)?;)*) => {
        $(
            fn $name(&mut self, this: Resource<TcpSocket>, $($arg: $ty),*) -> $ret {
                let r = HostTcpSocket::$name(&mut self.sockets, this, $($arg),*);
                $( let r = $wrap(r); )?
                r
            }
        )*
    };
}

impl HostTcpSocket for SocketsView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        HostTcpSocket::start_bind(&mut self.sockets, this, network, local_address).await
    }

    async fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        remote_address: IpSocketAddress,
    ) -> SocketResult<()> {
        HostTcpSocket::start_connect(&mut self.sockets, this, network, remote_address).await
    }

    /// wasmtime-wasi's streams, the output one finishing its sends after
    /// the guest closes it (`tcp_sends`).
    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let slot = self.quotas.socket_slot(this.rep());
        let rep = this.rep();
        let (input, output) = HostTcpSocket::finish_connect(&mut self.sockets, this)?;
        let peer = HostTcpSocket::remote_address(&mut self.sockets, Resource::new_borrow(rep))
            .map_or_else(
                |_| "a peer".to_owned(),
                |a| std::net::SocketAddr::from(a).to_string(),
            );
        let stream = self.sockets.table.get_mut(&output)?;
        let inner = std::mem::replace(stream, Box::new(NoStream));
        *stream = Box::new(Sends::new(inner, peer, slot));
        Ok((input, output))
    }

    pass! {
        finish_bind() -> SocketResult<()>;
        start_listen() -> SocketResult<()>;
        finish_listen() -> SocketResult<()>;
        accept() -> SocketResult<(
            Resource<TcpSocket>,
            Resource<DynInputStream>,
            Resource<DynOutputStream>,
        )>;
        local_address() -> SocketResult<IpSocketAddress>, answerable;
        remote_address() -> SocketResult<IpSocketAddress>, answerable;
        is_listening() -> wasmtime::Result<bool>;
        address_family() -> wasmtime::Result<IpAddressFamily>;
        set_listen_backlog_size(value: u64) -> SocketResult<()>, answerable;
        keep_alive_enabled() -> SocketResult<bool>, answerable;
        set_keep_alive_enabled(value: bool) -> SocketResult<()>, answerable;
        keep_alive_idle_time() -> SocketResult<u64>, answerable;
        set_keep_alive_idle_time(value: u64) -> SocketResult<()>, answerable;
        keep_alive_interval() -> SocketResult<u64>, answerable;
        set_keep_alive_interval(value: u64) -> SocketResult<()>, answerable;
        keep_alive_count() -> SocketResult<u32>, answerable;
        set_keep_alive_count(value: u32) -> SocketResult<()>, answerable;
        hop_limit() -> SocketResult<u8>, answerable;
        set_hop_limit(value: u8) -> SocketResult<()>, answerable;
        receive_buffer_size() -> SocketResult<u64>, answerable;
        set_receive_buffer_size(value: u64) -> SocketResult<()>, answerable;
        send_buffer_size() -> SocketResult<u64>, answerable;
        set_send_buffer_size(value: u64) -> SocketResult<()>, answerable;
        subscribe() -> wasmtime::Result<Resource<DynPollable>>;
        shutdown(how: ShutdownType) -> SocketResult<()>, answerable;
        drop() -> wasmtime::Result<()>;
    }
}
