//! [`PaymentMiddleware`]: a reqwest middleware that pays for 402s.
//!
//! On a 402 it asks each wallet for offers, ranks them by its [`Policy`] (rails in order of
//! preference, then wallet order), reserves the first the policy and the budget allow (price
//! plus the most the rail may add in fees), pays it, retries once with the proof, and records
//! the payment in the ledger (with the proof, and the server's receipt once it answers).
//! [`PaymentMiddleware::quote`] makes the same choice without paying. A second 402 after paying is [`ClientError::ProofRejected`], never a second
//! payment. Reusable proofs (L402 tokens) are saved per origin and path as soon as they are
//! bought and sent up front on later requests; concurrent first requests to one path wait for
//! one payment instead of each making their own. A wallet may also pay a request before the
//! server asks ([`Wallet::up_front`]: a session's next voucher under a live challenge): it is
//! reserved like any offer, sent with the request, committed to the budget and the ledger only
//! once the server accepts it, and released if the server answers 402 (or 410), whose
//! challenge is then paid the usual way — one response, one payment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use farebox_core::{Money, auth};
use http::{Extensions, HeaderName, HeaderValue, StatusCode};
use reqwest::{Request, Response, Url};
use reqwest_middleware::{Next, Result};

use crate::budget::{Budget, EntryKind, Ledger, LedgerEntry, Reservation};
use crate::events::{Event, Observer};
use crate::policy::{Choice, Policy, Quote, QuotedOffer};
use farebox_wallet::ClientError;
use farebox_wallet::{Funding, Offer, PaymentRequired, Proof, Wallet};

/// An offer and the wallet that made it.
type Candidate = (Arc<dyn Wallet>, Offer);

/// Largest 402 body read for challenges.
const MAX_CHALLENGE_BODY: usize = 64 * 1024;
/// Reusable proofs kept per origin; the oldest is dropped past this.
const MAX_SAVED_PER_ORIGIN: usize = 32;

#[derive(Clone)]
struct SavedProof {
    rail: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The path it was bought for.
    path: String,
}

/// The answer to a request sent without a payment the server took: as received, or a 402
/// already read (after an up-front payment it refused).
enum Unpaid {
    Response(Response),
    Read(PaymentRequired),
}

/// Pays for 402 responses within a budget. Build with [`PaymentMiddleware::new`] and add to a
/// `reqwest_middleware::ClientBuilder`, or use [`crate::paying_client`].
pub struct PaymentMiddleware {
    wallets: Vec<Arc<dyn Wallet>>,
    budget: Budget,
    ledger: Ledger,
    policy: Policy,
    observer: Option<Arc<dyn Observer>>,
    saved: Mutex<HashMap<String, Vec<SavedProof>>>,
    /// One payment at a time per origin and path.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn err(e: ClientError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The host a payment goes to, as caps and the ledger name it: `host` or `host:port` when the
/// port is not the scheme's default.
pub(crate) fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// Response headers in which servers return a receipt for a payment (MPP, x402 v2, L402).
const RECEIPT_HEADERS: [&str; 3] = ["payment-receipt", "payment-response", "l402-receipt"];

/// How many leading path segments two paths share.
fn shared_segments(a: &str, b: &str) -> usize {
    a.split('/')
        .filter(|s| !s.is_empty())
        .zip(b.split('/').filter(|s| !s.is_empty()))
        .take_while(|(x, y)| x == y)
        .count()
}

impl PaymentMiddleware {
    /// Pays within `budget`, recording payments in the ledger kept in the budget's store.
    pub fn new(budget: Budget) -> Self {
        PaymentMiddleware {
            wallets: Vec::new(),
            ledger: budget.ledger(),
            budget,
            policy: Policy::default(),
            observer: None,
            saved: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a wallet; earlier wallets are preferred when several offers fit.
    pub fn wallet(mut self, wallet: impl Wallet) -> Self {
        wallet.attach(Arc::new(self.budget.clone()));
        self.wallets.push(Arc::new(wallet));
        self
    }

    /// Chooses among offers, and refuses hosts and prices, by `policy`.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
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
    fn saved_proof(&self, url: &Url) -> Option<SavedProof> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        saved
            .get(&origin_of(url))?
            .iter()
            .map(|p| (shared_segments(&p.path, url.path()), p))
            .filter(|(shared, p)| *shared > 0 || p.path == url.path())
            .max_by_key(|(shared, _)| *shared)
            .map(|(_, p)| p.clone())
    }

    fn save_proof(&self, url: &Url, rail: &'static str, headers: Vec<(HeaderName, HeaderValue)>) {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let entries = saved.entry(origin_of(url)).or_default();
        entries.retain(|p| p.path != url.path());
        if entries.len() >= MAX_SAVED_PER_ORIGIN {
            entries.remove(0);
        }
        entries.push(SavedProof { rail, headers, path: url.path().to_string() });
    }

    /// Forgets the proof bought for exactly `url`'s path (it no longer works there).
    fn forget_proof(&self, url: &Url) {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = saved.get_mut(&origin_of(url)) {
            entries.retain(|p| p.path != url.path());
        }
    }

    fn payment_lock(&self, url: &Url) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.retain(|_, lock| Arc::strong_count(lock) > 1);
        in_flight.entry(format!("{}{}", origin_of(url), url.path())).or_default().clone()
    }

