//! Signing round trips through `parse_invoice`, and parsing never panics on arbitrary input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use farebox_lightning::bolt11::{InvoiceDescription, MAX_DESCRIPTION_LEN};
use farebox_lightning::{
    Bolt11Error, Currency, InvoiceParams, LightningError, parse_bolt11, sign_invoice,
};
use proptest::prelude::*;

fn key() -> SecretKey {
    SecretKey::from_slice(&[0x42; 32]).unwrap()
}

#[test]
fn signed_invoice_round_trips() {
    let params = InvoiceParams {
        currency: Currency::Regtest,
        payment_hash: [7; 32],
        amount_msat: Some(123_456),
        description: "GET /v1/forecast".into(),
        expiry: Duration::from_millis(90_500), // rounds up to 91 s
        min_final_cltv_expiry_delta: 40,
        payment_secret: [9; 32],
        timestamp: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(999),
    };
    let bolt11 = sign_invoice(&params, &key()).unwrap();
    assert!(bolt11.starts_with("lnbcrt1234560p1"), "{bolt11}");

    let parsed = parse_bolt11(&bolt11).unwrap();
    assert_eq!(parsed.currency, Currency::Regtest);
    assert_eq!(parsed.network(), bitcoin::Network::Regtest);
    assert_eq!(parsed.amount_msat, Some(123_456));
    assert_eq!(parsed.payment_hash, [7; 32]);
    assert_eq!(parsed.payment_secret, [9; 32]);
    assert_eq!(parsed.description, InvoiceDescription::Direct("GET /v1/forecast".into()));
    assert_eq!(parsed.timestamp, 1_700_000_000);
    assert_eq!(parsed.expiry, Duration::from_secs(91));
    assert_eq!(parsed.min_final_cltv_expiry_delta, 40);
    assert_eq!(parsed.payee, PublicKey::from_secret_key(&Secp256k1::new(), &key()));

    // Upper case (QR form) is the same invoice.
    assert_eq!(parse_bolt11(&bolt11.to_uppercase()).unwrap(), parsed);
}

#[test]
fn defaults_amountless_and_other_networks() {
    let mut params = InvoiceParams::new([1; 32], None, "donation");
    assert_eq!(params.currency, Currency::Regtest);
    let parsed = parse_bolt11(&sign_invoice(&params, &key()).unwrap()).unwrap();
    assert_eq!(parsed.amount_msat, None);
    assert_eq!(parsed.expiry, Duration::from_secs(3600));
    assert_eq!(parsed.min_final_cltv_expiry_delta, 18);
    assert!(!parsed.is_expired(SystemTime::now()));

    for (currency, prefix) in [
        (Currency::Bitcoin, "lnbc1"),
        (Currency::BitcoinTestnet, "lntb1"),
        (Currency::Signet, "lntbs1"),
    ] {
        params.currency = currency.clone();
        let bolt11 = sign_invoice(&params, &key()).unwrap();
        assert!(bolt11.starts_with(prefix), "{bolt11}");
        assert_eq!(parse_bolt11(&bolt11).unwrap().currency, currency);
    }
}

#[test]
fn tampering_breaks_checksum() {
    let params = InvoiceParams::new([3; 32], Some(1000), "x");
    let bolt11 = sign_invoice(&params, &key()).unwrap();
    // Change the amount in the HRP: checksum no longer matches.
    let tampered = bolt11.replacen("lnbcrt10n1", "lnbcrt20n1", 1);
    assert!(matches!(parse_bolt11(&tampered), Err(Bolt11Error::Bech32(_))));
}

#[test]
fn sign_refuses_bad_requests() {
    let mut params = InvoiceParams::new([1; 32], Some(1), "d".repeat(MAX_DESCRIPTION_LEN));
    assert!(sign_invoice(&params, &key()).is_ok());
    params.description.push('d');
    assert!(matches!(sign_invoice(&params, &key()), Err(LightningError::InvalidRequest(_))));

    let mut params = InvoiceParams::new([1; 32], Some(21_000_001 * 100_000_000 * 1000), "too much");
    assert!(matches!(sign_invoice(&params, &key()), Err(LightningError::InvalidRequest(_))));
    params.amount_msat = Some(1);
    params.timestamp = UNIX_EPOCH - Duration::from_secs(1);
    assert!(matches!(sign_invoice(&params, &key()), Err(LightningError::InvalidRequest(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        let _ = parse_bolt11(&s);
    }

    #[test]
    fn bech32_alphabet_strings_never_panic(
        hrp in "(ln|LN)(bc|tb|bcrt|tbs|sb|xx)?[0-9]{0,12}[munpx]?",
        data in "[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{0,1200}",
    ) {
        let _ = parse_bolt11(&format!("{hrp}1{data}"));
    }

    #[test]
    fn mutated_valid_invoices_never_panic(pos in 0usize..400, c in "[qpzry9x8gf2tvdw0s3jn54khce6mua7l]") {
        let bolt11 = sign_invoice(&InvoiceParams::new([5; 32], Some(1000), "fuzz"), &key()).unwrap();
        let mut chars: Vec<char> = bolt11.chars().collect();
        let i = pos % chars.len();
        chars[i] = c.chars().next().unwrap();
        let mutated: String = chars.into_iter().collect();
        if let Ok(parsed) = parse_bolt11(&mutated) {
            // bech32 guarantees detection of any single-character substitution.
            prop_assert_eq!(mutated, bolt11);
            prop_assert_eq!(parsed.amount_msat, Some(1000));
        }
    }
}
