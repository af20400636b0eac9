//! `recover` and `to_vrs` on arbitrary input return a value or a typed error, never panic.

use farebox_evm::B256;
use farebox_evm::eip3009;
use proptest::prelude::*;

proptest! {
    #[test]
    fn recover_never_panics(digest in any::<[u8; 32]>(), sig in proptest::collection::vec(any::<u8>(), 0..140)) {
        let _ = eip3009::recover(&B256::from(digest), &sig);
        let _ = eip3009::to_vrs(&sig);
    }

    #[test]
    fn recover_65_bytes_never_panics(digest in any::<[u8; 32]>(), sig in any::<[u8; 32]>(), s in any::<[u8; 32]>(), v in prop_oneof![Just(0u8), Just(1), Just(27), Just(28), any::<u8>()]) {
        let mut bytes = [0u8; 65];
        bytes[..32].copy_from_slice(&sig);
        bytes[32..64].copy_from_slice(&s);
        bytes[64] = v;
        let _ = eip3009::recover(&B256::from(digest), &bytes);
    }
}