    /// The offers every wallet makes for `required`, in wallet order, and the first reason a
    /// wallet gave for making none (a challenge it cannot read, an offer its policy refuses).
    fn offers(&self, required: &PaymentRequired) -> (Vec<Candidate>, Option<ClientError>) {
        // A wallet that cannot pay does not void another wallet's offers; its reason is what
        // the caller hears when no wallet has any.
        let mut offers = Vec::new();
        let mut refusal = None;
        for wallet in &self.wallets {
            match wallet.offers(required) {
                Ok(made) => offers.extend(made.into_iter().map(|o| (wallet.clone(), o))),
                Err(e) => refusal = refusal.or(Some(e)),
            }
        }
        (offers, refusal)
    }

    fn no_offer(&self, required: &PaymentRequired, refusal: Option<ClientError>) -> ClientError {
        refusal.unwrap_or_else(|| {
            let schemes: Vec<_> = required.challenges.iter().map(|c| c.scheme.clone()).collect();
            ClientError::NoPayableOffer(format!(
                "the server offers {schemes:?}; this client has wallets for {:?}",
                self.wallets.iter().map(|w| w.rail()).collect::<Vec<_>>()
            ))
        })
    }

    /// The worst case of an offer: what it costs per request (price and fee bound) and what it
    /// puts up now (the same, or a session's deposit).
    fn worst_case(offer: &Offer) -> std::result::Result<(Money, Money), ClientError> {
        let worst = offer.price.checked_add(&offer.max_fee).map_err(|e| {
            ClientError::InvalidChallenge(format!("fee and price in different assets: {e}"))
        })?;
        let outlay = match &offer.funding {
            Funding::PerRequest => worst.clone(),
            Funding::Session { deposit } => {
                deposit.clone().unwrap_or_else(|| Money::zero(worst.asset.clone()))
            }
        };
        Ok((worst, outlay))
    }

    /// Reserves the first offer, in the policy's order, that the policy and the budget allow.
    /// When none fits, the refusal of the first is what the caller hears.
    fn choose<'a>(
        &self,
        host: &str,
        offers: &'a [Candidate],
    ) -> std::result::Result<(&'a Candidate, Reservation, String), ClientError> {
        let order = self.policy.rank(offers.iter().map(|(_, o)| o));
        let mut refusals = Vec::new();
        for &i in &order {
            let candidate = &offers[i];
            let offer = &candidate.1;
            let reserved = Self::worst_case(offer).and_then(|(worst, outlay)| {
                self.policy.allows(host, &worst, &outlay)?;
                self.budget.reserve_at(host, &worst, &outlay)
            });
            match reserved {
                Ok(reservation) => {
                    let reason = self.policy.reason(offer, &refusals);
                    return Ok((candidate, reservation, reason));
                }
                Err(e) => refusals.push((offer, e)),
            }
        }
        Err(refusals
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .unwrap_or_else(|| ClientError::NoPayableOffer("no wallet can pay any offer".into())))
    }

