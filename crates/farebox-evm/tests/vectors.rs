//! Golden vectors from `shared/reference/vectors/x402_eip712.py` and `ecrecover.py`, and the
//! signature rules FiatToken enforces.

use farebox_evm::eip3009::{self, SignatureError, TokenDomain, TransferWithAuthorization};
use farebox_evm::{Address, B256, PrivateKeySigner, U256, usdc};

fn b256(s: &str) -> B256 {
    s.parse().unwrap()
}

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

/// The x402 v2 spec example authorization (Base Sepolia).
fn spec_auth() -> TransferWithAuthorization {
    TransferWithAuthorization {
        from: addr("0x857b06519E91e3A54538791bDbb0E22373e36b66"),
        to: addr("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
        value: U256::from(10_000u64),
        validAfter: U256::from(1_740_672_089u64),
        validBefore: U256::from(1_740_672_154u64),
        nonce: b256("0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"),
    }
}

const SPEC_SIG: &str = "2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c";

fn spec_sig() -> Vec<u8> {
    hex(SPEC_SIG)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn type_hashes() {
    assert_eq!(
        eip3009::TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
        b256("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
    );
    assert_eq!(
        eip3009::RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
        b256("0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8")
    );
    assert_eq!(
        eip3009::CANCEL_AUTHORIZATION_TYPEHASH,
        b256("0x158b0a9edf7a828aad02f63cd515c68ef2f50ba807396f6d12842833a1597429")
    );
    assert_eq!(
        eip3009::EIP712_DOMAIN_TYPEHASH,
        b256("0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f")
    );
}

#[test]
fn usdc_domain_separators() {
    assert_eq!(
        usdc::BASE.domain().separator(),
        b256("0x02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f")
    );
    assert_eq!(
        usdc::BASE_SEPOLIA.domain().separator(),
        b256("0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818")
    );
    assert_eq!(usdc::for_chain(8453).map(|d| d.name), Some("USD Coin"));
    assert_eq!(usdc::for_chain(84532).map(|d| d.name), Some("USDC"));
    assert_eq!(usdc::for_chain(31337), None);
}

#[test]
fn spec_example_struct_hash_and_digest() {
    assert_eq!(
        eip3009::struct_hash(&spec_auth()),
        b256("0x49ad644555c7bdf3ea4fc022a4940ae5589b230b1dde0065c5504fa19bbe39a4")
    );
    let domain = usdc::BASE_SEPOLIA.domain();
    assert_eq!(
        eip3009::signing_hash(&domain.separator(), &spec_auth()),
        b256("0xf256992871671abcb27ff92885a7afa46218724e5fc0bac35d050115aa1d22e6")
    );
}

#[test]
fn spec_example_signature_recovers_to_the_payer() {
    let digest = usdc::BASE_SEPOLIA.domain().signing_hash(&spec_auth());
    assert_eq!(
        eip3009::recover(&digest, &spec_sig()),
        Ok(addr("0x857b06519E91e3A54538791bDbb0E22373e36b66"))
    );
}

#[test]
fn wrong_domain_name_recovers_someone_else() {
    let domain = TokenDomain::new("USD Coin", "2", 84532, usdc::BASE_SEPOLIA.address);
    let recovered = eip3009::recover(&domain.signing_hash(&spec_auth()), &spec_sig()).unwrap();
    assert_eq!(recovered, addr("0xed07b31fa76779c7a25ba712fb1bfbecefa2ad7e"));
    assert_ne!(recovered, spec_auth().from);
}

#[test]
fn anvil_key_zero_address() {
    let signer: PrivateKeySigner =
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80".parse().unwrap();
    assert_eq!(signer.address(), addr("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"));
    let accounts = farebox_evm::anvil::dev_accounts();
    assert_eq!(accounts.len(), 10);
    assert_eq!(accounts[0].address, signer.address());
    assert_eq!(accounts[1].address, addr("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"));
}

#[test]
fn v_in_0_1_27_28_is_accepted() {
    let digest = usdc::BASE_SEPOLIA.domain().signing_hash(&spec_auth());
    let payer = spec_auth().from;
    let mut sig = spec_sig();
    assert_eq!(sig[64], 28);
    for v in [1u8, 28] {
        sig[64] = v;
        assert_eq!(eip3009::recover(&digest, &sig), Ok(payer), "v = {v}");
        assert_eq!(eip3009::to_vrs(&sig).map(|(v, _, _)| v), Ok(28));
    }
    // The other parity recovers a different key, not an error and not the payer.
    for v in [0u8, 27] {
        sig[64] = v;
        let other = eip3009::recover(&digest, &sig);
        assert!(other.is_ok_and(|a| a != payer), "v = {v}");
        assert_eq!(eip3009::to_vrs(&sig).map(|(v, _, _)| v), Ok(27));
    }
    for v in [2u8, 26, 29, 35, 36, 255] {
        sig[64] = v;
        assert_eq!(eip3009::recover(&digest, &sig), Err(SignatureError::InvalidV(v)));
    }
}

#[test]
fn fresh_signatures_round_trip() {
    let signer = PrivateKeySigner::random();
    let domain = TokenDomain::new("USDC", "2", 84532, Address::repeat_byte(9));
    let auth = TransferWithAuthorization { from: signer.address(), ..spec_auth() };
    let sig = eip3009::sign(&signer, &domain, &auth);
    assert!(sig[64] == 27 || sig[64] == 28);
    let digest = domain.signing_hash(&auth);
    assert_eq!(eip3009::recover(&digest, &sig), Ok(signer.address()));
    let mut zero_one = sig;
    zero_one[64] -= 27;
    assert_eq!(eip3009::recover(&digest, &zero_one), Ok(signer.address()));
}

/// secp256k1 n.
fn curve_order() -> U256 {
    "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141".parse().unwrap()
}

#[test]
fn high_s_is_rejected() {
    // (r, n - s, v ^ 1) is the same signature's malleable twin: valid ECDSA, refused by FiatToken.
    let digest = usdc::BASE_SEPOLIA.domain().signing_hash(&spec_auth());
    let sig = spec_sig();
    let s = U256::from_be_slice(&sig[32..64]);
    let mut twin = sig.clone();
    twin[32..64].copy_from_slice(&(curve_order() - s).to_be_bytes::<32>());
    twin[64] = if sig[64] == 27 { 28 } else { 27 };
    assert_eq!(eip3009::recover(&digest, &twin), Err(SignatureError::HighS));
    assert_eq!(eip3009::to_vrs(&twin), Err(SignatureError::HighS));
}

#[test]
fn garbage_signatures_are_typed_errors() {
    let digest = usdc::BASE_SEPOLIA.domain().signing_hash(&spec_auth());
    assert_eq!(eip3009::recover(&digest, &[]), Err(SignatureError::InvalidLength(0)));
    assert_eq!(eip3009::recover(&digest, &[0u8; 64]), Err(SignatureError::InvalidLength(64)));
    assert_eq!(eip3009::recover(&digest, &[0u8; 66]), Err(SignatureError::InvalidLength(66)));
    let mut zero = [0u8; 65];
    zero[64] = 27;
    assert_eq!(eip3009::recover(&digest, &zero), Err(SignatureError::InvalidR));
    let mut r_too_big = spec_sig();
    r_too_big[0..32].copy_from_slice(&[0xff; 32]);
    assert_eq!(eip3009::recover(&digest, &r_too_big), Err(SignatureError::InvalidR));
    let mut s_zero = spec_sig();
    s_zero[32..64].fill(0);
    assert_eq!(eip3009::recover(&digest, &s_zero), Err(SignatureError::InvalidS));
    // An r that is no point's x coordinate: nothing recovers.
    let mut no_point = spec_sig();
    no_point[0..32].copy_from_slice(&U256::from(5u8).to_be_bytes::<32>());
    let result = eip3009::recover(&digest, &no_point);
    assert!(
        matches!(result, Err(SignatureError::Unrecoverable))
            || result.is_ok_and(|a| a != spec_auth().from)
    );
}
