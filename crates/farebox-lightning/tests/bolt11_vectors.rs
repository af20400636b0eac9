//! The BOLT11 spec's example invoices (lightning/bolts `11-payment-encoding.md` @a377265, copied
//! in /work/shared/reference/bolt11.md): every valid example parses with its documented fields,
//! every invalid one is refused for the reason the spec gives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use farebox_lightning::bolt11::InvoiceDescription as Desc;
use farebox_lightning::{Bolt11Error, Currency, LightningError, parse_bolt11, parse_invoice};

/// Every spec example is signed by this node (priv key e126f68f…b734).
const SPEC_PAYEE: &str = "03e7156ae33b0a208d0744199163177e909e80176e55d97a2f221ede0f934dd9ad";
/// All examples use payment secret 0x11…11.
const SPEC_SECRET: [u8; 32] = [0x11; 32];

struct Valid {
    name: &'static str,
    invoice: &'static str,
    currency: Currency,
    amount_msat: Option<u64>,
    payment_hash: &'static str,
    description: Desc,
    timestamp: u64,
    expiry_secs: u64,
    min_final_cltv: u64,
    /// The payee when it is not [`SPEC_PAYEE`].
    payee: Option<&'static str>,
}

/// The high-S example is the donation example with `s` replaced by `n - s` and the same
/// recovery id. BOLT11 (lightning/bolts#1284) requires accepting it, since recovery
/// (`secp256k1_ecdsa_recover`, as in LND, CLN, eclair and LDK) accepts high-S; the key it
/// recovers is then a different one than the original signer's. The example only asserts
/// acceptance; this is the key libsecp256k1 recovers.
const HIGH_S_RECOVERED_PAYEE: &str =
    "02d0139ce7427d6dfffd26a326c18be754ef1e64672b42694ba5b23ef6e6e7803d";

