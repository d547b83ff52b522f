//! What a request path is, parsed once: the routing table of the service.

/// The service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/i/…` and `/s/…`: an image route.
    Image,
    /// `/healthz`: the process serves.
    Healthz,
    /// `/readyz`: the mirror store is writable.
    Readyz,
    /// `/metrics`: Prometheus exposition.
    Metrics,
    /// `/stats`: JSON.
    Stats,
    /// `/`: the status page.
    Status,
    /// `POST /purge`: drop images from memory.
    Purge,
    /// Anything else: 404.
    Other,
}

impl Endpoint {
    pub fn parse(path: &str) -> Endpoint {
        match path {
            p if p.starts_with("/i/") || p.starts_with("/s/") => Endpoint::Image,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            "/stats" => Endpoint::Stats,
            "/" => Endpoint::Status,
            "/purge" => Endpoint::Purge,
            _ => Endpoint::Other,
        }
    }

    /// The label for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Endpoint::Image => "image",
            Endpoint::Healthz | Endpoint::Readyz => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Stats => "stats",
            Endpoint::Status => "status",
            Endpoint::Purge => "purge",
            Endpoint::Other => "other",
        }
    }

    /// Operator endpoints: only on `server.admin_listen` when one is set.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Endpoint::Metrics | Endpoint::Stats | Endpoint::Status | Endpoint::Purge
        )
    }
}
