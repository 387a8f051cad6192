//! systemd readiness (`Type=notify`): tell the service manager the relay is accepting mail,
//! with one datagram to `$NOTIFY_SOCKET` (sd_notify's protocol; no library needed).

use std::os::unix::net::UnixDatagram;

/// Sends `READY=1` if systemd asked for notifications; otherwise does nothing.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, b"READY=1") {
        tracing::warn!(error = %e, "could not tell systemd that the relay is ready");
    }
}

fn send(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Linux abstract socket namespace.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message, &addr)?;
    } else {
        socket.send_to(message, path)?;
    }
    Ok(())
}