fn hash(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

fn valid_vectors() -> Vec<Valid> {
    vec![
        Valid {
            name: "donation, no amount",
            invoice: "lnbc1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaq9qrsgq357wnc5r2ueh7ck6q93dj32dlqnls087fxdwk8qakdyafkq3yap9us6v52vjjsrvywa6rt52cm9r9zqt8r2t7mlcwspyetp5h2tztugp9lfyql",
            currency: Currency::Bitcoin,
            amount_msat: None,
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("Please consider supporting this project".into()),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "coffee, 60 s expiry",
            invoice: "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkpmdla2087ne0xh8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh",
            currency: Currency::Bitcoin,
            amount_msat: Some(250_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("1 cup coffee".into()),
            timestamp: 1496314658,
            expiry_secs: 60,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "utf-8 description",
            invoice: "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpu9qrsgqhtjpauu9ur7fw2thcl4y9vfvh4m9wlfyz2gem29g5ghe2aak2pm3ps8fdhtceqsaagty2vph7utlgj48u0ged6a337aewvraedendscp573dxr",
            currency: Currency::Bitcoin,
            amount_msat: Some(250_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("ナンセンス 1杯".into()),
            timestamp: 1496314658,
            expiry_secs: 60,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "hashed description",
            invoice: "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqs9qrsgq7ea976txfraylvgzuxs8kgcw23ezlrszfnh8r6qtfpr6cxga50aj6txm9rxrydzd06dfeawfk6swupvz4erwnyutnjq7x39ymw6j38gp7ynn44",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "testnet, P2PKH fallback",
            invoice: "lntb20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqfpp3x9et2e20v6pu37c5d9vax37wxq72un989qrsgqdj545axuxtnfemtpwkc45hx9d2ft7x04mt8q7y6t0k2dge9e7h8kpy9p34ytyslj3yu569aalz2xdk8xkd7ltxqld94u8h2esmsmacgpghe9k8",
            currency: Currency::BitcoinTestnet,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "fallback + routing hints",
            invoice: "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqsfpp3qjmp7lwpagxun9pygexvgpjdc4jdj85fr9yq20q82gphp2nflc7jtzrcazrra7wwgzxqc8u7754cdlpfrmccae92qgzqvzq2ps8pqqqqqqpqqqqq9qqqvpeuqafqxu92d8lr6fvg0r5gv0heeeqgcrqlnm6jhphu9y00rrhy4grqszsvpcgpy9qqqqqqgqqqqq7qqzq9qrsgqdfjcdk6w3ak5pca9hwfwfh63zrrz06wwfya0ydlzpgzxkn5xagsqz7x9j4jwe7yj7vaf2k9lqsdk45kts2fd0fkr28am0u4w95tt2nsq76cqw0",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "P2SH fallback",
            invoice: "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqfppj3a24vwu6r8ejrss3axul8rxldph2q7z99qrsgqz6qsgww34xlatfj6e3sngrwfy3ytkt29d2qttr8qz2mnedfqysuqypgqex4haa2h8fx3wnypranf3pdwyluftwe680jjcfp438u82xqphf75ym",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "P2WPKH fallback",
            invoice: "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqfppqw508d6qejxtdg4y5r3zarvary0c5xw7k9qrsgqt29a0wturnys2hhxpner2e3plp6jyj8qx7548zr2z7ptgjjc7hljm98xhjym0dg52sdrvqamxdezkmqg4gdrvwwnf0kv2jdfnl4xatsqmrnsse",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "P2WSH fallback",
            invoice: "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygshp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqfp4qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q9qrsgq9vlvyj8cqvq6ggvpwd53jncp9nwc47xlrsnenq2zp70fq83qlgesn4u3uyf4tesfkkwwfg3qs54qe426hp3tz7z6sweqdjg05axsrjqp9yrrwc",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "P2TR fallback",
            invoice: "lnbc20m1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqsfp4pptdvg0d2nj99568qn6ssdy4cygnwuxgw2ukmnwgwz7jpqjz2kszs9qrsgqy606dznq28exnydt2r4c29y56xjtn3sk4mhgjtl4pg2y4ar3249rq4ajlmj9jy8zvlzw7cr8mggqzm842xfr0v72rswzq9xvr4hknfsqwmn6xd",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Hash(hash("3925b6f67e2c340036ed12093dd44e0368df1b6ea26c53dbe4811f58fd5db8c1")),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "pico-BTC amount",
            invoice: "lnbc9678785340p1pwmna7lpp5gc3xfm08u9qy06djf8dfflhugl6p7lgza6dsjxq454gxhj9t7a0sd8dgfkx7cmtwd68yetpd5s9xar0wfjn5gpc8qhrsdfq24f5ggrxdaezqsnvda3kkum5wfjkzmfqf3jkgem9wgsyuctwdus9xgrcyqcjcgpzgfskx6eqf9hzqnteypzxz7fzypfhg6trddjhygrcyqezcgpzfysywmm5ypxxjemgw3hxjmn8yptk7untd9hxwg3q2d6xjcmtv4ezq7pqxgsxzmnyyqcjqmt0wfjjq6t5v4khxsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygsxqyjw5qcqp2rzjq0gxwkzc8w6323m55m4jyxcjwmy7stt9hwkwe2qxmy8zpsgg7jcuwz87fcqqeuqqqyqqqqlgqqqqn3qq9q9qrsgqrvgkpnmps664wgkp43l22qsgdw4ve24aca4nymnxddlnp8vh9v2sdxlu5ywdxefsfvm0fq3sesf08uf6q9a2ke0hc9j6z6wlxg5z5kqpu2v9wz",
            currency: Currency::Bitcoin,
            amount_msat: Some(967_878_534),
            payment_hash: "462264ede7e14047e9b249da94fefc47f41f7d02ee9b091815a5506bc8abf75f",
            description: Desc::Direct("Blockstream Store: 88.85 USD for Blockstream Ledger Nano S x 1, \"Back In My Day\" Sticker x 2, \"I Got Lightning Working\" Sticker x 2 and 1 more items".into()),
            timestamp: 1572468703,
            expiry_secs: 604800,
            min_final_cltv: 10,
            payee: None,
        },
        Valid {
            name: "features 8, 14, 99",
            invoice: "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqqsgq2a25dxl5hrntdtn6zvydt7d66hyzsyhqs4wdynavys42xgl6sgx9c4g7me86a27t07mdtfry458rtjr0v92cnmswpsjscgt2vcse3sgpz3uapa",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_500_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("coffee beans".into()),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "all upper case",
            invoice: "LNBC25M1PVJLUEZPP5QQQSYQCYQ5RQWZQFQQQSYQCYQ5RQWZQFQQQSYQCYQ5RQWZQFQYPQDQ5VDHKVEN9V5SXYETPDEESSP5ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYG3ZYGS9Q5SQQQQQQQQQQQQQQQQSGQ2A25DXL5HRNTDTN6ZVYDT7D66HYZSYHQS4WDYNAVYS42XGL6SGX9C4G7ME86A27T07MDTFRY458RTJR0V92CNMSWPSJSCGT2VCSE3SGPZ3UAPA",
            currency: Currency::Bitcoin,
            amount_msat: Some(2_500_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("coffee beans".into()),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "payment metadata",
            invoice: "lnbc10m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdp9wpshjmt9de6zqmt9w3skgct5vysxjmnnd9jx2mq8q8a04uqsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q2gqqqqqqsgq7hf8he7ecf7n4ffphs6awl9t6676rrclv9ckg3d3ncn7fct63p6s365duk5wrk202cfy3aj5xnnp5gs3vrdvruverwwq7yzhkf5a3xqpd05wjc",
            currency: Currency::Bitcoin,
            amount_msat: Some(1_000_000_000),
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("payment metadata inside".into()),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: None,
        },
        Valid {
            name: "high-S signature, key recovered",
            invoice: "lnbc1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaq9qrsgq357wnc5r2ueh7ck6q93dj32dlqnls087fxdwk8qakdyafkq3yap2r09nt4ndd0unm3z9u5t48y6ucv4r5sg7lk98c77ctvjczkspk5qprc90gx",
            currency: Currency::Bitcoin,
            amount_msat: None,
            payment_hash: "0001020304050607080900010203040506070809000102030405060708090102",
            description: Desc::Direct("Please consider supporting this project".into()),
            timestamp: 1496314658,
            expiry_secs: 3600,
            min_final_cltv: 18,
            payee: Some(HIGH_S_RECOVERED_PAYEE),
        },
    ]
}

#[test]
fn every_valid_spec_example_parses_with_documented_fields() {
    let vectors = valid_vectors();
    assert_eq!(vectors.len(), 15, "16 spec examples minus the stale wrong-length-fields one");
    for v in vectors {
        let parsed = parse_bolt11(v.invoice).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(parsed.currency, v.currency, "{}", v.name);
        assert_eq!(parsed.amount_msat, v.amount_msat, "{}", v.name);
        assert_eq!(parsed.payment_hash, hash(v.payment_hash), "{}", v.name);
        assert_eq!(parsed.description, v.description, "{}", v.name);
        assert_eq!(parsed.payee.to_string(), v.payee.unwrap_or(SPEC_PAYEE), "{}", v.name);
        assert_eq!(parsed.payment_secret, SPEC_SECRET, "{}", v.name);
        assert_eq!(parsed.timestamp, v.timestamp, "{}", v.name);
        assert_eq!(parsed.expiry, Duration::from_secs(v.expiry_secs), "{}", v.name);
        assert_eq!(parsed.min_final_cltv_expiry_delta, v.min_final_cltv, "{}", v.name);
        // All examples are from 2017/2019 with expiries of at most a week.
        assert!(parsed.is_expired(SystemTime::now()), "{}", v.name);
        assert!(!parsed.is_expired(UNIX_EPOCH + Duration::from_secs(v.timestamp)), "{}", v.name);
    }
}

#[test]
fn network_follows_prefix() {
    let testnet = valid_vectors().into_iter().find(|v| v.name.starts_with("testnet")).unwrap();
    assert_eq!(parse_bolt11(testnet.invoice).unwrap().network(), bitcoin::Network::Testnet);
    let mainnet = &valid_vectors()[0];
    assert_eq!(parse_bolt11(mainnet.invoice).unwrap().network(), bitcoin::Network::Bitcoin);
}

#[test]
fn expiry_boundary_is_strictly_after() {
    let v = &valid_vectors()[1]; // 60 s expiry
    let parsed = parse_bolt11(v.invoice).unwrap();
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    assert_eq!(parsed.expires_at(), v.timestamp + 60);
    assert!(!parsed.is_expired(at(v.timestamp + 60)));
    assert!(parsed.is_expired(at(v.timestamp + 60) + Duration::from_millis(1)));
    assert!(!parsed.is_expired(UNIX_EPOCH - Duration::from_secs(1)));
}

/// "Same, but including fields which must be ignored" (added 2020) carries `p`, `h`, `s` and
/// `n` fields of the wrong length. lightning/bolts#1243 (2025) made those fatal ("MUST fail the
/// payment if any field with fixed data_length (p, h, s, n) does not have the correct
/// length"), which is the rule the spec text now states and the one we follow; the example was
/// left behind in the valid list. lightning-invoice 0.34.1 alone would still accept it.
#[test]
fn stale_example_with_wrong_length_fields_is_refused_per_current_rule() {
    const IGNORED_FIELDS: &str = "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q5sqqqqqqqqqqqqqqqqsgq2qrqqqfppnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqppnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqpp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqhpnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqhp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqspnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsp4qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnpkqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqz599y53s3ujmcfjp5xrdap68qxymkqphwsexhmhr8wdz5usdzkzrse33chw6dlp3jhuhge9ley7j2ayx36kawe7kmgg8sv5ugdyusdcqzn8z9x";
    let err = parse_bolt11(IGNORED_FIELDS).unwrap_err();
    assert_eq!(err, Bolt11Error::FieldLength { field: 'p', len: 51, expected: 52 });
    assert!(IGNORED_FIELDS.parse::<lightning_invoice::Bolt11Invoice>().is_ok());
}

#[test]
fn every_invalid_spec_example_is_refused_for_its_reason() {
    type Check = fn(&Bolt11Error) -> bool;
    let cases: [(&str, &str, Check); 10] = [
        (
            "unknown even feature bit 100",
            "lnbc25m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9q4psqqqqqqqqqqqqqqqqsgqtqyx5vggfcsll4wu246hz02kp85x4katwsk9639we5n5yngc3yhqkm35jnjw4len8vrnqnf5ejh0mzj9n3vz2px97evektfm2l6wqccp3y7372",
            |e| matches!(e, Bolt11Error::Features),
        ),
        (
            "bad bech32 checksum",
            "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrnt",
            |e| matches!(e, Bolt11Error::Bech32(m) if m.contains("checksum")),
        ),
        (
            "no `1` separator",
            "pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrny",
            |e| matches!(e, Bolt11Error::Bech32(m) if m.contains("separator")),
        ),
        (
            "mixed case",
            "LNBC2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpuyk0sg5g70me25alkluzd2x62aysf2pyy8edtjeevuv4p2d5p76r4zkmneet7uvyakky2zr4cusd45tftc9c5fh0nnqpnl2jfll544esqchsrny",
            |e| matches!(e, Bolt11Error::Bech32(m) if m.contains("case")),
        ),
        (
            "signature not recoverable",
            "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqwgt7mcn5yqw3yx0w94pswkpq6j9uh6xfqqqtsk4tnarugeektd4hg5975x9am52rz4qskukxdmjemg92vvqz8nvmsye63r5ykel43pgz7zq0g2",
            |e| matches!(e, Bolt11Error::Signature(_)),
        ),
        (
            "string too short",
            "lnbc1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6na6hlh",
            |e| matches!(e, Bolt11Error::TooShort),
        ),
        (
            "invalid multiplier",
            "lnbc2500x1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqrrzc4cvfue4zp3hggxp47ag7xnrlr8vgcmkjxk3j5jqethnumgkpqp23z9jclu3v0a7e0aruz366e9wqdykw6dxhdzcjjhldxq0w6wgqcnu43j",
            |e| matches!(e, Bolt11Error::Amount(_)),
        ),
        (
            "sub-millisatoshi amount",
            "lnbc2500000001p1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpusp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgq0lzc236j96a95uv0m3umg28gclm5lqxtqqwk32uuk4k6673k6n5kfvx3d2h8s295fad45fdhmusm8sjudfhlf6dcsxmfvkeywmjdkxcp99202x",
            |e| matches!(e, Bolt11Error::Amount(m) if m.contains("millisatoshi")),
        ),
        (
            "missing `s` field",
            "lnbc20m1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqhp58yjmdan79s6qqdhdzgynm4zwqd5d7xmw5fk98klysy043l2ahrqs9qrsgq7ea976txfraylvgzuxs8kgcw23ezlrszfnh8r6qtfpr6cxga50aj6txm9rxrydzd06dfeawfk6swupvz4erwnyutnjq7x39ymw6j38gp49qdkj",
            |e| matches!(e, Bolt11Error::MissingField(f) if f.starts_with('s')),
        ),
        (
            "high-S signature with `n` field",
            "lnbc25m1p70xwfzpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaqnp4q0n326hr8v9zprg8gsvezcch06gfaqqhde2aj730yg0durunfhv66sp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygsp5cfzp9ugllvk03rltd6hvndxj26ux6gcxc5azyxk060rj9tzghct5zvjlps76gx8wpq5yuu79688k8gnm2c0al6v608s96l0xzrrlqqwnzxmu",
            // This example also carries a second `s` field, which lightning-invoice checks before the
            // signature; `high_s_signature_with_n_field_is_refused` covers the signature reason.
            |e| matches!(e, Bolt11Error::Signature(_) | Bolt11Error::DuplicateField(_)),
        ),
    ];
    for (name, invoice, check) in cases {
        let err = parse_bolt11(invoice).expect_err(name);
        assert!(check(&err), "{name}: wrong reason: {err:?}");
        assert!(matches!(parse_invoice(invoice), Err(LightningError::InvalidInvoice(_))), "{name}");
    }
}

#[test]
fn over_long_input_is_refused_before_decoding() {
    let long = format!("lnbc1{}", "q".repeat(7100));
    assert!(matches!(parse_bolt11(&long), Err(Bolt11Error::TooLong { len }) if len == long.len()));
    assert!(matches!(parse_bolt11(""), Err(Bolt11Error::Bech32(_))));
}

/// Secp256k1 group order.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

fn negate_scalar(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// The spec's high-S-with-`n` example has its signature fail the `n` check too (the test above
/// accepts the duplicate-`s` reason lightning-invoice reports first).
#[test]
fn high_s_signature_with_n_field_is_refused() {
    let spec_vector = "lnbc25m1p70xwfzpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaqnp4q0n326hr8v9zprg8gsvezcch06gfaqqhde2aj730yg0durunfhv66sp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgqsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygsp5cfzp9ugllvk03rltd6hvndxj26ux6gcxc5azyxk060rj9tzghct5zvjlps76gx8wpq5yuu79688k8gnm2c0al6v608s96l0xzrrlqqwnzxmu";
    let raw: lightning_invoice::SignedRawBolt11Invoice = spec_vector.parse().unwrap();
    assert!(!raw.check_signature(), "the spec's high-S signature must not verify against `n`");

    // And a clean one: an otherwise valid invoice with `n`, signed, then malleated to high-S.
    use bitcoin::hashes::{Hash, sha256};
    use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
    use lightning_invoice::{InvoiceBuilder, PaymentSecret};

    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x21; 32]).unwrap();
    let build = |malleate: bool| {
        InvoiceBuilder::new(Currency::Regtest)
            .description("high-S".into())
            .payment_hash(sha256::Hash::from_byte_array([1; 32]))
            .duration_since_epoch(Duration::from_secs(1_700_000_000))
            .min_final_cltv_expiry_delta(18)
            .payment_secret(PaymentSecret([2; 32]))
            .amount_milli_satoshis(1_000)
            .payee_pub_key(PublicKey::from_secret_key(&secp, &key))
            .build_signed(|msg| {
                let sig = secp.sign_ecdsa_recoverable(msg, &key);
                if !malleate {
                    return sig;
                }
                let (recid, compact) = sig.serialize_compact();
                let mut high = compact;
                high[32..].copy_from_slice(&negate_scalar(&compact[32..]));
                let flipped = RecoveryId::from_i32(recid.to_i32() ^ 1).unwrap();
                RecoverableSignature::from_compact(&high, flipped).unwrap()
            })
            .unwrap()
            .to_string()
    };
    let low = parse_bolt11(&build(false)).unwrap();
    assert_eq!(low.payee, PublicKey::from_secret_key(&secp, &key));
    let err = parse_bolt11(&build(true)).unwrap_err();
    assert!(matches!(err, Bolt11Error::Signature(_)), "{err:?}");
}
