//! Server address entries as they appear inside connect tokens.
//!
//! An entry is a type byte (1 = IPv4, 2 = IPv6), the address, then the port (u16 LE).
//! IPv4 is the four octets in text order; IPv6 is the eight 16-bit groups in text order,
//! **each group little-endian** (not the 16 network-order octets: renetcode gets this wrong).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::bytes::{Reader, Truncated, Writer};

/// Type byte of an IPv4 entry.
pub const ADDRESS_IPV4: u8 = 1;
/// Type byte of an IPv6 entry.
pub const ADDRESS_IPV6: u8 = 2;

/// Why an address entry could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The type byte was neither 1 (IPv4) nor 2 (IPv6).
    #[error("address type {0} is neither 1 (IPv4) nor 2 (IPv6)")]
    BadType(u8),
    /// The bytes ended inside the entry.
    #[error(transparent)]
    Truncated(#[from] Truncated),
}

/// Appends one address entry.
pub fn write_address(w: &mut Writer<'_>, addr: &SocketAddr) -> Result<(), Truncated> {
    match addr.ip() {
        IpAddr::V4(ip) => {
            w.u8(ADDRESS_IPV4)?;
            w.bytes(&ip.octets())?;
        }
        IpAddr::V6(ip) => {
            w.u8(ADDRESS_IPV6)?;
            for group in ip.segments() {
                w.u16(group)?;
            }
        }
    }
    w.u16(addr.port())
}

/// Reads one address entry.
pub fn read_address(r: &mut Reader<'_>) -> Result<SocketAddr, AddressError> {
    let ip = match r.u8()? {
        ADDRESS_IPV4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        ADDRESS_IPV6 => {
            let mut groups = [0u16; 8];
            for group in &mut groups {
                *group = r.u16()?;
            }
            IpAddr::V6(Ipv6Addr::from(groups))
        }
        other => return Err(AddressError::BadType(other)),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

/// Two addresses name the same server endpoint.
///
/// An IPv4 socket and an IPv4-mapped IPv6 address are the same endpoint to the kernel, so a
/// dual-stack server must accept a token listing either form.
pub fn same_endpoint(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}
