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
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::SocketResult;
use wasmtime_wasi::sockets::TcpSocket;

use crate::runtime::outbound::SocketsView;

struct SocketSlots;

impl HasData for SocketSlots {
    type Data<'a> = SocketsView<'a>;
}

/// Link `wasi:sockets/tcp-create-socket` over wasmtime-wasi's, which must
/// be in `linker` already (with shadowing allowed).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SocketsView<'_>,
) -> anyhow::Result<()> {
    tcp_create_socket::add_to_linker::<T, SocketSlots>(linker, view)?;
    Ok(())
}

impl SocketsView<'_> {
    /// Give back the counts of the sockets the guest dropped.
    pub fn give_back_closed(&mut self) {
        let table = &*self.sockets.table;
        // A table index now holding something else, or nothing, is a
        // socket the guest dropped.
        self.quotas
            .forget_sockets(|rep| table.get(&Resource::<TcpSocket>::new_own(rep)).is_err());
    }
}

impl tcp_create_socket::Host for SocketsView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        self.give_back_closed();
        let slot = self.quotas.take_socket().ok_or(ErrorCode::NewSocketLimit)?;
        let socket = tcp_create_socket::Host::create_tcp_socket(&mut self.sockets, family)?;
        self.quotas.hold_socket(socket.rep(), slot);
        Ok(socket)
    }
}
