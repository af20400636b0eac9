//! [`PaymentMiddleware`]: a reqwest middleware that pays for 402s.
//!
//! On a 402 it asks each wallet for offers, keeps those the budget allows, pays the first in
//! wallet order, retries once with the proof, and records the payment in the ledger. A second
//! 402 after paying is reported as [`ClientError::ProofRejected`], never paid again (no loops).
//! Reusable proofs (L402 tokens) are kept per origin and sent up front on later requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use farebox_core::auth;
use http::{Extensions, HeaderName, HeaderValue, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Next, Result};

use crate::budget::{Budget, Ledger, LedgerEntry};
use crate::error::ClientError;
use crate::events::{Event, Observer};
use crate::wallet::{Offer, PaymentRequired, Proof, Wallet};

/// Largest 402 body read for challenges.
const MAX_CHALLENGE_BODY: usize = 64 * 1024;

type SavedProof = (&'static str, Vec<(HeaderName, HeaderValue)>);

/// Reusable proofs kept per origin; the oldest is dropped past this.
const MAX_SAVED_PER_ORIGIN: usize = 32;

/// How many leading path segments two paths share.
fn shared_segments(a: &str, b: &str) -> usize {
    a.split('/')
        .filter(|s| !s.is_empty())
        .zip(b.split('/').filter(|s| !s.is_empty()))
        .take_while(|(x, y)| x == y)
        .count()
}

/// Pays for 402 responses within a budget. Build with [`PaymentMiddleware::new`] and add to a
/// `reqwest_middleware::ClientBuilder`, or use [`crate::paying_client`].
pub struct PaymentMiddleware {
    wallets: Vec<Arc<dyn Wallet>>,
    budget: Budget,
    ledger: Ledger,
    observer: Option<Arc<dyn Observer>>,
    saved: Mutex<HashMap<String, Vec<(String, SavedProof)>>>,
}

impl PaymentMiddleware {
    pub fn new(budget: Budget) -> Self {
        PaymentMiddleware {
            wallets: Vec::new(),
            budget,
            ledger: Ledger::default(),
            observer: None,
            saved: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a wallet; earlier wallets are preferred when several offers fit.
    pub fn wallet(mut self, wallet: impl Wallet) -> Self {
        self.wallets.push(Arc::new(wallet));
        self
    }

    /// Receives every step (for progress output).
    pub fn observe(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The spend ledger (shares entries with the middleware).
    pub fn ledger(&self) -> Ledger {
        self.ledger.clone()
    }

    /// The budget (shares state with the middleware).
    pub fn budget(&self) -> Budget {
        self.budget.clone()
    }

    fn emit(&self, event: Event) {
        if let Some(o) = &self.observer {
            o.on_event(&event);
        }
    }

    /// The saved proof most likely to cover `url`: bought for the same path, else for the path
    /// sharing the most leading segments with it (a token scoped to `/weather/*` bought on
    /// `/weather/paris` also serves `/weather/rome`).
    fn saved_proof(&self, url: &reqwest::Url) -> Option<(String, SavedProof)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let entries = saved.get(&url.origin().ascii_serialization())?;
        entries
            .iter()
            .map(|(path, proof)| (shared_segments(path, url.path()), path, proof))
            .filter(|(shared, path, _)| *shared > 0 || path.as_str() == url.path())
            .max_by_key(|(shared, _, _)| *shared)
            .map(|(_, path, proof)| (path.clone(), proof.clone()))
    }

    fn save_proof(&self, url: &reqwest::Url, proof: SavedProof) {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let entries = saved.entry(url.origin().ascii_serialization()).or_default();
        entries.retain(|(path, _)| path != url.path());
        if entries.len() >= MAX_SAVED_PER_ORIGIN {
            entries.remove(0);
        }
        entries.push((url.path().to_string(), proof));
    }

    fn forget_proof(&self, url: &reqwest::Url, bought_for: &str) {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = saved.get_mut(&url.origin().ascii_serialization()) {
            entries.retain(|(path, _)| path != bought_for);
        }
    }

    /// Picks the first offer, in wallet order, that the budget allows; remembers why others
    /// were refused so that "over budget" is what the caller hears when nothing fits.
    fn choose<'a>(
        &self,
        offers: &'a [(Arc<dyn Wallet>, Offer)],
    ) -> std::result::Result<&'a (Arc<dyn Wallet>, Offer), ClientError> {
        let mut refusal = None;
        for candidate in offers {
            let worst = candidate
                .1
                .price
                .checked_add(&candidate.1.max_fee)
                .map_err(|e| {
                    ClientError::InvalidChallenge(format!("fee and price in different assets: {e}"))
                })?;
            match self.budget.check(&worst) {
                Ok(()) => return Ok(candidate),
                Err(e) => refusal = refusal.or(Some(e)),
            }
        }
        Err(refusal
            .unwrap_or_else(|| ClientError::NoPayableOffer("no wallet can pay any offer".into())))
    }

    async fn pay_and_retry(
        &self,
        retry: Request,
        first: Response,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> std::result::Result<Response, reqwest_middleware::Error> {
        let url = first.url().clone();
        let required = read_402(first).await?;
        let mut offers = Vec::new();
        for wallet in &self.wallets {
            for offer in wallet
                .offers(&required)
                .map_err(reqwest_middleware::Error::middleware)?
            {
                offers.push((wallet.clone(), offer));
            }
        }
        self.emit(Event::PaymentRequired {
            url: url.to_string(),
            challenges: required
                .headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect(),
            offers: offers
                .iter()
                .map(|(_, o)| (o.rail, o.price.clone(), o.summary.clone()))
                .collect(),
        });
        if offers.is_empty() {
            let rails: Vec<_> = required
                .challenges
                .iter()
                .map(|c| c.scheme.clone())
                .collect();
            return Err(reqwest_middleware::Error::middleware(
                ClientError::NoPayableOffer(format!(
                    "the server offers {rails:?}; this client has wallets for {:?}",
                    self.wallets.iter().map(|w| w.rail()).collect::<Vec<_>>()
                )),
            ));
        }
        let (wallet, offer) = self
            .choose(&offers)
            .map_err(reqwest_middleware::Error::middleware)?;
        let worst = offer.price.checked_add(&offer.max_fee).map_err(|e| {
            reqwest_middleware::Error::middleware(ClientError::InvalidChallenge(e.to_string()))
        })?;
        let reservation = self
            .budget
            .reserve(&worst)
            .map_err(reqwest_middleware::Error::middleware)?;
        self.emit(Event::Paying {
            rail: offer.rail,
            price: offer.price.clone(),
            summary: offer.summary.clone(),
        });
        let proof: Proof = match wallet.pay(offer).await {
            Ok(p) => p,
            Err(e) => {
                self.budget.release(reservation);
                return Err(reqwest_middleware::Error::middleware(e));
            }
        };
        let spent = offer
            .price
            .checked_add(&proof.fee)
            .unwrap_or_else(|_| offer.price.clone());
        self.budget.commit(reservation, &spent);
        self.ledger.record(LedgerEntry {
            at: SystemTime::now(),
            url: url.to_string(),
            rail: offer.rail,
            amount: offer.price.clone(),
            fee: proof.fee.clone(),
            reference: proof.reference.clone(),
        });
        self.emit(Event::Paid {
            rail: offer.rail,
            price: offer.price.clone(),
            fee: proof.fee.clone(),
            reference: proof.reference.clone(),
        });

        let mut retry = retry;
        apply_proof(&mut retry, &proof.headers);
        self.emit(Event::Retrying {
            url: url.to_string(),
        });
        let response = next.run(retry, extensions).await?;
        self.emit(Event::Served {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
        if response.status() == StatusCode::PAYMENT_REQUIRED {
            let status = response.status().as_u16();
            let detail = problem_detail(response).await;
            return Err(reqwest_middleware::Error::middleware(
                ClientError::ProofRejected { status, detail },
            ));
        }
        if proof.reusable {
            self.save_proof(&url, (offer.rail, proof.headers.clone()));
        }
        Ok(response)
    }
}

#[async_trait]
impl reqwest_middleware::Middleware for PaymentMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let url = req.url().clone();
        let mut retry = req.try_clone();
        let mut req = req;
        let reused = self.saved_proof(&url);
        if let Some((_, (rail, headers))) = &reused {
            self.emit(Event::ReusingProof {
                url: url.to_string(),
                rail,
            });
            apply_proof(&mut req, headers);
        }
        let response = next.clone().run(req, extensions).await?;
        if response.status() != StatusCode::PAYMENT_REQUIRED {
            return Ok(response);
        }
        // A saved proof that does not cover this request (expired, other route) is forgotten,
        // then the request is paid anew.
        if let Some((bought_for, _)) = reused {
            self.forget_proof(&url, &bought_for);
        }
        let Some(retry) = retry.take() else {
            return Err(reqwest_middleware::Error::middleware(
                ClientError::BodyNotReplayable,
            ));
        };
        self.pay_and_retry(retry, response, extensions, next).await
    }
}

fn apply_proof(req: &mut Request, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
}

async fn read_402(
    response: Response,
) -> std::result::Result<PaymentRequired, reqwest_middleware::Error> {
    let url = response.url().clone();
    let headers = response.headers().clone();
    let challenges = headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| auth::parse_challenges([v]).ok())
        .flatten()
        .collect();
    let body = read_bounded(response)
        .await
        .and_then(|b| serde_json::from_slice(&b).ok());
    Ok(PaymentRequired {
        url,
        challenges,
        headers,
        body,
    })
}

async fn read_bounded(mut response: Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_CHALLENGE_BODY {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

async fn problem_detail(response: Response) -> String {
    read_bounded(response)
        .await
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_else(|| "no detail given".into())
}
