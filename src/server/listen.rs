//! The public listening sockets, and which event loop gets which connection.
//!
//! One event loop (`server.threads = 1`) accepts from one socket. Several loops split the
//! connections one of two ways, chosen once at start by [`bind`]:
//!
//! * **Steered**, when there is one loop per CPU this process may run on (the default,
//!   `server.threads = 0`, on a machine or container that gives the process whole CPUs) and the
//!   kernel is Linux 6.1 or later: each loop has its own `SO_REUSEPORT` socket on the address,
//!   runs on a thread pinned to one CPU, and its socket names that CPU in `SO_INCOMING_CPU`. The
//!   kernel then hands a new connection to the socket of the CPU that took the client's SYN, so
//!   a client's requests are received, answered and woken on one CPU with no wake-up crossing to
//!   the other: on the 2-vCPU machines of BENCHMARKS.md that is what separates nginx's fast runs
//!   from its slow ones. The pinned loops' helper threads (transforms, file I/O) are not pinned:
//!   they may run on every CPU, as before.
//! * **Shared**, otherwise: every loop accepts from one socket and the kernel wakes whichever loop
//!   waits. Correct everywhere, only not steered.
//!
//! A second service started on the address of a steered one fails to start, as it would with one
//! plain socket: the address is first taken by a socket without `SO_REUSEPORT`, which any
//! listener already there refuses.

use crate::start::StartError;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use socket2::{Domain, Protocol, Socket, Type};

/// Connections a listening socket queues before the loop accepts them (tokio's default).
const BACKLOG: i32 = 1024;

/// The public listener, split over the event loops.
pub(super) struct Sockets {
    /// The socket of the loop that runs on the starting thread's runtime; `None` when steered
    /// (every loop is then a pinned thread of its own).
    pub here: Option<TcpListener>,
    /// The sockets of the loops that get threads of their own, with the CPU each is pinned to.
    pub threads: Vec<(TcpListener, Option<usize>)>,
    /// The CPUs this process may use, to unpin the loops' helper threads; `None` when not steered.
    pub all_cpus: Option<CpuSet>,
}

/// Binds `listen` for `loops` event loops, steered when [`steerable`] allows it.
pub(super) fn bind(listen: &str, loops: usize) -> Result<Sockets, StartError> {
    // An address still held (the old instance stopping) or not assigned yet is temporary.
    let fail = |e: io::Error| {
        let message = format!("server.listen {listen}: cannot listen: {e}");
        match crate::start::is_temporary(&e) {
            true => StartError::Temporary(message),
            false => StartError::Config(message),
        }
    };
    if let Some((cpus, all)) = steerable(loops) {
        let addr = listen
            .to_socket_addrs()
            .map_err(fail)?
            .next()
            .ok_or_else(|| StartError::Config(format!("server.listen {listen}: no address")))?;
        let sockets = reuseport_group(addr, &cpus).map_err(fail)?;
        return Ok(Sockets {
            here: None,
            threads: sockets
                .into_iter()
                .zip(cpus.into_iter().map(Some))
                .collect(),
            all_cpus: Some(all),
        });
    }
    let shared = TcpListener::bind(listen).map_err(fail)?;
    shared.set_nonblocking(true).map_err(fail)?;
    let threads = (1..loops)
        .map(|_| shared.try_clone().map(|s| (s, None)))
        .collect::<io::Result<_>>()
        .map_err(fail)?;
    Ok(Sockets {
        here: Some(shared),
        threads,
        all_cpus: None,
    })
}

/// The CPUs to pin `loops` loops to, and the whole CPU mask, when steering applies: more than
/// one loop, exactly as many loops as CPUs in this process's mask, and a kernel whose
/// `SO_REUSEPORT` groups honour `SO_INCOMING_CPU` (Linux 6.1).
fn steerable(loops: usize) -> Option<(Vec<usize>, CpuSet)> {
    if loops < 2 || !kernel_at_least(6, 1) {
        return None;
    }
    let all = sched_getaffinity(None).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| all.is_set(c)).collect();
    (cpus.len() == loops).then_some((cpus, all))
}

/// Whether the running kernel's release (`/proc/sys/kernel/osrelease`) is `major.minor` or later.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// One `SO_REUSEPORT` listening socket per CPU of `cpus`, all on `addr` (its port, when 0, chosen
/// by the kernel), each carrying its CPU in `SO_INCOMING_CPU`.
fn reuseport_group(addr: SocketAddr, cpus: &[usize]) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        // A plain socket takes a named address first: it fails if anyone listens there (another
        // imgmirror's group included).
        drop(TcpListener::bind(addr)?);
    }
    // For any port, the first socket of the group lets the kernel pick one and the others join
    // it. (Picking it with a plain socket, then binding the group, raced: in between, any
    // outgoing connection on this machine could take the freed port as its own.)
    let mut group = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_cpu_affinity(cpu)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        group.push(listener);
    }
    Ok(group)
}

/// Pins the calling thread to `cpu`; a refusal (a changed mask, a sandbox) only loses steering.
pub(super) fn pin_to(cpu: usize) {
    let mut one = CpuSet::new();
    one.set(cpu);
    if let Err(e) = sched_setaffinity(None, &one) {
        tracing::warn!(cpu, error = %e, "cannot pin the event loop to its CPU");
    }
}

/// Lets the calling thread run on every CPU of `all` again (a pinned loop's helper threads).
pub(super) fn unpin(all: &CpuSet) {
    if let Err(e) = sched_setaffinity(None, all) {
        tracing::warn!(error = %e, "cannot unpin a helper thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group asked for any port lands every socket on one port the kernel picked, and a second
    /// group on that address is refused, as a second plain listener would be.
    #[test]
    fn a_group_shares_one_picked_port_and_refuses_a_second_group() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let group = reuseport_group(any, &[0, 0]).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(group[1].local_addr().unwrap().port(), port);
        let taken = SocketAddr::new(any.ip(), port);
        let second = reuseport_group(taken, &[0, 0]);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
    }
}
