//! Stable service ports: every service with a port gets one on 127.0.0.1
//! that it keeps across releases and restarts of the rollout service (it is
//! recorded), with a proxy on it that forwards only to healthy processes.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::LocalRuntime;
use super::error::LocalError;
use super::proxy::Proxy;
use super::state::App;

impl LocalRuntime {
    /// Binds the stable port of every target service that has none yet; a
    /// port that cannot be bound fails the target.
    pub(super) async fn ensure_proxies(&self, app: &Arc<App>) {
        let wanted: Vec<(String, String)> = {
            let st = app.lock();
            let Some(target) = &st.target else { return };
            target
                .spec
                .manifest
                .services
                .values()
                .filter(|s| s.port.is_some())
                .filter(|s| {
                    st.services
                        .get(&s.name)
                        .is_none_or(|svc| svc.proxy.is_none())
                })
                .map(|s| (s.name.clone(), target.spec.release.clone()))
                .collect()
        };
        for (service, release) in wanted {
            match self.stable_port(&app.name, &service).await {
                // Shutting down: the port is left for the next start.
                Ok(_) if self.inner.stopping.is_cancelled() => return,
                Ok(proxy) => {
                    let mut st = app.lock();
                    let port = proxy.port();
                    let svc = st.services.entry(service.clone()).or_default();
                    svc.proxy = Some(proxy);
                    svc.refresh();
                    self.emit(app, &st, &service, format!("Listening on 127.0.0.1:{port}"));
                }
                Err(e) => self.fail(app, &release, &service, format!("service {service}: {e}")),
            }
        }
    }

    /// Binds the service's stable port: the one it had, or a new one.
    async fn stable_port(&self, app: &str, service: &str) -> Result<Proxy, LocalError> {
        let _serial = self.inner.ports.lock().await;
        let records = self.records();
        if let Some(port) = records.port(app, service).await? {
            return Proxy::bind(port)
                .await
                .map_err(|source| LocalError::StablePortBusy { port, source });
        }
        match self.inner.config.ports {
            None => {
                let proxy = Proxy::bind(0).await.map_err(LocalError::Listen)?;
                if records.assign_port(app, service, proxy.port()).await? {
                    Ok(proxy)
                } else {
                    Err(LocalError::PortAssignedTwice(proxy.port()))
                }
            }
            Some((lo, hi)) => {
                let used: BTreeSet<u16> = records.ports().await?.into_iter().collect();
                for port in (lo..=hi).filter(|p| !used.contains(p)) {
                    if let Ok(proxy) = Proxy::bind(port).await
                        && records.assign_port(app, service, port).await?
                    {
                        return Ok(proxy);
                    }
                }
                Err(LocalError::PortsExhausted { lo, hi })
            }
        }
    }
}
