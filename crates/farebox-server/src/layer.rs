//! The tower [`Layer`] and [`Service`] that put a [`Paywall`] in front of any HTTP service.
//!
//! Which requests are priced, and which paths are refused before anything else happens, is the
//! business of [`crate::routes`]; this file applies it to each request and runs the settlement
//! around the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use farebox_core::{Money, PaymentError, Receipt, Resource, SettleTiming, Verdict, Verified};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::paywall::{Decision, Paywall, expose_headers, problem_response};
use crate::routes::check_canonical;

/// What a handler behind the paywall learns about the payment for its request (a request
/// extension): which rail, how much, the rail's reference, and the payer when known.
#[derive(Debug, Clone)]
pub struct Paid {
    pub rail: &'static str,
    pub amount: Money,
    pub reference: String,
    pub payer: Option<String>,
}

/// A `tower::Layer` that charges for the routes of a [`Paywall`].
#[derive(Clone)]
pub struct PaywallLayer {
    paywall: Arc<Paywall>,
}

impl PaywallLayer {
    pub fn new(paywall: Paywall) -> Self {
        PaywallLayer { paywall: Arc::new(paywall) }
    }

    pub fn shared(paywall: Arc<Paywall>) -> Self {
        PaywallLayer { paywall }
    }
}

impl<S> Layer<S> for PaywallLayer {
    type Service = PaywallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaywallService { inner, paywall: self.paywall.clone() }
    }
}

/// The service [`PaywallLayer`] produces.
#[derive(Clone)]
pub struct PaywallService<S> {
    inner: S,
    paywall: Arc<Paywall>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PaywallService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let paywall = self.paywall.clone();
        Box::pin(async move {
            if let Err(why) = check_canonical(request.uri().path()) {
                let e = PaymentError::bad_request("non_canonical_path", why);
                return Ok(problem_response(e.to_problem(), None, Vec::new()).map(Body::from));
            }
            let path = request.uri().path();
            let priced = method_overrides(request.headers())
                .chain(std::iter::once(request.method().clone()))
                .find_map(|method| paywall.priced(&method, path));
            let Some((mut resource, timing)) = priced else {
                return inner.call(request).await.map(|r| r.map(Body::new));
            };
            resource.accept_payment = request
                .headers()
                .get("accept-payment")
                .filter(|v| v.len() <= farebox_core::resource::MAX_ACCEPT_PAYMENT_LEN)
                .and_then(|v| v.to_str().ok())
                .map(Arc::from);
            let (rail, payment) = match paywall.decide(&resource, request.headers()).await {
                Decision::Serve { rail, verdict: Verdict::Payment(payment) } => (rail, payment),
                Decision::Serve { rail, verdict: Verdict::Control(message) } => {
                    // A session top-up or close: settled and answered here; the handler never
                    // sees it.
                    return Ok(match message.settle(&resource).await {
                        Ok(receipt) => control_answer(rail.name(), receipt),
                        Err(e) => settle_failed(&paywall, &resource, rail.name(), e).await,
                    });
                }
                Decision::Refuse(response) => return Ok(response.map(Body::from)),
            };
            request.extensions_mut().insert(Paid {
                rail: rail.name(),
                amount: payment.amount.clone(),
                reference: payment.reference.clone(),
                payer: payment.payer.clone(),
            });

            let (response, receipt) = match timing {
                SettleTiming::BeforeServe => {
                    let receipt = match payment.settle(&resource).await {
                        Ok(receipt) => receipt,
                        Err(e) => {
                            return Ok(settle_failed(&paywall, &resource, rail.name(), e).await);
                        }
                    };
                    (inner.call(request).await?, receipt)
                }
                SettleTiming::AfterResponse => {
                    // Until settled, the payment is held by a guard that gives any reservation
                    // back if the handler fails, errors, or this future is dropped.
                    let mut held = Held::new(rail.name(), resource.clone(), payment);
                    let response = inner.call(request).await?;
                    if response.status().as_u16() >= 400 {
                        held.release().await;
                        return Ok(response.map(Body::new));
                    }
                    match held.take().settle(&resource).await {
                        Ok(receipt) => (response, receipt),
                        // The handler's answer is dropped: unpaid content is never delivered.
                        Err(e) => {
                            return Ok(settle_failed(&paywall, &resource, rail.name(), e).await);
                        }
                    }
                }
            };
            tracing::info!(
                rail = rail.name(),
                amount = %receipt.amount,
                reference = %receipt.reference,
                path = %resource.path,
                "paid request served"
            );
            Ok(with_receipt(response.map(Body::new), receipt))
        })
    }
}

