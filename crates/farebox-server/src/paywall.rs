//! [`Paywall`]: the rails and the price table of one deployment, and the rail-neutral decisions
//! (which rail, which answer) that the tower layer applies to each request.

use std::sync::Arc;
use std::time::Duration;

use farebox_core::rail::credential_of;
use farebox_core::{
    Challenge, ErrorKind, PaymentError, Problem, Rail, Refusal, Resource, SettleTiming,
    error::PROBLEM_JSON,
};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::routes::{PricedRoute, RouteError};

/// The rails and priced routes of a deployment. Cheap to share (`Arc` inside the layer).
pub struct Paywall {
    pub(crate) rails: Vec<Arc<dyn Rail>>,
    routes: Vec<PricedRoute>,
}

/// What the layer should do with a priced request.
pub(crate) enum Decision {
    /// A rail verified a credential: serve, then settle with that rail.
    Serve { rail: Arc<dyn Rail>, verdict: farebox_core::Verdict },
    /// Answer without calling the handler (a 402, 400 or 503).
    Refuse(http::Response<Vec<u8>>),
}

impl Paywall {
    pub fn builder() -> PaywallBuilder {
        PaywallBuilder { rails: Vec::new(), routes: Vec::new() }
    }

    /// The resource a request is for, if a route prices it.
    pub fn resource_for(&self, method: &Method, path: &str) -> Option<Resource> {
        self.priced(method, path).map(|(resource, _)| resource)
    }

    /// The resource and when to settle it, from the first route that prices the request.
    pub(crate) fn priced(&self, method: &Method, path: &str) -> Option<(Resource, SettleTiming)> {
        let route = self.routes.iter().find(|r| r.matches(method, path))?;
        let resource = Resource {
            method: method.clone(),
            path: path.to_string(),
            route: route.pattern.clone(),
            price: route.price.clone(),
            description: route.description.clone(),
            accept_payment: None,
        };
        Some((resource, route.settle_timing(method)))
    }

    /// Whether a request header field carries a payment credential for one of the rails (so that
    /// a proxy can keep it from the upstream while passing the upstream's own `Authorization`).
    pub fn is_payment_credential(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        if name == http::header::AUTHORIZATION {
            let scheme = farebox_core::auth::scheme_of_bytes(value.as_bytes());
            return self.rails.iter().any(|r| {
                r.auth_schemes().iter().any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
            });
        }
        self.rails.iter().any(|r| r.credential_headers().contains(name))
    }

    /// The configured rails, in challenge order.
    pub fn rails(&self) -> &[Arc<dyn Rail>] {
        &self.rails
    }

    /// Runs every rail's [`Rail::maintain`] once; a rail that fails is logged and the others
    /// still run.
    pub async fn maintain(&self) {
        for rail in &self.rails {
            if let Err(e) = rail.maintain().await {
                tracing::warn!(rail = rail.name(), code = e.code, detail = %e.detail, "rail upkeep failed");
            }
        }
    }

    /// Checks that upkeep every `every` keeps every rail's [`Rail::upkeep_deadline`]: at most
    /// [`UPKEEP_INTERVALS_PER_DEADLINE`] intervals must fit in each deadline.
    pub async fn check_upkeep_interval(&self, every: Duration) -> Result<(), MaintenanceError> {
        if every.is_zero() {
            return Err(MaintenanceError::ZeroInterval);
        }
        for rail in &self.rails {
            let deadline = rail
                .upkeep_deadline()
                .await
                .map_err(|error| MaintenanceError::Rail { rail: rail.name(), error })?;
            let Some(deadline) = deadline else { continue };
            let longest = deadline / UPKEEP_INTERVALS_PER_DEADLINE;
            if every > longest {
                return Err(MaintenanceError::TooSlow {
                    rail: rail.name(),
                    every,
                    deadline,
                    longest,
                });
            }
        }
        Ok(())
    }

