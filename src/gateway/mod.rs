//! The gateway: one TLS port for the console, the APIs and WebSocket tunnels to desktops,
//! authorised by broker-signed tickets so that it is never an open proxy.
//!
//! - [`flexvdi`] reads a flexVDI gateway configuration file and routes users to their manager.
pub mod flexvdi;