/// Headers some frameworks take to mean "handle this request as another method" (Symfony,
/// Express's `method-override`, Google's APIs): a priced `DELETE` must not be reachable free as
/// a `POST` carrying one. Such a request is priced as the method it names first.
const METHOD_OVERRIDES: [&str; 3] =
    ["x-http-method-override", "x-http-method", "x-method-override"];

fn method_overrides(headers: &http::HeaderMap) -> impl Iterator<Item = http::Method> + '_ {
    METHOD_OVERRIDES
        .iter()
        .flat_map(|name| headers.get_all(*name))
        .filter_map(|v| http::Method::from_bytes(v.as_bytes().trim_ascii()).ok())
}

/// Puts the receipt's headers on a successful response and keeps shared caches away from it.
fn with_receipt(mut response: Response<Body>, receipt: Receipt) -> Response<Body> {
    let headers = response.headers_mut();
    for (name, value) in receipt.headers.iter().cloned() {
        headers.append(name, value);
    }
    let receipt_names: Vec<_> = receipt.headers.iter().map(|(n, _)| n.clone()).collect();
    expose_headers(headers, &receipt_names);
    // Paid content is for the payer: no shared cache may hand it to someone else.
    let shared_cacheable = headers.get(CACHE_CONTROL).is_none_or(|v| {
        let v = v.to_str().unwrap_or("").to_ascii_lowercase();
        !(v.contains("private") || v.contains("no-store"))
    });
    if shared_cacheable {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    response.extensions_mut().insert(receipt);
    response
}

/// The server's own answer to a payment-control message: the rail's status and JSON body
/// (`204 No Content` when it names none), with the receipt.
fn control_answer(rail: &'static str, mut receipt: Receipt) -> Response<Body> {
    let answer = receipt.answer.take();
    let (status, body) = match answer {
        Some(a) => (a.status, a.body),
        None => (StatusCode::NO_CONTENT, None),
    };
    let mut response = match body {
        Some(json) => {
            let mut r = Response::new(Body::from(json.to_string()));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        None => Response::new(Body::empty()),
    };
    *response.status_mut() = status;
    tracing::info!(rail, reference = %receipt.reference, %status, "payment-control message answered");
    with_receipt(response, receipt)
}

/// A verified payment not yet settled. Dropped while still held (the handler's future errored
/// or was cancelled), it releases the payment on a spawned task so that a reservation (a nonce,
/// a voucher) is never stranded.
struct Held {
    rail: &'static str,
    resource: Resource,
    payment: Option<Verified>,
}

impl Held {
    fn new(rail: &'static str, resource: Resource, payment: Verified) -> Self {
        Held { rail, resource, payment: Some(payment) }
    }

    /// Takes the payment out for settlement.
    fn take(&mut self) -> Verified {
        self.payment.take().expect("a held payment is taken once")
    }

    /// Releases the payment now: nothing is charged for this request.
    async fn release(&mut self) {
        if let Some(payment) = self.payment.take() {
            payment.release(&self.resource).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(payment) = self.payment.take() else {
            return;
        };
        let (rail, resource) = (self.rail, self.resource.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { payment.release(&resource).await });
            }
            Err(_) => tracing::warn!(rail, "payment dropped outside a runtime; not released"),
        }
    }
}

async fn settle_failed(
    paywall: &Paywall,
    resource: &Resource,
    rail: &'static str,
    error: PaymentError,
) -> Response<Body> {
    tracing::warn!(rail, code = error.code, detail = %error.detail, "settlement failed");
    paywall.refusal(resource, &error, Some(rail)).await.map(Body::from)
}