    /// Runs [`Self::maintain`] every `every` on the current tokio runtime until the returned
    /// handle is aborted (or the runtime ends), once [`Self::check_upkeep_interval`] has
    /// accepted `every`: an interval a rail cannot live with is refused here, at start, rather
    /// than found out when a payer has taken back what it spent.
    pub async fn spawn_maintenance(
        self: &Arc<Self>,
        every: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, MaintenanceError> {
        self.check_upkeep_interval(every).await?;
        let paywall = Arc::clone(self);
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                paywall.maintain().await;
            }
        }))
    }

    /// Decides a priced request from its headers: find the credential, verify it, or refuse.
    pub(crate) async fn decide(&self, resource: &Resource, headers: &HeaderMap) -> Decision {
        let (rail, credential) = match credential_of(&self.rails, headers) {
            Ok(Some((rail, credential))) => (rail.clone(), credential),
            Ok(None) => {
                let why = PaymentError::new(
                    ErrorKind::PaymentRequired,
                    "payment_required",
                    format!("{} {} requires payment", resource.method, resource.path),
                );
                return Decision::Refuse(self.refusal(resource, &why, None).await);
            }
            Err(e) => {
                let by = e.rail.map(|rail| rail.name());
                return Decision::Refuse(self.refusal(resource, &e.error, by).await);
            }
        };
        match rail.clone().verify(resource, &credential).await {
            Ok(verdict) => Decision::Serve { rail, verdict },
            Err(e) => {
                tracing::info!(rail = rail.name(), code = e.code, path = %resource.path, "credential refused");
                Decision::Refuse(self.refusal(resource, &e, Some(rail.name())).await)
            }
        }
    }

    /// The answer to a request that is not (or no longer) served: a 402 with every rail's fresh
    /// challenge when the error calls for one, otherwise the error's own status. `refused_by`
    /// names the rail that refused the request's credential (in verify or settle), which is told
    /// so in its challenge ([`Refusal`]).
    pub async fn refusal(
        &self,
        resource: &Resource,
        error: &PaymentError,
        refused_by: Option<&str>,
    ) -> http::Response<Vec<u8>> {
        let refusal = refused_by.map(|rail| Refusal { rail, error });
        let mut response = self.refusal_without_error_headers(resource, error, refusal).await;
        for (name, value) in &error.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        // Everything on this answer but the CORS-safelisted basics is for the payer to read.
        let ours: Vec<HeaderName> = response
            .headers()
            .keys()
            .filter(|n| **n != CONTENT_TYPE && **n != CACHE_CONTROL)
            .cloned()
            .collect();
        expose_headers(response.headers_mut(), &ours);
        response
    }

    async fn refusal_without_error_headers(
        &self,
        resource: &Resource,
        error: &PaymentError,
        refusal: Option<Refusal<'_>>,
    ) -> http::Response<Vec<u8>> {
        if !error.kind.carries_challenges() {
            return problem_response(error.to_problem(), error.retry_after, Vec::new());
        }
        let mut challenges = Vec::with_capacity(self.rails.len());
        let mut unavailable: Option<PaymentError> = None;
        for rail in &self.rails {
            match rail.challenge(resource, refusal.as_ref()).await {
                Ok(Some(c)) => challenges.push(c),
                Ok(None) => {}
                Err(e) => {
                    // One rail's backend being down must not take the others' offers away; the
                    // route is only refused outright when no rail can offer anything.
                    tracing::warn!(rail = rail.name(), code = e.code, detail = %e.detail, "challenge failed");
                    unavailable.get_or_insert(e);
                }
            }
        }
        if challenges.is_empty() {
            let e = unavailable.unwrap_or_else(|| {
                PaymentError::internal(
                    "no_rail_for_price",
                    "no configured rail can charge this route's price",
                )
            });
            return problem_response(e.to_problem(), e.retry_after, Vec::new());
        }
        let mut problem = error.to_problem();
        for c in &mut challenges {
            problem.extend(std::mem::take(&mut c.body_members));
        }
        problem_response(problem, None, challenges)
    }
}

