//! `wasi:sockets/tcp-create-socket` linked over wasmtime-wasi's own, so a
//! guest's TCP sockets count among its open files.
//!
//! wasmtime-wasi makes the host socket when the guest creates one, before
//! any connection the `--allow-net` rules could refuse: without a count, a
//! tenant with one rule could take every descriptor of the process, and
//! the server could accept no more connections. A socket is counted from
//! its creation until the guest drops it (seen at the end of the request,
//! or at the next creation) or the instance ends.

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddressFamily, Network};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::{SocketError, SocketResult};
use wasmtime_wasi::sockets::{TcpSocket, WasiSocketsCtxView};

use crate::runtime::quota_fs::Quotas;

/// The store data the shadowing `tcp-create-socket` sees.
pub struct SocketSlotsView<'a> {
    /// wasmtime-wasi's own view, which makes the sockets.
    pub sockets: WasiSocketsCtxView<'a>,
    /// The instance's open-file count.
    pub quotas: &'a mut Quotas,
}

struct SocketSlots;

impl HasData for SocketSlots {
    type Data<'a> = SocketSlotsView<'a>;
}

/// Link `wasi:sockets/tcp-create-socket` over wasmtime-wasi's, which must
/// be in `linker` already (with shadowing allowed).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SocketSlotsView<'_>,
) -> anyhow::Result<()> {
    tcp_create_socket::add_to_linker::<T, SocketSlots>(linker, view)?;
    Ok(())
}

impl SocketSlotsView<'_> {
    /// Give back the counts of the sockets the guest dropped.
    pub fn give_back_closed(&mut self) {
        let table = &*self.sockets.table;
        // A table index now holding something else, or nothing, is a
        // socket the guest dropped.
        self.quotas
            .forget_sockets(|rep| table.get(&Resource::<TcpSocket>::new_own(rep)).is_err());
    }
}

impl tcp_create_socket::Host for SocketSlotsView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        self.give_back_closed();
        let slot = self.quotas.take_socket().ok_or(ErrorCode::NewSocketLimit)?;
        let socket = tcp_create_socket::Host::create_tcp_socket(&mut self.sockets, family)?;
        self.quotas.hold_socket(socket.rep(), slot);
        Ok(socket)
    }
}

// The bindings ask for `network` too (its types); it is wasmtime-wasi's,
// unchanged.
impl network::Host for SocketSlotsView<'_> {
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

impl network::HostNetwork for SocketSlotsView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}
