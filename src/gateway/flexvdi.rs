//! flexVDI compatibility: reads a flexVDI gateway JSON configuration and sends each user to
//! their own manager by an LDAP attribute.
