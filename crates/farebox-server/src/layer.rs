//! The tower [`Layer`] and [`Service`] that put a [`Paywall`] in front of any HTTP service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use farebox_core::{Money, PaymentError, SettleTiming};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::paywall::{Decision, Paywall};

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
        PaywallLayer {
            paywall: Arc::new(paywall),
        }
    }

    pub fn shared(paywall: Arc<Paywall>) -> Self {
        PaywallLayer { paywall }
    }
}

impl<S> Layer<S> for PaywallLayer {
    type Service = PaywallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaywallService {
            inner,
            paywall: self.paywall.clone(),
        }
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
            let Some(resource) = paywall.resource_for(request.method(), request.uri().path())
            else {
                return inner.call(request).await.map(|r| r.map(Body::new));
            };
            let (rail, payment) = match paywall.decide(&resource, request.headers()).await {
                Decision::Serve { rail, payment } => (rail, payment),
                Decision::Refuse(response) => return Ok(response.map(Body::from)),
            };
            request.extensions_mut().insert(Paid {
                rail: rail.name(),
                amount: payment.amount.clone(),
                reference: payment.reference.clone(),
                payer: payment.payer.clone(),
            });

            let timing = paywall.settle_timing(&resource);
            let mut early_receipt = None;
            let mut payment = Some(payment);
            if timing == SettleTiming::BeforeServe {
                let p = payment.take().expect("payment present before settlement");
                match rail.settle(&resource, p).await {
                    Ok(receipt) => early_receipt = Some(receipt),
                    Err(e) => return Ok(settle_failed(&paywall, &resource, rail.name(), e).await),
                }
            }

            let response = inner.call(request).await?;
            let receipt = if let Some(receipt) = early_receipt {
                receipt
            } else {
                let p = payment
                    .take()
                    .expect("payment kept for settlement after the response");
                if response.status().as_u16() >= 400 {
                    // Nothing is charged for a failed request; give back any reservation.
                    rail.release(&resource, p).await;
                    return Ok(response.map(Body::new));
                }
                match rail.settle(&resource, p).await {
                    Ok(receipt) => receipt,
                    // The handler's answer is dropped: unpaid content is never delivered.
                    Err(e) => return Ok(settle_failed(&paywall, &resource, rail.name(), e).await),
                }
            };
            tracing::info!(
                rail = rail.name(),
                amount = %receipt.amount,
                reference = %receipt.reference,
                path = %resource.path,
                "paid request served"
            );
            let mut response = response.map(Body::new);
            for (name, value) in receipt.headers.iter().cloned() {
                response.headers_mut().append(name, value);
            }
            response.extensions_mut().insert(receipt);
            Ok(response)
        })
    }
}

async fn settle_failed(
    paywall: &Paywall,
    resource: &farebox_core::Resource,
    rail: &'static str,
    error: PaymentError,
) -> Response<Body> {
    tracing::warn!(rail, code = error.code, detail = %error.detail, "settlement failed");
    paywall.refusal(resource, &error).await.map(Body::from)
}