/// Lets browser clients read payment headers (`WWW-Authenticate`, `PAYMENT-REQUIRED`,
/// `Payment-Receipt`, …) across origins, as Aperture and the x402 servers do. Only the exposure:
/// whether cross-origin requests are allowed at all stays the application's CORS policy.
pub(crate) fn expose_headers(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.is_empty() {
        return;
    }
    let list = names.iter().map(HeaderName::as_str).collect::<Vec<_>>().join(", ");
    if let Ok(value) = HeaderValue::from_str(&list) {
        headers.append(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
}

/// `Retry-After` of a 503 whose error did not name one.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A problem+json response, with the challenges' header lines when there are any.
pub(crate) fn problem_response(
    problem: Problem,
    retry_after: Option<Duration>,
    challenges: Vec<Challenge>,
) -> http::Response<Vec<u8>> {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = http::Response::new(problem.to_json());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    // Challenges carry one-time invoices and nonces: no cache may replay them to someone else.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A 503 always says when to come back, whoever built the error.
    let retry_after =
        retry_after.or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(DEFAULT_RETRY_AFTER));
    if let Some(after) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    for challenge in challenges {
        for line in challenge.www_authenticate {
            headers.append(WWW_AUTHENTICATE, line);
        }
        for (name, value) in challenge.headers {
            headers.append(name, value);
        }
    }
    response
}

/// How many upkeep intervals must fit in a rail's [`Rail::upkeep_deadline`]. Something upkeep
/// must answer (a payer's forced close) may happen just after a tick, so it is seen up to one
/// interval later (plus however long that tick takes); if that attempt fails (the node does not
/// answer, the transaction is not mined in time) the next tick retries, up to two intervals
/// later; the third interval is the margin for that transaction to be mined and for the chain's
/// clock running ahead of ours. With fewer there is no room for a retry.
pub const UPKEEP_INTERVALS_PER_DEADLINE: u32 = 3;

/// Why upkeep was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaintenanceError {
    #[error("the upkeep interval is zero")]
    ZeroInterval,
    #[error(
        "upkeep every {every:?} is too slow for rail {rail:?}: it must react within {deadline:?}, so upkeep must run at least every {longest:?}"
    )]
    TooSlow { rail: &'static str, every: Duration, deadline: Duration, longest: Duration },
    /// The rail cannot tell how soon upkeep must react (its backend does not answer), or its
    /// backend is configured so that no upkeep could keep up (e.g. an escrow grace period too
    /// short for the payee to close first).
    #[error("rail {rail:?} cannot be maintained: {error}")]
    Rail { rail: &'static str, error: PaymentError },
}

/// Builds a [`Paywall`].
pub struct PaywallBuilder {
    rails: Vec<Arc<dyn Rail>>,
    routes: Vec<PricedRoute>,
}

/// A paywall that cannot work as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaywallError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("no rail configured")]
    NoRail,
    #[error("two rails are named {0:?}")]
    DuplicateRail(&'static str),
    #[error("rails {0:?} and {1:?} both claim the credential {2:?}")]
    OverlappingClaims(&'static str, &'static str, String),
}

impl PaywallBuilder {
    /// Adds a rail; rails challenge in the order they are added.
    pub fn rail(mut self, rail: impl Rail) -> Self {
        self.rails.push(Arc::new(rail));
        self
    }

    /// Adds an already shared rail.
    pub fn shared_rail(mut self, rail: Arc<dyn Rail>) -> Self {
        self.rails.push(rail);
        self
    }

    /// Adds a priced route.
    pub fn route(mut self, route: PricedRoute) -> Self {
        self.routes.push(route);
        self
    }

    /// Checks the configuration: at least one rail, distinct names, no credential claimed by two
    /// rails (routing would be ambiguous).
    pub fn build(self) -> Result<Paywall, PaywallError> {
        if self.rails.is_empty() {
            return Err(PaywallError::NoRail);
        }
        for (i, a) in self.rails.iter().enumerate() {
            for b in &self.rails[..i] {
                if a.name() == b.name() {
                    return Err(PaywallError::DuplicateRail(a.name()));
                }
                let claims_a = a.auth_schemes().iter().map(|s| s.to_ascii_lowercase());
                for s in claims_a {
                    if b.auth_schemes().iter().any(|t| t.eq_ignore_ascii_case(&s)) {
                        return Err(PaywallError::OverlappingClaims(b.name(), a.name(), s));
                    }
                }
                for h in a.credential_headers() {
                    if b.credential_headers().contains(h) {
                        return Err(PaywallError::OverlappingClaims(
                            b.name(),
                            a.name(),
                            h.to_string(),
                        ));
                    }
                }
            }
        }
        Ok(Paywall { rails: self.rails, routes: self.routes })
    }
}
