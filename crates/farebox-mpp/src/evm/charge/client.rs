//! The client side of the `evm` charge: signs an EIP-3009 `TransferWithAuthorization` in the
//! token's EIP-712 domain with the challenge-bound nonce `keccak256(id ‖ realm)`,
//! `validAfter = 0`, `validBefore = expires`. Nothing moves until the server settles.

use async_trait::async_trait;
use farebox_core::{Asset, Money, Token};
use farebox_evm::eip3009::{self, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, PrivateKeySigner, U256};
use farebox_wallet::{ClientError, Funding, Offer, PaymentRequired, Proof};

use super::{
    CREDENTIAL_AUTHORIZATION, EvmChargeRequest, INTENT, METHOD, TokenName, challenge_nonce,
    payload, source,
};
use crate::client::{Details, Payer, buys, details_of, proof};
use crate::{Challenge, Credential};

/// Pays `evm` charges by signing authorizations with `signer`.
pub(crate) struct EvmChargePayer {
    pub signer: PrivateKeySigner,
    /// EIP-712 domains of tokens whose challenges do not name theirs.
    pub domains: Vec<(u64, Address, TokenName)>,
}

/// What an `evm` charge offer carries to its payment.
struct ChargeOffer {
    challenge: Challenge,
    request: EvmChargeRequest,
    valid_before: u64,
    domain: TokenName,
}

impl EvmChargePayer {
    /// The EIP-712 domain to sign `request`'s authorization in: the challenge's, a configured
    /// one, or a known USDC deployment's.
    fn token_name(&self, request: &EvmChargeRequest) -> Option<TokenName> {
        if let Some(named) = &request.authorization {
            return Some(named.clone());
        }
        if let Some((_, _, name)) =
            self.domains.iter().find(|(c, t, _)| *c == request.chain_id && *t == request.currency)
        {
            return Some(name.clone());
        }
        farebox_evm::usdc::KNOWN
            .iter()
            .find(|d| d.chain_id == request.chain_id && d.address == request.currency)
            .map(|d| TokenName { name: d.name.into(), version: d.version.into() })
    }
}

#[async_trait]
impl Payer for EvmChargePayer {
    fn names(&self) -> (&'static str, &'static str) {
        (METHOD, INTENT)
    }

    fn offer(
        &self,
        challenge: Challenge,
        _response: &PaymentRequired,
    ) -> Result<Option<Offer>, ClientError> {
        let request = EvmChargeRequest::from_json(&challenge.request)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP evm request: {e}")))?;
        if !request.credential_types.iter().any(|t| t == CREDENTIAL_AUTHORIZATION) {
            return Ok(None);
        }
        let Some(expires) = challenge.expires.as_deref() else {
            return Err(ClientError::InvalidChallenge(
                "an MPP evm challenge needs `expires` (the authorization's validBefore)".into(),
            ));
        };
        let valid_before = crate::time::parse(expires)
            .map_err(|e| ClientError::InvalidChallenge(format!("MPP expires: {e}")))?;
        if valid_before <= crate::time::unix_now()? {
            return Err(ClientError::InvalidChallenge("the MPP challenge has expired".into()));
        }
        let amount: u128 = request
            .amount
            .try_into()
            .map_err(|_| ClientError::InvalidChallenge("MPP amount too large".into()))?;
        let Some(domain) = self.token_name(&request) else {
            tracing::warn!(
                token = %request.currency,
                chain_id = request.chain_id,
                "the MPP evm challenge names no EIP-712 domain for its token and none is configured (MppWallet::evm_domain)"
            );
            return Ok(None);
        };
        let token = Token {
            network: farebox_evm::network::caip2(request.chain_id),
            address: format!("{:#x}", request.currency),
            symbol: domain.name.clone(),
            decimals: request.decimals,
        };
        let price = Money::new(Asset::Token(token), amount);
        Ok(Some(Offer {
            rail: "mpp",
            summary: format!("MPP EVM charge of {price} for {}", challenge.realm),
            max_fee: Money::zero(price.asset.clone()),
            funding: Funding::PerRequest,
            price,
            payee: Some(format!("{:#x}", request.recipient)),
            buys: Some(buys(&challenge, None)),
            details: Box::new(ChargeOffer { challenge, request, valid_before, domain }),
        }))
    }

    async fn pay(&self, offer: &Offer, details: &Details) -> Result<Proof, ClientError> {
        let ChargeOffer { challenge, request, valid_before, domain } = details_of(details)?;
        let signer = &self.signer;
        let auth = TransferWithAuthorization {
            from: signer.address(),
            to: request.recipient,
            value: request.amount,
            validAfter: U256::ZERO,
            validBefore: U256::from(*valid_before),
            nonce: challenge_nonce(&challenge.id, &challenge.realm),
        };
        let domain = TokenDomain::new(
            domain.name.clone(),
            domain.version.clone(),
            request.chain_id,
            request.currency,
        );
        let signature = eip3009::sign(signer, &domain, &auth);
        let mut credential = Credential::new(challenge, payload(&auth, &signature));
        credential.source = Some(source(request.chain_id, signer.address()));
        proof(&credential, Money::zero(offer.price.asset.clone()), format!("{:#x}", auth.nonce))
    }
}
