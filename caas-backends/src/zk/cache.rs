//! The discovery's local copy of the registry and app config, and how it turns into the
//! [`AppSpec`]s the router gets.
//!
//! Registered instances are merged into `spec.versions[version].endpoints` (static endpoints
//! listed in the app's JSON are kept); an app with instances but no app node gets
//! [`AppSpec::default()`], which balances over all its versions. `/domains/{domain}` is the
//! authority on custom domains: a domain in an app's JSON that another app has claimed is not
//! routed for it, and a domain claimed by an app is routed for it even when its JSON does not
//! list it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use caas_core::{AppId, AppSpec, Blacklist, Domain, Endpoint, InstanceId, Snapshot, Version};

/// Instances by version and id.
pub(crate) type Instances = BTreeMap<Version, BTreeMap<InstanceId, SocketAddr>>;

/// Everything read from ZooKeeper, validated.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cache {
    pub(crate) instances: BTreeMap<AppId, Instances>,
    pub(crate) specs: BTreeMap<AppId, AppSpec>,
    pub(crate) claims: BTreeMap<Domain, AppId>,
    /// The gateway-wide blacklist (`/blacklist`; empty when absent).
    pub(crate) blacklist: Blacklist,
}

impl Cache {
    /// Every app that has an app node or at least one instance.
    pub(crate) fn app_ids(&self) -> BTreeSet<AppId> {
        let mut ids: BTreeSet<AppId> = self.specs.keys().cloned().collect();
        ids.extend(
            self.instances
                .iter()
                .filter(|(_, v)| v.values().any(|i| !i.is_empty()))
                .map(|(k, _)| k.clone()),
        );
        ids
    }

    /// Apps whose routing may change when the claim on `domain` changes.
    pub(crate) fn apps_touching(&self, domain: &Domain) -> BTreeSet<AppId> {
        let mut ids: BTreeSet<AppId> = self
            .specs
            .iter()
            .filter(|(_, s)| s.domains.contains(domain))
            .map(|(k, _)| k.clone())
            .collect();
        ids.extend(self.claims.get(domain).cloned());
        ids
    }

    pub(crate) fn insert_instance(
        &mut self,
        app: AppId,
        version: Version,
        id: InstanceId,
        addr: SocketAddr,
    ) {
        self.instances
            .entry(app)
            .or_default()
            .entry(version)
            .or_default()
            .insert(id, addr);
    }

    pub(crate) fn remove_instance(&mut self, app: &AppId, version: &Version, id: &InstanceId) {
        if let Some(versions) = self.instances.get_mut(app) {
            if let Some(ids) = versions.get_mut(version) {
                ids.remove(id);
                if ids.is_empty() {
                    versions.remove(version);
                }
            }
            if versions.is_empty() {
                self.instances.remove(app);
            }
        }
    }

    /// The spec the router gets for `app`; `None` when the app is gone.
    pub(crate) fn merged(&self, app: &AppId) -> Option<AppSpec> {
        let instances = self.instances.get(app);
        let mut spec = match (self.specs.get(app), instances) {
            (None, None) => return None,
            (Some(s), _) => s.clone(),
            (None, Some(_)) => AppSpec::default(),
        };
        for (version, ids) in instances.into_iter().flatten() {
            let endpoints = &mut spec.versions.entry(version.clone()).or_default().endpoints;
            for addr in ids.values() {
                if !endpoints.iter().any(|e| e.addr == *addr) {
                    endpoints.push(Endpoint::new(*addr));
                }
            }
        }
        spec.domains.retain(|d| match self.claims.get(d) {
            Some(owner) if owner != app => {
                tracing::warn!(%app, domain = %d, %owner, "domain is claimed by another app; not routed for this one");
                false
            }
            _ => true,
        });
        for (d, owner) in &self.claims {
            if owner == app && !spec.domains.contains(d) {
                spec.domains.push(d.clone());
            }
        }
        Some(spec)
    }

    /// The whole routing state.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let apps = self
            .app_ids()
            .into_iter()
            .filter_map(|id| self.merged(&id).map(|s| (id, s)))
            .collect();
        Snapshot {
            apps,
            blacklist: self.blacklist.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    #[test]
    fn merges_instances_specs_and_claims() {
        let mut c = Cache::default();
        let a: AppId = id("a");
        c.insert_instance(
            a.clone(),
            id("v1"),
            id("c1"),
            "10.0.0.1:80".parse().unwrap(),
        );
        c.insert_instance(
            a.clone(),
            id("v1"),
            id("c2"),
            "10.0.0.2:80".parse().unwrap(),
        );
        let plain = c.merged(&a).unwrap();
        assert_eq!(plain.versions[&id::<Version>("v1")].endpoints.len(), 2);
        assert_eq!(plain.default_version, None, "no app node: defaults");

        let spec: AppSpec = serde_json::from_str(
            r#"{"default_version":"v1","domains":["www.a.test","b.test"],
                "versions":{"v1":{"endpoints":["10.0.0.9:80","10.0.0.1:80"]}}}"#,
        )
        .unwrap();
        c.specs.insert(a.clone(), spec);
        c.claims.insert(id("b.test"), id("b"));
        c.claims.insert(id("mine.test"), a.clone());
        let merged = c.merged(&a).unwrap();
        let eps: Vec<String> = merged.versions[&id::<Version>("v1")]
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(eps, ["10.0.0.9:80", "10.0.0.1:80", "10.0.0.2:80"]);
        let domains: Vec<&str> = merged.domains.iter().map(|d| d.as_str()).collect();
        assert_eq!(domains, ["www.a.test", "mine.test"]);

        c.remove_instance(&a, &id("v1"), &id("c1"));
        c.remove_instance(&a, &id("v1"), &id("c2"));
        c.specs.clear();
        assert!(c.instances.is_empty());
        assert_eq!(c.merged(&a), None);
        assert!(c.snapshot().apps.is_empty());
    }
}
