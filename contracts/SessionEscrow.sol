// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title SessionEscrow: unidirectional ERC-20 payment channels for MPP EVM sessions.
/// @notice Written for farebox (not derived from any other implementation), following the MPP
/// Tempo / EVM session drafts: a payer locks a deposit for a payee; off chain, the payer (or a
/// delegated `authorizedSigner`) signs EIP-712 vouchers
/// `Voucher(bytes32 channelId,uint128 cumulativeAmount)` with increasing cumulative totals in the
/// domain `{name: "EVM Payment Channel", version: "1", chainId, verifyingContract: this}`.
/// The payee redeems the latest voucher with `settle` (delta payout, channel stays open) or
/// `close` (delta payout, the rest of the deposit back to the payer, channel finalized); payouts
/// are capped at the deposit. `closeWithCapture` closes with a voucher but pays the payee only
/// `captureAmount` (at most the voucher): a server that was authorized more than it served
/// takes what it earned (`max(spent, settled)` in the MPP drafts) and refunds the rest. The
/// payer's escape hatch is `requestClose`, then, once the grace period has passed, `withdraw`;
/// the payee can still `settle` / `close` until then, and a `topUp` cancels a pending close
/// request.
///
/// The interface follows draft-evm-session-00: `open(payee, token, deposit, salt,
/// authorizedSigner)` with a salt the payer picks, and
/// channelId = keccak256(abi.encode(payer, payee, token, salt, authorizedSigner, address(this),
/// block.chainid)), which `computeChannelId` exposes so a payer knows the id before it opens.
/// A channel id is used once: a finalized channel stays recorded and cannot be opened again.
///
/// Signatures: 65 bytes r || s || v, s in the lower half of the curve order, v in {27, 28}; the
/// expected signer is the channel's `authorizedSigner` when it is set, the payer otherwise.
/// For local chains and tests: not audited.
contract SessionEscrow {
    struct Channel {
        address payer;
        address payee;
        address token;
        address authorizedSigner; // zero: the payer signs vouchers
        uint128 deposit;
        uint128 settled; // paid to the payee so far
        uint64 closeRequestedAt; // zero: no close requested
        bool finalized;
    }

    // keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    bytes32 private constant EIP712_DOMAIN_TYPEHASH =
        0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f;

    /// keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)")
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)");

    // Upper bound of a low-s signature: secp256k1n / 2.
    uint256 private constant HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// Seconds between `requestClose` and the earliest `withdraw`.
    uint64 public immutable closeGracePeriod;

    mapping(bytes32 => Channel) private _channels;

    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        address authorizedSigner,
        bytes32 salt,
        uint128 deposit
    );
    event ToppedUp(bytes32 indexed channelId, uint128 amount, uint128 newDeposit);
    event Settled(bytes32 indexed channelId, uint128 cumulativeAmount, uint128 paid);
    event CloseRequested(bytes32 indexed channelId, uint64 requestedAt, uint64 withdrawableAt);
    event CloseRequestCanceled(bytes32 indexed channelId);
    event ChannelClosed(bytes32 indexed channelId, uint128 paidToPayee, uint128 refundedToPayer);
    event Withdrawn(bytes32 indexed channelId, uint128 refundedToPayer);

    constructor(uint64 closeGracePeriod_) {
        closeGracePeriod = closeGracePeriod_;
    }

    // ------------------------------------------------------------------ views

    /// The EIP-712 domain separator for the current chain id.
    function domainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(
                EIP712_DOMAIN_TYPEHASH,
                keccak256("EVM Payment Channel"),
                keccak256("1"),
                block.chainid,
                address(this)
            )
        );
    }

    /// The EIP-712 digest the signer signs for a voucher.
    function voucherDigest(bytes32 channelId, uint128 cumulativeAmount) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// The id a channel with these parameters has (see the contract's notice).
    function computeChannelId(address payer, address payee, address token, bytes32 salt, address authorizedSigner)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(payer, payee, token, salt, authorizedSigner, address(this), block.chainid));
    }

    /// A channel's state; all zero for an unknown id.
    function getChannel(bytes32 channelId) external view returns (Channel memory) {
        return _channels[channelId];
    }

    // ------------------------------------------------------------------ payer

    /// Opens a channel to `payee` in `token`, pulling `deposit` from the caller (who must have
    /// approved it). `salt` makes the id unique (pick a fresh random one per channel);
    /// `authorizedSigner` zero means the caller signs vouchers itself.
    function open(address payee, address token, uint128 deposit, bytes32 salt, address authorizedSigner)
        external
        returns (bytes32 channelId)
    {
        require(payee != address(0), "SessionEscrow: payee is the zero address");
        require(token != address(0), "SessionEscrow: token is the zero address");
        require(deposit > 0, "SessionEscrow: deposit is zero");
        channelId = computeChannelId(msg.sender, payee, token, salt, authorizedSigner);
        require(_channels[channelId].payer == address(0), "SessionEscrow: channel already exists");
        _channels[channelId] = Channel({
            payer: msg.sender,
            payee: payee,
            token: token,
            authorizedSigner: authorizedSigner,
            deposit: deposit,
            settled: 0,
            closeRequestedAt: 0,
            finalized: false
        });
        emit ChannelOpened(channelId, msg.sender, payee, token, authorizedSigner, salt, deposit);
        _pull(token, msg.sender, deposit);
    }

    /// Adds `amount` to the deposit (the payer only); cancels a pending close request.
    function topUp(bytes32 channelId, uint128 amount) external {
        Channel storage c = _open(channelId);
        require(msg.sender == c.payer, "SessionEscrow: caller is not the payer");
        require(amount > 0, "SessionEscrow: amount is zero");
        c.deposit += amount; // checked: reverts on uint128 overflow
        emit ToppedUp(channelId, amount, c.deposit);
        if (c.closeRequestedAt != 0) {
            c.closeRequestedAt = 0;
            emit CloseRequestCanceled(channelId);
        }
        _pull(c.token, msg.sender, amount);
    }

    /// Starts the grace period after which the payer may `withdraw` (the payer only).
    function requestClose(bytes32 channelId) external {
        Channel storage c = _open(channelId);
        require(msg.sender == c.payer, "SessionEscrow: caller is not the payer");
        require(c.closeRequestedAt == 0, "SessionEscrow: close already requested");
        c.closeRequestedAt = uint64(block.timestamp);
        emit CloseRequested(channelId, c.closeRequestedAt, c.closeRequestedAt + closeGracePeriod);
    }

    /// After the grace period: refunds the unsettled deposit to the payer and finalizes.
    function withdraw(bytes32 channelId) external {
        Channel storage c = _open(channelId);
        require(msg.sender == c.payer, "SessionEscrow: caller is not the payer");
        require(c.closeRequestedAt != 0, "SessionEscrow: close not requested");
        require(
            block.timestamp >= uint256(c.closeRequestedAt) + closeGracePeriod,
            "SessionEscrow: grace period not over"
        );
        c.finalized = true;
        uint128 refund = c.deposit - c.settled;
        emit Withdrawn(channelId, refund);
        _send(c.token, c.payer, refund);
    }

    // ------------------------------------------------------------------ payee

    /// Pays the payee `min(cumulativeAmount, deposit) - settled`; the channel stays open.
    function settle(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature) external {
        Channel storage c = _open(channelId);
        uint128 paid = _redeem(c, channelId, cumulativeAmount, signature);
        emit Settled(channelId, cumulativeAmount, paid);
        _send(c.token, c.payee, paid);
    }

    /// Pays the payee `min(cumulativeAmount, deposit) - settled`, refunds the rest of the deposit
    /// to the payer and finalizes the channel.
    function close(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature) external {
        _close(channelId, cumulativeAmount, cumulativeAmount, signature);
    }

    /// As `close`, but the payee takes only `captureAmount` (`settled <= captureAmount <=
    /// cumulativeAmount`) and the payer gets back everything else.
    function closeWithCapture(
        bytes32 channelId,
        uint128 cumulativeAmount,
        uint128 captureAmount,
        bytes calldata signature
    ) external {
        require(captureAmount <= cumulativeAmount, "SessionEscrow: capture above the voucher");
        _close(channelId, cumulativeAmount, captureAmount, signature);
    }

    // ------------------------------------------------------------------ internals

    function _open(bytes32 channelId) private view returns (Channel storage c) {
        c = _channels[channelId];
        require(c.payer != address(0), "SessionEscrow: unknown channel");
        require(!c.finalized, "SessionEscrow: channel is finalized");
    }

    function _close(bytes32 channelId, uint128 cumulativeAmount, uint128 captureAmount, bytes calldata signature)
        private
    {
        Channel storage c = _open(channelId);
        _checkVoucher(c, channelId, cumulativeAmount, signature);
        uint128 paid = _raiseSettled(c, captureAmount);
        c.finalized = true;
        uint128 refund = c.deposit - c.settled;
        emit ChannelClosed(channelId, paid, refund);
        _send(c.token, c.payee, paid);
        _send(c.token, c.payer, refund);
    }

    /// Checks the caller and the voucher, raises `settled` to the capped amount, returns the delta.
    function _redeem(Channel storage c, bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature)
        private
        returns (uint128 paid)
    {
        _checkVoucher(c, channelId, cumulativeAmount, signature);
        paid = _raiseSettled(c, cumulativeAmount);
    }

    /// The caller is the payee and `signature` is the channel signer's voucher for `cumulativeAmount`.
    function _checkVoucher(Channel storage c, bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature)
        private
        view
    {
        require(msg.sender == c.payee, "SessionEscrow: caller is not the payee");
        address expected = c.authorizedSigner == address(0) ? c.payer : c.authorizedSigner;
        require(
            _recover(voucherDigest(channelId, cumulativeAmount), signature) == expected,
            "SessionEscrow: invalid voucher signer"
        );
    }

    /// Raises `settled` to `min(amount, deposit)` and returns the increase.
    function _raiseSettled(Channel storage c, uint128 amount) private returns (uint128 paid) {
        uint128 capped = amount < c.deposit ? amount : c.deposit;
        require(capped >= c.settled, "SessionEscrow: voucher below settled amount");
        paid = capped - c.settled;
        c.settled = capped;
    }

    /// ecrecover with strict rules: 65-byte r || s || v, low s, v in {27, 28}.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address signer) {
        require(signature.length == 65, "SessionEscrow: invalid signature length");
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        require(uint256(s) <= HALF_CURVE_ORDER, "SessionEscrow: invalid signature 's' value");
        require(v == 27 || v == 28, "SessionEscrow: invalid signature 'v' value");
        signer = ecrecover(digest, v, r, s);
        require(signer != address(0), "SessionEscrow: invalid signature");
    }

    function _pull(address token, address from, uint256 value) private {
        _call(token, abi.encodeWithSignature("transferFrom(address,address,uint256)", from, address(this), value));
    }

    function _send(address token, address to, uint256 value) private {
        if (value > 0) {
            _call(token, abi.encodeWithSignature("transfer(address,uint256)", to, value));
        }
    }

    /// Calls an ERC-20 function; the return value is checked the tolerant way (absent or `true`),
    /// so tokens that return nothing (e.g. USDT) work too.
    function _call(address token, bytes memory data) private {
        require(token.code.length > 0, "SessionEscrow: token has no code");
        (bool ok, bytes memory ret) = token.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret)) // bubble up the token's reason
            }
        }
        require(ret.length == 0 || abi.decode(ret, (bool)), "SessionEscrow: token transfer failed");
    }
}
