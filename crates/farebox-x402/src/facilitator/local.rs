//! In-process facilitator (pending farebox-evm).