    /// What paying for `request` would take, without paying: every offer of the 402 (if it
    /// is one) with whether the policy and the budget allow it, and the one a payment would
    /// choose, and why. Nothing is paid or reserved; a reusable proof already bought is not
    /// sent, so a quote shows the price even where one is held.
    pub async fn quote(
        &self,
        client: &reqwest::Client,
        request: Request,
    ) -> std::result::Result<Quote, ClientError> {
        let url = request.url().clone();
        let response = client.execute(request).await?;
        let status = response.status().as_u16();
        if response.status() != StatusCode::PAYMENT_REQUIRED {
            return Ok(Quote { url: url.to_string(), status, ..Quote::default() });
        }
        let required = read_402(&url, response).await.map_err(|e| match e {
            reqwest_middleware::Error::Reqwest(e) => ClientError::Http(e),
            other => ClientError::InvalidChallenge(other.to_string()),
        })?;
        let challenges = challenge_lines(&required.headers);
        let (offers, refusal) = self.offers(&required);
        let host = host_of(&url);
        let order = self.policy.rank(offers.iter().map(|(_, o)| o));
        let mut quoted: Vec<QuotedOffer> = offers
            .iter()
            .map(|(_, offer)| {
                let verdict = Self::worst_case(offer).and_then(|(worst, outlay)| {
                    self.policy.allows(&host, &worst, &outlay)?;
                    self.budget.check_at(&host, &worst, &outlay)
                });
                QuotedOffer::new(offer, verdict.err())
            })
            .collect();
        let chosen = order.iter().copied().find(|&i| quoted[i].refused.is_none());
        let mut choice = None;
        if let Some(i) = chosen {
            let skipped: Vec<_> = order
                .iter()
                .take_while(|&&j| j != i)
                .map(|&j| {
                    let why = quoted[j].refused.as_ref().map(|e| e.to_string()).unwrap_or_default();
                    (&offers[j].1, why)
                })
                .collect();
            choice =
                Some(Choice { index: i, reason: self.policy.reason_text(&offers[i].1, &skipped) });
        }
        for (rank, &i) in order.iter().enumerate() {
            quoted[i].rank = rank;
        }
        let refusal = match (&choice, offers.is_empty()) {
            (Some(_), _) => None,
            (None, true) => Some(Arc::new(self.no_offer(&required, refusal))),
            (None, false) => order.first().and_then(|&i| quoted[i].refused.clone()),
        };
        Ok(Quote { url: url.to_string(), status, challenges, offers: quoted, choice, refusal })
    }

    fn entries(
        &self,
        url: &Url,
        offer: &Offer,
        fee: Money,
        reference: &str,
        proof: Option<String>,
    ) -> Vec<LedgerEntry> {
        let entry = |kind, amount: &Money, fee: Money| LedgerEntry {
            id: 0,
            at: SystemTime::now(),
            host: host_of(url),
            url: url.to_string(),
            rail: offer.rail.to_string(),
            kind,
            amount: amount.clone(),
            fee,
            reference: reference.to_string(),
            proof: proof.clone(),
            receipt: None,
        };
        match &offer.funding {
            Funding::PerRequest => vec![entry(EntryKind::Payment, &offer.price, fee)],
            Funding::Session { deposit } => {
                let mut entries = Vec::new();
                if let Some(deposit) = deposit {
                    entries.push(entry(EntryKind::Deposit, deposit, fee.clone()));
                }
                let none = Money::zero(offer.price.asset.clone());
                entries.push(entry(EntryKind::Session, &offer.price, none));
                entries
            }
        }
    }

    /// What a payment that went through cost the budget: the price and fee when paid by
    /// itself, the deposit put up when drawn from a session.
    fn outlay(offer: &Offer, fee: &Money) -> Money {
        match &offer.funding {
            Funding::PerRequest => {
                offer.price.checked_add(fee).unwrap_or_else(|_| offer.price.clone())
            }
            Funding::Session { deposit } => deposit
                .as_ref()
                .and_then(|d| d.checked_add(fee).ok())
                .unwrap_or_else(|| Money::zero(offer.price.asset.clone())),
        }
    }

