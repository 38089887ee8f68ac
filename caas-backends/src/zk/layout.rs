//! The node layout under the chroot (docs/ARCHITECTURE.md) in one place: path builders for writers
//! and a classifier for watch events and full reads.
//!
//! ```text
//! /service/address/{appId}/{version}/{containerId}   EPHEMERAL   "{hostIp}:{hostPort}"
//! /apps/{appId}                                      PERSISTENT  AppSpec JSON (maybe encrypted)
//! /domains/{domain}                                  PERSISTENT  "{appId}"
//! /certs/{domain}                                    PERSISTENT  CertNode JSON (key encrypted)
//! /blacklist                                         PERSISTENT  Blacklist JSON: refused for every app
//! /deployments/{appId}/{version}                     PERSISTENT  Deployment JSON (desired state)
//! /deployments/{appId}/{version}/status              PERSISTENT  written by the scheduler
//! /hosts/...                                         see `hosts`
//! /gateways/{gatewayId}                              EPHEMERAL   GatewayInfo JSON (see `gateways`)
//! ```

use std::net::SocketAddr;

use caas_core::{AppId, Domain, InstanceId, Version};

/// Parent of the registry: `/service/address/{appId}/{version}/{containerId}`.
pub const SERVICE: &str = "/service/address";
/// Parent of the app config nodes `/apps/{appId}`.
pub const APPS: &str = "/apps";
/// Parent of the domain claims `/domains/{domain}`.
pub const DOMAINS: &str = "/domains";
/// Parent of the custom-domain certificates `/certs/{domain}`.
pub const CERTS: &str = "/certs";
/// The gateway-wide blacklist.
pub const BLACKLIST: &str = "/blacklist";
/// Parent of the deployments `/deployments/{appId}/{version}`.
pub const DEPLOYMENTS: &str = "/deployments";
/// Parent of the gateway announcements `/gateways/{gatewayId}`.
pub const GATEWAYS: &str = "/gateways";

/// `/gateways/{id}`.
pub fn gateway_path(id: &str) -> String {
    format!("{GATEWAYS}/{id}")
}

/// `/deployments/{app}/{version}`.
pub fn deployment_path(app: &AppId, version: &Version) -> String {
    format!("{DEPLOYMENTS}/{app}/{version}")
}

/// `/deployments/{app}/{version}/status`.
pub fn deployment_status_path(app: &AppId, version: &Version) -> String {
    format!("{DEPLOYMENTS}/{app}/{version}/status")
}

/// `/service/address/{app}/{version}/{instance}`.
pub fn instance_path(app: &AppId, version: &Version, instance: &InstanceId) -> String {
    format!("{SERVICE}/{app}/{version}/{instance}")
}

/// `/service/address/{app}`.
pub fn service_app_path(app: &AppId) -> String {
    format!("{SERVICE}/{app}")
}

/// `/apps/{app}`.
pub fn app_path(app: &AppId) -> String {
    format!("{APPS}/{app}")
}

/// `/domains/{domain}`.
pub fn domain_path(domain: &Domain) -> String {
    format!("{DOMAINS}/{domain}")
}

/// `/certs/{domain}`.
pub fn cert_path(domain: &Domain) -> String {
    format!("{CERTS}/{domain}")
}

/// What a node path (relative to the chroot) is, by its place in the layout. Segments are
/// returned raw: the caller validates them and skips what is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node<'a> {
    /// A registered instance.
    Instance {
        app: &'a str,
        version: &'a str,
        instance: &'a str,
    },
    /// `/service/address/{app}` or `/service/address/{app}/{version}`: structure only.
    ServiceDir,
    /// An app config node.
    App(&'a str),
    /// A domain claim.
    Domain(&'a str),
    /// The gateway-wide blacklist.
    Blacklist,
    /// Anything else (the parents, `/apps/{app}/versions/...`, `/hosts/...`).
    Other,
}

pub(crate) fn classify(path: &str) -> Node<'_> {
    if path == BLACKLIST {
        return Node::Blacklist;
    }
    if let Some(rest) = path.strip_prefix(SERVICE).and_then(|r| r.strip_prefix('/')) {
        let mut it = rest.split('/');
        return match (it.next(), it.next(), it.next(), it.next()) {
            (Some(app), Some(version), Some(instance), None) => Node::Instance {
                app,
                version,
                instance,
            },
            _ => Node::ServiceDir,
        };
    }
    if let Some(rest) = path.strip_prefix(APPS).and_then(|r| r.strip_prefix('/')) {
        return if rest.contains('/') {
            Node::Other
        } else {
            Node::App(rest)
        };
    }
    if let Some(rest) = path.strip_prefix(DOMAINS).and_then(|r| r.strip_prefix('/')) {
        return if rest.contains('/') {
            Node::Other
        } else {
            Node::Domain(rest)
        };
    }
    Node::Other
}

/// Parses registry data: exactly `{hostIp}:{port}` (IPv6 as `[addr]:port`), no whitespace.
pub(crate) fn parse_address(data: &[u8]) -> Result<SocketAddr, String> {
    let text = std::str::from_utf8(data).map_err(|_| "data is not UTF-8".to_owned())?;
    text.parse::<SocketAddr>()
        .map_err(|_| format!("data {text:?} is not hostIp:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_layout_paths() {
        assert_eq!(
            classify("/service/address/a/v1/c1"),
            Node::Instance {
                app: "a",
                version: "v1",
                instance: "c1"
            }
        );
        assert_eq!(classify("/service/address/a/v1"), Node::ServiceDir);
        assert_eq!(classify("/service/address/a/v1/c/x"), Node::ServiceDir);
        assert_eq!(classify("/apps/a"), Node::App("a"));
        assert_eq!(classify("/apps/a/versions/v1"), Node::Other);
        assert_eq!(classify("/domains/www.a.test"), Node::Domain("www.a.test"));
        assert_eq!(classify("/apps"), Node::Other);
        assert_eq!(classify("/blacklist"), Node::Blacklist);
        assert_eq!(classify("/blacklist/x"), Node::Other);
        assert_eq!(classify("/hosts/h1"), Node::Other);
        assert_eq!(classify("/service/addressx/a/b/c"), Node::Other);
    }

    #[test]
    fn addresses_are_exact() {
        assert_eq!(
            parse_address(b"10.0.0.1:8080").unwrap(),
            "10.0.0.1:8080".parse().unwrap()
        );
        assert!(parse_address(b"[::1]:80").is_ok());
        for bad in [
            &b"10.0.0.1"[..],
            b"host:80",
            b" 10.0.0.1:80",
            b"10.0.0.1:99999",
            b"\xff",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }
}