    /// Commits `reservation` for `offer` paid with `proof`: what it cost the budget, and its
    /// ledger entries (their ids).
    fn record(
        &self,
        url: &Url,
        offer: &Offer,
        proof: &Proof,
        reservation: Reservation,
    ) -> Vec<u64> {
        let proof_text = proof
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect::<Vec<_>>()
            .join("\n");
        let entries =
            self.entries(url, offer, proof.fee.clone(), &proof.reference, Some(proof_text));
        let session = matches!(offer.funding, Funding::Session { .. });
        let ids = self.budget.commit_with(
            reservation,
            &Self::outlay(offer, &proof.fee),
            session.then_some(proof.reference.as_str()),
            &entries,
        );
        self.emit(Event::Paid {
            rail: offer.rail,
            price: offer.price.clone(),
            fee: proof.fee.clone(),
            reference: proof.reference.clone(),
        });
        ids
    }

    /// The first offer a wallet makes to pay `req` up front, reserved: `None` when no wallet
    /// has one, or the policy or the budget refuses it (the 402 path then says why).
    fn up_front(&self, req: &Request) -> Option<(Arc<dyn Wallet>, Offer, Reservation)> {
        let url = req.url();
        let candidate = self
            .wallets
            .iter()
            .find_map(|w| w.up_front(req.method(), url).map(|offer| (w.clone(), offer)))?;
        let candidates = [candidate];
        match self.choose(&host_of(url), &candidates) {
            Ok((_, reservation, _)) => {
                let [(wallet, offer)] = candidates;
                Some((wallet, offer, reservation))
            }
            Err(e) => {
                tracing::debug!(error = %e, "not paying up front");
                None
            }
        }
    }

    /// Sends `req` with an up-front payment of `offer` (reserved as `reservation`). What the
    /// server accepted is committed and its answer returned (`Ok`); what it refused (402, or
    /// 410 for a session it no longer has) is released, never counted, and handed back
    /// (`Err`) with the refusal's 402 when it was one, for the usual path to pay.
    async fn send_up_front(
        &self,
        mut req: Request,
        (wallet, offer, reservation): (Arc<dyn Wallet>, Offer, Reservation),
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<std::result::Result<Response, Option<PaymentRequired>>> {
        let url = req.url().clone();
        self.emit(Event::Paying {
            rail: offer.rail,
            price: offer.price.clone(),
            summary: offer.summary.clone(),
        });
        let proof = match wallet.pay(&offer).await {
            Ok(proof) => proof,
            Err(e) => {
                // Nothing moved for a proof that was not made: the request goes out unpaid.
                tracing::debug!(error = %e, "the up-front payment was not made");
                self.budget.release(reservation);
                let response = next.run(req, extensions).await?;
                return Ok(match response.status() {
                    StatusCode::PAYMENT_REQUIRED => Err(Some(read_402(&url, response).await?)),
                    _ => Ok(response),
                });
            }
        };
        apply_proof(&mut req, &proof.headers);
        let response = match next.run(req, extensions).await {
            Ok(response) => response,
            Err(e) => {
                // Lost on the way: whether the server took it is unknown, so it counts.
                self.record(&url, &offer, &proof, reservation);
                return Err(e);
            }
        };
        let status = response.status();
        self.emit(Event::Served { url: url.to_string(), status: status.as_u16() });
        if status == StatusCode::PAYMENT_REQUIRED || status == StatusCode::GONE {
            self.budget.release(reservation);
            let required = match status {
                StatusCode::PAYMENT_REQUIRED => Some(read_402(&url, response).await?),
                _ => None,
            };
            let problem = required.as_ref().and_then(|r| r.body.as_ref());
            let headers = required.as_ref().map(|r| r.headers.clone()).unwrap_or_default();
            wallet.answered(&offer, status, &headers, problem).await.map_err(err)?;
            return Ok(Err(required));
        }
        let ids = self.record(&url, &offer, &proof, reservation);
        if let (Some(id), Some(receipt)) = (ids.last(), receipt_of(response.headers())) {
            self.ledger.add_receipt(*id, &receipt);
        }
        wallet.answered(&offer, status, response.headers(), None).await.map_err(err)?;
        Ok(Ok(response))
    }

    async fn pay_and_retry(
        &self,
        url: &Url,
        retry: Request,
        required: PaymentRequired,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> std::result::Result<Response, reqwest_middleware::Error> {
        let (offers, refusal) = self.offers(&required);
        self.emit(Event::PaymentRequired {
            url: url.to_string(),
            challenges: challenge_lines(&required.headers),
            offers: offers
                .iter()
                .map(|(_, o)| (o.rail, o.price.clone(), o.summary.clone()))
                .collect(),
        });
        if offers.is_empty() {
            return Err(err(self.no_offer(&required, refusal)));
        }
        let host = host_of(url);
        let ((wallet, offer), reservation, reason) = self.choose(&host, &offers).map_err(err)?;
        self.emit(Event::Chose { rail: offer.rail, price: offer.price.clone(), reason });
        self.emit(Event::Paying {
            rail: offer.rail,
            price: offer.price.clone(),
            summary: offer.summary.clone(),
        });
        let proof: Proof = match wallet.pay(offer).await {
            Ok(p) => p,
            Err(e @ ClientError::PaidWithoutProof(_)) => {
                // Money left (or may have): it counts, at the most it could have been.
                let worst = Self::outlay(offer, &offer.max_fee);
                let none = Money::zero(offer.price.asset.clone());
                let entries = self.entries(url, offer, none, "unknown", None);
                self.budget.commit_with(reservation, &worst, None, &entries);
                return Err(err(e));
            }
            Err(e) => {
                self.budget.release(reservation);
                return Err(err(e));
            }
        };
        let ids = self.record(url, offer, &proof, reservation);
        // Saved at once: if the retry is lost to the network, the next attempt reuses what was
        // bought instead of paying again.
        if proof.reusable {
            self.save_proof(url, offer.rail, proof.headers.clone());
        }

        let mut retry = retry;
        apply_proof(&mut retry, &proof.headers);
        self.emit(Event::Retrying { url: url.to_string(), rail: offer.rail });
        let response = next.run(retry, extensions).await?;
        self.emit(Event::Served { url: url.to_string(), status: response.status().as_u16() });
        let status = response.status();
        if status == StatusCode::PAYMENT_REQUIRED {
            self.forget_proof(url);
            let headers = response.headers().clone();
            let problem = read_bounded(response)
                .await
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            wallet.answered(offer, status, &headers, problem.as_ref()).await.map_err(err)?;
            let detail = problem
                .as_ref()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
                .unwrap_or_else(|| "no detail given".into());
            return Err(err(ClientError::ProofRejected { status: status.as_u16(), detail }));
        }
        if let (Some(id), Some(receipt)) = (ids.last(), receipt_of(response.headers())) {
            self.ledger.add_receipt(*id, &receipt);
        }
        wallet.answered(offer, status, response.headers(), None).await.map_err(err)?;
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
        let retry = req.try_clone();
        // A session's later request pays up front when its body can be sent again (should the
        // server refuse it, the 402 is paid the usual way).
        let up_front = retry.as_ref().and_then(|_| self.up_front(&req));
        let (first, used) = match (up_front, &retry) {
            (Some(chosen), Some(retry)) => {
                let again = retry.try_clone().ok_or_else(|| err(ClientError::BodyNotReplayable))?;
                match self.send_up_front(req, chosen, extensions, next.clone()).await? {
                    Ok(response) => return Ok(response),
                    Err(Some(required)) => (Unpaid::Read(required), None),
                    Err(None) => {
                        let (response, used) = self
                            .send_with_saved_proof(again, &url, extensions, next.clone())
                            .await?;
                        (Unpaid::Response(response), used)
                    }
                }
            }
            _ => {
                let (response, used) =
                    self.send_with_saved_proof(req, &url, extensions, next.clone()).await?;
                (Unpaid::Response(response), used)
            }
        };
        let first = match first {
            Unpaid::Response(response) if response.status() != StatusCode::PAYMENT_REQUIRED => {
                return Ok(response);
            }
            Unpaid::Response(response) if origin_of(response.url()) != origin_of(&url) => {
                return Err(err(ClientError::InvalidChallenge(format!(
                    "the 402 came from {} after a redirect; a proof for another origin would not be sent back there",
                    origin_of(response.url())
                ))));
            }
            unpaid => unpaid,
        };
        let Some(retry) = retry else {
            return Err(err(ClientError::BodyNotReplayable));
        };
        // One payment per path at a time. Whoever waited here may find a proof that was bought
        // meanwhile: try it before paying.
        let lock = self.payment_lock(&url);
        let _turn = lock.lock().await;
        let bought_meanwhile = self
            .saved_proof(&url)
            .is_some_and(|now| used.as_ref().is_none_or(|before| before.headers != now.headers));
        let first = if bought_meanwhile {
            let again = retry.try_clone().ok_or_else(|| err(ClientError::BodyNotReplayable))?;
            let (response, _) =
                self.send_with_saved_proof(again, &url, extensions, next.clone()).await?;
            if response.status() != StatusCode::PAYMENT_REQUIRED {
                return Ok(response);
            }
            read_402(&url, response).await?
        } else {
            match first {
                Unpaid::Response(response) => read_402(&url, response).await?,
                Unpaid::Read(required) => required,
            }
        };
        self.pay_and_retry(&url, retry, first, extensions, next).await
    }
}

impl PaymentMiddleware {
    /// Sends `req` with the saved proof that may cover it, if any. A proof bought for exactly
    /// this path that gets a 402 is forgotten (expired); one bought for a neighbouring path is
    /// kept, as it still serves its own path.
    async fn send_with_saved_proof(
        &self,
        mut req: Request,
        url: &Url,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<(Response, Option<SavedProof>)> {
        let saved = self.saved_proof(url);
        if let Some(saved) = &saved {
            self.emit(Event::ReusingProof { url: url.to_string(), rail: saved.rail });
            apply_proof(&mut req, &saved.headers);
        }
        let response = next.run(req, extensions).await?;
        if response.status() == StatusCode::PAYMENT_REQUIRED
            && saved.as_ref().is_some_and(|s| s.path == url.path())
        {
            self.forget_proof(url);
        }
        Ok((response, saved))
    }
}

/// The server's receipt for a payment, as `Header: value`, if it sent one.
fn receipt_of(headers: &http::HeaderMap) -> Option<String> {
    RECEIPT_HEADERS.iter().find_map(|name| {
        let value = headers.get(*name)?;
        Some(format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
    })
}

/// The 402's challenge header lines as sent (`Name: value`), for people to read.
fn challenge_lines(headers: &http::HeaderMap) -> Vec<String> {
    ["www-authenticate", "payment-required"]
        .iter()
        .flat_map(|name| {
            headers.get_all(*name).iter().map(move |v| {
                let shown = if *name == "www-authenticate" {
                    "WWW-Authenticate"
                } else {
                    "PAYMENT-REQUIRED"
                };
                format!("{shown}: {}", String::from_utf8_lossy(v.as_bytes()))
            })
        })
        .collect()
}

/// Adds the proof's headers. An `Authorization` proof replaces only values of its own scheme,
/// so the caller's own credentials for the API (e.g. `Bearer`) still go out.
fn apply_proof(req: &mut Request, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        if name == http::header::AUTHORIZATION {
            let scheme = auth::scheme_of_bytes(value.as_bytes()).to_vec();
            let kept: Vec<HeaderValue> = req
                .headers()
                .get_all(name)
                .iter()
                .filter(|v| !auth::scheme_of_bytes(v.as_bytes()).eq_ignore_ascii_case(&scheme))
                .cloned()
                .collect();
            req.headers_mut().remove(name);
            for v in kept {
                req.headers_mut().append(name.clone(), v);
            }
            req.headers_mut().append(name.clone(), value.clone());
        } else {
            req.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

async fn read_402(
    url: &Url,
    response: Response,
) -> std::result::Result<PaymentRequired, reqwest_middleware::Error> {
    let headers = response.headers().clone();
    // Liberal: a malformed challenge (or field line) is skipped, and the others stay payable.
    let read = auth::read_challenges_from(&headers);
    for skipped in &read.skipped {
        tracing::debug!(error = %skipped, "skipping an unreadable challenge");
    }
    let challenges = read.challenges;
    let body = read_bounded(response).await.and_then(|b| serde_json::from_slice(&b).ok());
    Ok(PaymentRequired { url: url.clone(), challenges, headers, body })
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
